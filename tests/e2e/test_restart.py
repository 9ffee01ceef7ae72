"""End to end on booted Debian 12 and 13: real systemd, D-Bus, polkitd and the installed project.

alice is in group ollamactl, bob is not.  Every case checks what a user would
see (exit code, message, JSON) and what systemd did (InvocationID, NRestarts).
"""

from __future__ import annotations

import json
import time

import pytest

from tests.e2e.conftest import UNIT, Bed

PERMISSION, UNIT_CODE, BUS, RESTART_FAILED, USAGE, NOT_ANSWERING, STOPPED = 3, 4, 5, 6, 2, 10, 14
HTTP_TIMEOUT_S = 5.0  # README "Configuration": http_timeout, what one HTTP request to Ollama may take
MARGIN_S = 3.0  # stated margin on every documented figure: process start-up and a busy 2-core host


def test_member_restarts_ollama(healthy: Bed):
    before = healthy.prop("InvocationID")
    r = healthy.ollamactl("restart", "--reason", "e2e: generate timed out")
    assert r.returncode == 0, r.stderr
    assert f"restarted {UNIT}" in r.stdout
    after = healthy.prop("InvocationID")
    assert after and after != before
    assert healthy.api_answers(timeout=0.5), "restart returned before the API answered"


def test_member_restart_json(healthy: Bed):
    before = healthy.prop("InvocationID")
    rc, out = healthy.json("restart", "--reason", "json")
    assert rc == 0, out
    assert out["ok"] is True and out["action"] == "restarted" and out["job_result"] == "done"
    assert out["unit"] == UNIT and out["reason"] == "json"
    assert out["old_invocation_id"] == before
    assert out["new_invocation_id"] == healthy.prop("InvocationID") != before
    assert 0 < out["job_seconds"] < 30 and 0 <= out["ready_seconds"] < 30
    assert out["api_version"] == "0.12.3"
    assert sorted(out) == model_fields(healthy, "RestartResult")  # the CLI prints what the API returns


def model_fields(bed: Bed, model: str) -> list[str]:
    code = (
        "import json; from ollamactl import models; "
        f"print(json.dumps(sorted(n for n, _, _ in models.fields_doc(models.{model}))))"
    )
    return json.loads(bed.python(code).stdout)


def test_member_restart_through_python_api_sync_and_async(healthy: Bed):
    code = """
import asyncio, json
from ollamactl import AsyncController, Controller, OllamactlError
# two restarts back to back: allow them by keyword (the budget's default gap is 10 s)
r1 = Controller(restart_backoff=0).restart(reason="sync")
async def main():
    async with AsyncController(restart_backoff=0) as actl:
        r2 = await actl.restart(reason="async")
        s = await actl.status()
    return r2, s
r2, s = asyncio.run(main())
print(json.dumps([r1.to_dict(), r2.to_dict(), s.to_dict()]))
"""
    r = healthy.python(code)
    assert r.returncode == 0, r.stderr
    r1, r2, s = json.loads(r.stdout)
    assert r1["action"] == r2["action"] == "restarted"
    assert r1["new_invocation_id"] == r2["old_invocation_id"] != r2["new_invocation_id"]
    assert s["healthy"] is True and s["invocation_id"] == r2["new_invocation_id"]


def test_no_wait_returns_once_the_job_is_queued(healthy: Bed):
    before = healthy.prop("InvocationID")
    rc, out = healthy.json("restart", "--no-wait")
    assert rc == 0 and out["action"] == "queued" and out["job"].startswith("/org/freedesktop/systemd1/job/")
    end = time.monotonic() + 30
    while healthy.prop("InvocationID") == before:
        assert time.monotonic() < end, "the queued restart never happened"
        time.sleep(0.1)


#: What bob (not in group ollamactl) sees from ``ollamactl restart``: the runtime directory refuses him.
NON_MEMBER_CLI = (
    "ollamactl: not allowed to restart through ollamactl: /run/ollamactl is only for group ollamactl "
    "(Permission denied); add yourself to group ollamactl: sudo usermod -aG ollamactl bob\n"
)
#: What a call of bob's that reaches PID 1 gets: polkit's refusal, as ollamactl's adapter maps it.
NON_MEMBER_POLKIT = (
    "not allowed to try-restart ollama.service: add yourself to group ollamactl: sudo usermod -aG ollamactl bob"
)


def test_non_member_via_the_cli_is_refused_by_the_runtime_directory_before_any_bus_call(healthy: Bed):
    """bob's ``ollamactl restart`` stops at /run/ollamactl (root:ollamactl 2770): the kernel refuses him
    the directory, so the command never asks PID 1, and polkit is never consulted."""
    before = (healthy.prop("InvocationID"), healthy.prop("NRestarts"))
    r = healthy.ollamactl("restart", user="bob")
    assert (r.returncode, r.stdout, r.stderr) == (PERMISSION, "", NON_MEMBER_CLI)
    rc, out = healthy.json("restart", user="bob")
    assert rc == PERMISSION and out["error"] == "permission-denied" and out["exit_code"] == PERMISSION
    assert out["message"] == NON_MEMBER_CLI.removeprefix("ollamactl: ").rstrip("\n")
    assert out["path"] == "/run/ollamactl" and "bus_error" not in out  # refused here, not by systemd
    assert (healthy.prop("InvocationID"), healthy.prop("NRestarts")) == before


def test_non_member_whose_call_reaches_pid1_gets_polkits_refusal_as_permission_denied(healthy: Bed):
    """The same restart through the library's systemd adapter, which skips the runtime directory:
    systemd asks polkit, the rule does not match bob, and the bus error maps to PermissionDenied."""
    code = """
import asyncio, json
from ollamactl.errors import PermissionDenied
from ollamactl.systemd import SystemdBus
async def main():
    async with SystemdBus(call_timeout=20, group="ollamactl") as bus:
        try:
            await bus.restart_unit("ollama.service")
        except PermissionDenied as err:
            return {"exit_code": err.exit_code, "message": err.message, **err.details}
        return {"job": "queued"}
print(json.dumps(asyncio.run(main())))
"""
    before = (healthy.prop("InvocationID"), healthy.prop("NRestarts"))
    r = healthy.python(code, user="bob")
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout)
    assert out["exit_code"] == PERMISSION, out
    assert out["bus_error"] == "org.freedesktop.DBus.Error.InteractiveAuthorizationRequired"
    assert out["message"] == NON_MEMBER_POLKIT
    assert (healthy.prop("InvocationID"), healthy.prop("NRestarts")) == before


def test_member_cannot_restart_another_unit_polkit_says_no(healthy: Bed):
    before = healthy.prop("InvocationID", unit="other.service")
    rc, out = healthy.json("--unit", "other.service", "restart")
    assert rc == PERMISSION and out["error"] == "permission-denied"
    # the refusal comes from polkit through systemd, not from a check of ours
    assert out["bus_error"] == "org.freedesktop.DBus.Error.InteractiveAuthorizationRequired"
    assert "no polkit rule grants try-restart of other.service" in out["message"]
    assert "sudo ollamactl policy install --group ollamactl --unit other.service" in out["message"]
    assert healthy.prop("InvocationID", unit="other.service") == before


def test_unit_that_does_not_exist(healthy: Bed):
    rc, out = healthy.json("--unit", "no-such-thing.service", "restart")
    assert rc == UNIT_CODE and out["error"] == "unit-not-found" and "no-such-thing.service" in out["message"]


def test_masked_unit(healthy: Bed):
    rc, out = healthy.json("--unit", "masked.service", "restart")
    assert rc == UNIT_CODE and out["error"] == "unit-masked" and "systemctl unmask masked.service" in out["message"]


def test_start_that_fails_reports_the_units_result(healthy: Bed):
    healthy.set_mode("exit-at-start")
    t0 = time.monotonic()
    rc, out = healthy.json("restart")
    healthy.set_mode("ok")
    assert rc == RESTART_FAILED, out
    assert out["error"] == "restart-failed" and out["result"] == "exit-code"
    assert out["sub_state"] in ("auto-restart", "failed", "dead")
    assert "journalctl -u ollama.service" in out["message"]
    took = time.monotonic() - t0
    # README: "If the new process dies while starting it fails at once with the unit's Result"
    assert took < MARGIN_S, f"a dead start must be reported at once, not after the timeout: {took:.1f}s"


def test_root_restart_of_a_unit_that_cannot_start(healthy: Bed):
    # failing.service is not running: a try-restart would do nothing, so it is refused, not "restarted"
    r = healthy.ollamactl("--unit", "failing", "restart", "--json", user="root")
    out = json.loads(r.stdout)
    assert r.returncode == STOPPED and out["unit"] == "failing.service" and "--start" in out["message"], out
    # --start asks for RestartUnit, which starts it: the start fails and the unit's Result is reported
    r = healthy.ollamactl("--unit", "failing", "restart", "--start", "--json", user="root")
    out = json.loads(r.stdout)
    assert r.returncode == RESTART_FAILED and out["unit"] == "failing.service" and out["result"] == "exit-code", out


def test_no_bus_gives_bus_unavailable_within_the_timeout(healthy: Bed):
    t0 = time.monotonic()
    env = {"DBUS_SYSTEM_BUS_ADDRESS": "unix:path=/run/nowhere/bus"}
    rc, out = healthy.json("restart", "--timeout", "3", env=env)
    assert rc == BUS and out["error"] == "bus-unavailable" and "/run/nowhere/bus" in out["message"]
    took = time.monotonic() - t0
    assert took < 3 + MARGIN_S, f"--timeout 3 bounds the whole command; it took {took:.1f}s"


def test_bad_config_value_is_named_and_nothing_restarts(healthy: Bed):
    before = healthy.prop("InvocationID")
    saved = healthy.saved_config()
    healthy.c.write_file("/etc/ollamactl/config.toml", 'timeout = "soon"\n')
    try:
        r = healthy.ollamactl("restart")
    finally:
        healthy.restore_config(saved)
    assert r.returncode == USAGE
    line = r.stderr.strip()
    assert "\n" not in line and "/etc/ollamactl/config.toml" in line and "timeout" in line and "'soon'" in line
    assert healthy.prop("InvocationID") == before


def test_status_reports_healthy_and_then_a_wedge(healthy: Bed):
    rc, out = healthy.json("status")
    assert sorted(out) == model_fields(healthy, "Status")
    assert rc == 0 and out["healthy"] is True and out["active_state"] == "active" and out["api_version"] == "0.12.3"
    assert out["invocation_id"] == healthy.prop("InvocationID")
    healthy.set_mode("silent")
    try:
        t0 = time.monotonic()
        r = healthy.ollamactl("status")
    finally:
        healthy.set_mode("ok")
    assert r.returncode == NOT_ANSWERING and "NOT answering" in r.stdout
    took = time.monotonic() - t0
    assert took < HTTP_TIMEOUT_S + MARGIN_S, f"status of a silent server took {took:.1f}s"


def test_results_serialise_identically_on_this_releases_pydantic(bed: Bed):
    code = """
import pydantic
from ollamactl.models import RestartResult
r = RestartResult(action="restarted", unit="ollama.service", reason="r", job="/j/1", job_result="done",
                  old_invocation_id="aa", new_invocation_id="bb", job_seconds=0.25, ready_seconds=1.5,
                  api_version="0.12.3")
print(pydantic.VERSION.split(".")[0], r.to_json())
"""
    r = bed.python(code)
    assert r.returncode == 0, r.stderr
    major, payload = r.stdout.strip().split(" ", 1)
    assert major == {"bookworm": "1", "trixie": "2", "sid": "2"}[bed.suite]
    assert payload == (
        '{"action": "restarted", "api_version": "0.12.3", "job": "/j/1", "job_result": "done", '
        '"job_seconds": 0.25, "new_invocation_id": "bb", "observed_at": null, "ok": true, "old_invocation_id": "aa", '
        '"ready_seconds": 1.5, "reason": "r", "unit": "ollama.service"}'
    )


@pytest.mark.parametrize("user", ["alice", "bob"])
def test_version_and_help_work_for_anyone(bed: Bed, user: str):
    r = bed.ollamactl("--version", user=user)
    assert r.returncode == 0 and r.stdout.startswith("ollamactl ")

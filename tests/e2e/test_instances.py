"""One Ollama per GPU on one host: instances of ollama@.service, each with its own port, end to end.

The test bed installs the stand-in as the template ollama@.service; instance
11501 and 11502 read OLLAMA_HOST from /etc/ollama/<instance>.env (one quoted,
one 0.0.0.0).  The config names them; nobody gives ollamactl their URLs: it
reads them from the units.  A wedge of one instance restarts that one only.
"""

from __future__ import annotations

import json
import time

import pytest

from tests.e2e.conftest import UNIT, Bed
from tests.e2e.test_recovery import report
from tests.e2e.test_watch import WATCHDOG, ensure_units

GPU0, GPU1 = "ollama@11501.service", "ollama@11502.service"
CONFIG = f"""\
[instances.gpu0]
unit = "{GPU0}"

[instances.gpu1]
unit = "{GPU1}"
"""
GRANT = "/etc/polkit-1/rules.d/50-ollamactl-ollamactl-ollama@.service.rules"


def answers(bed: Bed, port: int) -> bool:
    code = f"import urllib.request; urllib.request.urlopen('http://127.0.0.1:{port}/api/version', timeout=1).read()"
    return bed.python(code, user="root").returncode == 0


def wait_answers(bed: Bed, port: int, timeout: float = 30) -> None:
    end = time.monotonic() + timeout
    while not answers(bed, port):
        assert time.monotonic() < end, f"nothing answers on {port}"
        time.sleep(0.2)


@pytest.fixture
def two(healthy: Bed):
    """Both instances running, named in the config, and the template's grant (as an admin installs it)."""
    c = healthy.c
    saved = healthy.saved_config()
    c.write_file("/etc/ollamactl/config.toml", CONFIG)
    r = c.run(["ollamactl", "policy", "install", "--group", "ollamactl", "--unit", "ollama@.service"])
    assert r.returncode == 0, r.stdout + r.stderr
    c.run(["rm", "-f", "/etc/ollama-standin/mode.11501", "/etc/ollama-standin/mode.11502"], check=True)
    c.run(["systemctl", "start", GPU0, GPU1], check=True, timeout=60)
    wait_answers(healthy, 11501)
    wait_answers(healthy, 11502)
    yield healthy
    c.run(["systemctl", "stop", WATCHDOG, GPU0, GPU1], timeout=60)
    c.run(["systemctl", "reset-failed", GPU0, GPU1])
    c.run(["rm", "-f", GRANT], check=True)
    healthy.restore_config(saved)


def test_instances_lists_each_with_the_url_its_unit_gives(two: Bed):
    rc, out = two.json("instances")
    rows = {s["instance"]: s for s in out["instances"]}
    assert rc == 0 and out["healthy"] and list(rows) == ["gpu0", "gpu1"], out
    assert (rows["gpu0"]["unit"], rows["gpu0"]["url"]) == (GPU0, "http://127.0.0.1:11501")  # quoted in its file
    assert (rows["gpu1"]["unit"], rows["gpu1"]["url"]) == (GPU1, "http://127.0.0.1:11502")  # 0.0.0.0: loopback
    assert all(s["api_ok"] and s["active_state"] == "active" for s in rows.values())
    text = two.ollamactl("instances")
    assert text.returncode == 0 and "gpu1" in text.stdout and "http://127.0.0.1:11502" in text.stdout, text.stdout
    two.c.run(["systemctl", "stop", GPU1], check=True)  # an admin stops one: listed as such, exit 10
    rc, out = two.json("instances")
    assert rc == 10 and not out["healthy"] and out["instances"][1]["active_state"] == "inactive", out


def test_a_member_restarts_one_instance_by_name_and_only_that_one(two: Bed):
    before = {u: two.prop("InvocationID", unit=u) for u in (GPU0, GPU1, UNIT)}
    rc, out = two.json("--unit", "gpu1", "restart", "--reason", "e2e")
    assert rc == 0 and out["action"] == "restarted" and out["unit"] == GPU1, out
    after = {u: two.prop("InvocationID", unit=u) for u in (GPU0, GPU1, UNIT)}
    assert after[GPU1] != before[GPU1] and after[GPU0] == before[GPU0] and after[UNIT] == before[UNIT]
    rc, out = two.json("--unit", "gpu0", "probe")
    assert (rc, out["outcome"], out["url"]) == (0, "healthy", "http://127.0.0.1:11501"), out
    rc, out = two.json("--unit", "gpu1", "doctor")  # doctor asks Ollama where the unit says it listens
    ollama = next(c for c in out["checks"] if c["name"] == "ollama")
    assert ollama["ok"] and "http://127.0.0.1:11502" in ollama["detail"], out
    rc, out = two.json("--unit", "gpu1", "restart", user="bob")  # not a member: refused on the instance too
    assert rc == 3 and out["error"] == "permission-denied", out


def test_one_watchdog_restarts_the_wedged_instance_only(two: Bed):
    c = two.c
    ensure_units(c)
    c.run(["rm", "-f", "/run/ollamactl/state.json"], check=True)
    c.run(["systemctl", "start", WATCHDOG], check=True, timeout=60)
    # the startup grace (10 s) of the instances, which the watchdog sees as just started
    time.sleep(max(0.0, 10.5 - _up_for(two, GPU0)))
    before = {u: two.prop("InvocationID", unit=u) for u in (GPU0, GPU1, UNIT)}
    pid = two.prop("MainPID", unit=GPU0)
    t0 = time.time()
    c.run(["kill", "-USR2", pid], check=True)  # the stand-in's full wedge: /api/version stops answering
    end = time.monotonic() + 40
    while two.prop("InvocationID", unit=GPU0) == before[GPU0]:
        assert time.monotonic() < end, c.run(["journalctl", "-u", WATCHDOG, "-n", "40", "--no-pager"]).stdout
        time.sleep(0.2)
    wait_answers(two, 11501)
    recovered = time.time() - t0
    time.sleep(3)  # a few more periods: nothing else is restarted
    assert two.prop("InvocationID", unit=GPU1) == before[GPU1] and two.prop("InvocationID", unit=UNIT) == before[UNIT]
    r = c.run(
        ["journalctl", "-o", "json", "--no-pager", f"--since=@{t0:.3f}", "SYSLOG_IDENTIFIER=ollamactl"], check=True
    )
    audits = [json.loads(line) for line in r.stdout.splitlines()]
    restarts = [e for e in audits if e.get("OLLAMACTL_OUTCOME") == "queued"]
    assert [e.get("OLLAMACTL_UNIT") for e in restarts] == [GPU0], restarts
    assert two.prop("ActiveState", unit=WATCHDOG) == "active"
    report(two, "two instances, one wedged", f"recovered {recovered:.1f}s", "the other untouched")


def _up_for(bed: Bed, unit: str) -> float:
    ts = bed.c.run(["systemctl", "show", "-p", "ActiveEnterTimestampMonotonic", "--value", unit], check=True)
    now = bed.c.run(["cat", "/proc/uptime"], check=True).stdout.split()[0]
    return float(now) - int(ts.stdout.strip()) / 1e6


# -- issue 14 §3: an EnvironmentFile the caller cannot read -------------------------------------------------------

SECRET_DROPIN = "/etc/systemd/system/ollama.service.d/zz-e2e-unreadable-env.conf"
SECRET_ENV = "/etc/ollama/e2e-unreadable.env"
SECRET_PORT = 11503


def test_an_unreadable_environment_file_refuses_instead_of_guessing_the_url(healthy: Bed):
    """ollama.service listens on 11503, set in an EnvironmentFile of mode 0600 root:root; nothing on 11434.

    Old code fell back to 127.0.0.1:11434: the watchdog saw it refused and
    restarted the healthy server.  Now nothing is probed or restarted, the
    watchdog says why once and keeps running, doctor names the file and the
    fix, probe exits 18; once the file is readable by the group, all is well.
    """
    c = healthy.c
    ensure_units(c)
    c.write_file(SECRET_ENV, f"OLLAMA_HOST=127.0.0.1:{SECRET_PORT}\n", mode=0o600)
    c.write_file(SECRET_DROPIN, f"[Service]\nEnvironmentFile={SECRET_ENV}\n")
    try:
        c.run(["chown", "root:root", SECRET_ENV], check=True)
        c.run(["systemctl", "daemon-reload"], check=True)
        c.run(["systemctl", "restart", UNIT], check=True, timeout=60)
        wait_answers(healthy, SECRET_PORT)
        assert not answers(healthy, 11434)
        c.run(["rm", "-f", "/run/ollamactl/state.json"], check=True)
        before = healthy.prop("InvocationID")
        since = time.time()
        c.run(["systemctl", "start", WATCHDOG], check=True, timeout=60)
        time.sleep(16)  # past the startup grace (10 s) and 3 failed probes, which restarted it before
        log = c.run(["journalctl", "-u", WATCHDOG, "--no-pager", f"--since=@{since:.3f}"]).stdout
        assert healthy.prop("InvocationID") == before, log
        assert healthy.prop("ActiveState", unit=WATCHDOG) == "active", log
        refusals = [line for line in log.splitlines() if "not probing, never restarting" in line]
        assert len(refusals) == 1 and SECRET_ENV in refusals[0], log  # once, not every period
        assert "]: restarting: " not in log, log  # the line the watchdog logs before a restart

        rc, out = healthy.json("probe")  # as alice, a member
        assert rc == 18 and out["error"] == "url-unknown" and out["files"] == [SECRET_ENV], out
        text = healthy.ollamactl("probe")
        assert text.returncode == 18 and "Traceback" not in text.stderr, text.stderr
        assert f"cannot read {SECRET_ENV} (Permission denied)" in text.stderr, text.stderr
        doc = healthy.ollamactl("doctor")
        assert doc.returncode == 20 and "Traceback" not in doc.stderr, doc.stdout + doc.stderr
        assert f"cannot read {SECRET_ENV}" in doc.stdout and f"chmod 640 {SECRET_ENV}" in doc.stdout, doc.stdout
        rc, out = healthy.json("restart", "--reason", "e2e")  # its wait needs the URL: refused before restarting
        assert rc == 18 and out["error"] == "url-unknown", out
        assert healthy.prop("InvocationID") == before

        c.run(["chgrp", "ollamactl", SECRET_ENV], check=True)  # the fix doctor gave
        c.run(["chmod", "640", SECRET_ENV], check=True)
        rc, out = healthy.json("probe")
        assert rc == 0 and out["outcome"] == "healthy" and out["url"] == f"http://127.0.0.1:{SECRET_PORT}", out
        end = time.monotonic() + 15
        while "known again" not in (
            log := c.run(["journalctl", "-u", WATCHDOG, "--no-pager", f"--since=@{since:.3f}"]).stdout
        ):
            assert time.monotonic() < end, log
            time.sleep(0.5)
        assert healthy.prop("InvocationID") == before, log
        report(healthy, "unreadable EnvironmentFile", "no restart in 16 s", "doctor names it; probe exits 18")
    finally:
        c.run(["systemctl", "stop", WATCHDOG], timeout=60)
        c.run(["rm", "-f", SECRET_DROPIN, SECRET_ENV], check=True)
        c.run(["systemctl", "daemon-reload"], check=True)
        healthy.recover()

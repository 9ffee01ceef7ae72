"""The denial matrix: the packaged grant is exactly as narrow as the README claims.

The packaged grant is try-restart of ollama.service, nothing else.  Each case makes
one raw D-Bus call to systemd as a real user in a booted Debian 12 / 13 container (with
dbus-next directly, not through ollamactl, and without the
allow-interactive-authorization flag, as ollamactl calls), then checks that systemd
refused it and that nothing changed: unit states, invocation IDs, restart counters,
unit-file states, and the case's own target.  The one allowed case on a running unit
(the member's TryRestartUnit) must restart ollama.service.  With ollama.service stopped
(as an admin stops it), the member's RestartUnit and StartUnit are refused and the
member's TryRestartUnit is accepted and does nothing: the unit stays stopped, which is
polkit itself keeping members from starting a unit an admin stopped.  Every row lands
in the "denial matrix" section of the test report.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from typing import Any

import pytest

from tests.e2e import conftest
from tests.e2e.conftest import UNIT, Bed

BUS_CALL = "/usr/local/bin/bus-call"
BUS_CALL_PY = """\
#!/usr/bin/python3
# bus-call MEMBER SIGNATURE JSON-BODY: one Manager call, no interactive authorization.
# {"v": [sig, value]} in the body stands for a Variant.
import asyncio, json, sys
from dbus_next import BusType, Message, MessageType, Variant
from dbus_next.aio import MessageBus

def conv(x):
    if isinstance(x, dict) and list(x) == ["v"]:
        return Variant(x["v"][0], conv(x["v"][1]))
    if isinstance(x, list):
        return [conv(i) for i in x]
    return x

async def main():
    member, sig, body = sys.argv[1], sys.argv[2], json.loads(sys.argv[3])
    bus = await MessageBus(bus_type=BusType.SYSTEM).connect()
    msg = Message(destination="org.freedesktop.systemd1", path="/org/freedesktop/systemd1",
                  interface="org.freedesktop.systemd1.Manager", member=member, signature=sig, body=conv(body))
    reply = await asyncio.wait_for(bus.call(msg), 20)
    if reply.message_type == MessageType.ERROR:
        print(json.dumps({"error": reply.error_name, "text": reply.body[0] if reply.body else ""}))
    else:
        print(json.dumps({"reply": [str(b) for b in reply.body]}))

asyncio.run(main())
"""

#: Units the test adds: an alias and a template whose names start like ours but
#: resolve elsewhere, and a disabled unit to enable or start.
EXTRA_UNITS = {
    "/etc/systemd/system/spare.service": (
        "[Unit]\nDescription=ollamactl test: disabled spare unit\n\n"
        "[Service]\nExecStart=/bin/sleep infinity\n\n[Install]\nWantedBy=multi-user.target\n"
    ),
    "/etc/systemd/system/ollama@.service": (
        "[Unit]\nDescription=ollamactl test: template named like ollama\n\n[Service]\nExecStart=/bin/sleep infinity\n"
    ),
}
WATCHED = (
    UNIT,
    "other.service",
    "spare.service",
    "dbus.service",
    "systemd-journald.service",
    "systemd-logind.service",
    "getty@tty9.service",
    "ollama@x.service",
    "evil.service",
)
PROPS = "Id,LoadState,ActiveState,SubState,InvocationID,NRestarts,Description,NeedDaemonReload,MainPID,UnitFileState"


@dataclass(frozen=True)
class Case:
    name: str
    user: str
    member: str
    signature: str
    body: list[Any]
    allowed: bool = False
    tags: tuple[str, ...] = field(default=())  # "needs-reload": a pending change; "stopped": ollama.service stopped


def _transient_exec() -> dict[str, Any]:
    return {"v": ["a(sasb)", [["/bin/touch", ["/bin/touch", "/tmp/pwned"], False]]]}


STOPPED = ("stopped",)

CASES = [
    Case(
        "alice (member) try-restarts ollama.service", "alice", "TryRestartUnit", "ss", [UNIT, "replace"], allowed=True
    ),
    Case("alice (member) restarts ollama.service", "alice", "RestartUnit", "ss", [UNIT, "replace"]),
    Case("alice EnqueueUnitJob restart ollama.service", "alice", "EnqueueUnitJob", "sss", [UNIT, "restart", "replace"]),
    Case(
        "alice try-restarts a stopped ollama.service: accepted, stays stopped",
        "alice",
        "TryRestartUnit",
        "ss",
        [UNIT, "replace"],
        allowed=True,
        tags=STOPPED,
    ),
    Case("alice restarts a stopped ollama.service", "alice", "RestartUnit", "ss", [UNIT, "replace"], tags=STOPPED),
    Case("alice starts a stopped ollama.service", "alice", "StartUnit", "ss", [UNIT, "replace"], tags=STOPPED),
    Case(
        "alice reload-or-restarts a stopped ollama.service",
        "alice",
        "ReloadOrRestartUnit",
        "ss",
        [UNIT, "replace"],
        tags=STOPPED,
    ),
    Case("bob restarts a stopped ollama.service", "bob", "RestartUnit", "ss", [UNIT, "replace"], tags=STOPPED),
    Case("bob (non-member) restarts ollama.service", "bob", "RestartUnit", "ss", [UNIT, "replace"]),
    Case("bob (non-member) try-restarts ollama.service", "bob", "TryRestartUnit", "ss", [UNIT, "replace"]),
    Case("alice stops ollama.service", "alice", "StopUnit", "ss", [UNIT, "replace"]),
    Case("alice kills ollama.service (SIGKILL)", "alice", "KillUnit", "ssi", [UNIT, "all", 9]),
    Case("alice reset-failed ollama.service", "alice", "ResetFailedUnit", "s", [UNIT]),
    Case(
        "alice SetUnitProperties ollama.service",
        "alice",
        "SetUnitProperties",
        "sba(sv)",
        [UNIT, True, [["Description", {"v": ["s", "pwned"]}]]],
    ),
    Case("alice starts ollama.service", "alice", "StartUnit", "ss", [UNIT, "replace"]),
    Case("alice reload-or-restarts ollama.service", "alice", "ReloadOrRestartUnit", "ss", [UNIT, "replace"]),
    Case("alice starts dbus.service", "alice", "StartUnit", "ss", ["dbus.service", "replace"]),
    Case("alice starts spare.service (stopped)", "alice", "StartUnit", "ss", ["spare.service", "replace"]),
    Case("alice restarts other.service", "alice", "RestartUnit", "ss", ["other.service", "replace"]),
    Case("alice restarts dbus.service", "alice", "RestartUnit", "ss", ["dbus.service", "replace"]),
    Case(
        "alice restarts systemd-journald.service",
        "alice",
        "RestartUnit",
        "ss",
        ["systemd-journald.service", "replace"],
    ),
    Case(
        "alice restarts alias ollama-alias.service -> other.service",
        "alice",
        "RestartUnit",
        "ss",
        ["ollama-alias.service", "replace"],
    ),
    Case(
        "alice restarts alias dbus-org.freedesktop.login1.service -> systemd-logind",
        "alice",
        "RestartUnit",
        "ss",
        ["dbus-org.freedesktop.login1.service", "replace"],
    ),
    Case(
        "alice restarts template instance ollama@x.service",
        "alice",
        "RestartUnit",
        "ss",
        ["ollama@x.service", "replace"],
    ),
    Case(
        "alice restarts autovt@tty9.service -> getty@tty9.service",
        "alice",
        "RestartUnit",
        "ss",
        ["autovt@tty9.service", "replace"],
    ),
    Case(
        "alice StartTransientUnit evil.service (touch /tmp/pwned)",
        "alice",
        "StartTransientUnit",
        "ssa(sv)a(sa(sv))",
        ["evil.service", "fail", [["ExecStart", _transient_exec()]], []],
    ),
    Case("alice EnableUnitFiles spare.service", "alice", "EnableUnitFiles", "asbb", [["spare.service"], False, False]),
    Case("alice MaskUnitFiles ollama.service", "alice", "MaskUnitFiles", "asbb", [[UNIT], False, False]),
    Case("alice daemon Reload", "alice", "Reload", "", [], tags=("needs-reload",)),
    Case("bob daemon Reload", "bob", "Reload", "", [], tags=("needs-reload",)),
]


@pytest.fixture(scope="module")
def matrix_bed(bed: Bed):
    """The bed plus the units the cases aim at, and the raw bus-call helper."""
    bed.c.write_file(BUS_CALL, BUS_CALL_PY, 0o755)
    for path, text in EXTRA_UNITS.items():
        bed.c.write_file(path, text)
    bed.c.run(
        ["ln", "-sf", "/etc/systemd/system/other.service", "/etc/systemd/system/ollama-alias.service"], check=True
    )
    bed.c.run(["systemctl", "daemon-reload"], check=True)
    yield bed
    bed.c.run(["rm", "-f", "/etc/systemd/system/ollama-alias.service", *EXTRA_UNITS], check=True)
    bed.c.run(["systemctl", "daemon-reload"], check=True)


def _snapshot(bed: Bed) -> dict[str, str]:
    """Everything a denied call could have changed, as root sees it."""
    r = bed.c.sh(
        "systemctl list-units --all --plain --no-legend --no-pager --full | sort\n"
        "echo ---\n"
        "systemctl list-unit-files --no-legend --no-pager --full | sort\n"
        "echo ---\n"
        f"systemctl show -p {PROPS} {' '.join(WATCHED)}\n"
        "echo ---\n"
        "ls -a /tmp /etc/systemd/system /run/systemd/transient 2>&1 || true\n"
        "echo ---\n"
        "for t in $(systemctl list-units --all --plain --no-legend --type=timer | cut -d' ' -f1); do\n"
        '  echo "$t"; systemctl show -p Unit --value "$t"\n'
        "done\n",
        check=True,
    )
    units, files, props, listing, timed = r.stdout.split("---\n")
    # Timers (e.g. systemd-tmpfiles-clean, 15 min after boot) may fire during a long run; their
    # units change state on their own, so they are left out of the unit list.
    skip = set(timed.split())
    units = "".join(line for line in units.splitlines(keepends=True) if line.split(" ", 1)[0] not in skip)
    return {"units": units, "unit files": files, "properties": props, "files": listing}


def _diff(a: dict[str, str], b: dict[str, str]) -> list[str]:
    out = []
    for key in a:
        before, after = set(a[key].splitlines()), set(b[key].splitlines())
        for line in sorted(before - after):
            out.append(f"{key}: - {line}")
        for line in sorted(after - before):
            out.append(f"{key}: + {line}")
    return out


def _call(bed: Bed, case: Case) -> dict[str, Any]:
    r = bed.c.run([BUS_CALL, case.member, case.signature, json.dumps(case.body)], user=case.user, timeout=60)
    assert r.returncode == 0, r.stderr
    return json.loads(r.stdout)


def _stop(bed: Bed) -> None:
    """Stop ollama.service as an admin does; the case then runs against an inactive unit."""
    bed.c.run(["systemctl", "stop", UNIT], check=True)
    assert (bed.prop("ActiveState"), bed.prop("Result")) == ("inactive", "success")


def _start_again(bed: Bed) -> None:
    bed.c.run(["systemctl", "start", UNIT], check=True)
    bed.recover_api()


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_denial_matrix(matrix_bed: Bed, case: Case):
    bed = matrix_bed
    bed.c.run(["systemctl", "reset-failed", UNIT], check=True)  # StartLimitBurst: earlier tests restart a lot
    if not bed.api_answers():
        bed.recover()
    if "needs-reload" in case.tags:  # a pending change that a Reload would pick up
        bed.c.sh("echo '# touched' >> /etc/systemd/system/other.service", check=True)
    if "stopped" in case.tags:
        _stop(bed)
    try:
        before = _snapshot(bed)
        inv_before = bed.prop("InvocationID")
        reply = _call(bed, case)
        if case.allowed and "stopped" not in case.tags:
            assert "error" not in reply, reply
            end = time.monotonic() + 30
            while bed.prop("InvocationID") == inv_before or bed.prop("ActiveState") != "active":
                assert time.monotonic() < end, "the allowed restart never happened"
                time.sleep(0.1)
            conftest.MATRIX.append((bed.suite, case.name, "allowed", "allowed", "-", "restarted (new invocation)"))
            return
        time.sleep(0.5)  # a wrongly accepted job would have started by now
        after = _snapshot(bed)
        changed = _diff(before, after)
        error = reply.get("error", "")
        if case.allowed:  # try-restart of a stopped unit: systemd accepts it and does nothing
            conftest.MATRIX.append(
                (
                    bed.suite,
                    case.name,
                    "allowed, no-op",
                    "allowed, no-op" if not error else f"REFUSED: {reply}",
                    error.rsplit(".", 1)[-1] if error else "-",
                    "yes (stays stopped)" if not changed else "NO: " + "; ".join(changed[:3]),
                )
            )
            assert not error, f"{case.name}: expected systemd to accept it, got {reply}"
            assert not changed, f"{case.name} changed the system:\n" + "\n".join(changed)
            assert bed.prop("ActiveState") == "inactive"
            return
        denied = error in (
            "org.freedesktop.DBus.Error.InteractiveAuthorizationRequired",
            "org.freedesktop.DBus.Error.AccessDenied",
        )
        conftest.MATRIX.append(
            (
                bed.suite,
                case.name,
                "denied",
                "denied" if denied else f"NOT DENIED: {reply}",
                error.rsplit(".", 1)[-1] if error else "-",
                "yes" if not changed else "NO: " + "; ".join(changed[:3]),
            )
        )
        assert denied, f"{case.name}: expected a polkit refusal, got {reply}"
        assert not changed, f"{case.name} changed the system:\n" + "\n".join(changed)
    finally:
        if "needs-reload" in case.tags:
            bed.c.sh("sed -i '/^# touched$/d' /etc/systemd/system/other.service && systemctl daemon-reload", check=True)
        if "stopped" in case.tags:
            _start_again(bed)


def _key(case: Case) -> tuple[str, str, str, tuple[str, ...]]:
    """The call itself, whoever makes it: alice's and bob's identical calls share one root control."""
    return case.member, case.signature, json.dumps(case.body), case.tags


#: Denied calls whose identical call by root would not change the snapshot either, or must not be made;
#: for these the matrix shows only that polkit refused.  Every other denied call has a root control.
NO_CONTROL = {
    "alice starts ollama.service": "ollama.service is running, so root's StartUnit is a no-op too",
    "alice starts dbus.service": "dbus.service is running, so root's StartUnit is a no-op too",
    "alice reset-failed ollama.service": "ollama.service is not failed, so root's ResetFailedUnit is a no-op too",
    "alice restarts dbus.service": "restarting the system bus would cut every connection in the container",
    "alice restarts autovt@tty9.service -> getty@tty9.service": (
        "getty@tty9.service needs /dev/tty0, which a container lacks, so root's RestartUnit does nothing either"
    ),
    "alice MaskUnitFiles ollama.service": (
        "the test bed's ollama.service is a file in /etc/systemd/system, so root's identical MaskUnitFiles "
        "fails too (the file exists)"
    ),
}
DENIED = [c for c in CASES if not c.allowed]
CONTROLS: list[Case] = []
for _case in DENIED:
    if _case.name not in NO_CONTROL and _key(_case) not in {_key(c) for c in CONTROLS}:
        CONTROLS.append(_case)


def _root_name(case: Case) -> str:
    what = case.name.split(" ", 1)[1]
    return "root " + what.removeprefix("(member) ").removeprefix("(non-member) ")


#: Undo what root's call did, for the next case (ollama.service is put back by bed.recover()).
UNDO = (
    "sed -i '/^# touched$/d' /etc/systemd/system/other.service; rm -f /tmp/pwned\n"
    "rm -rf /run/systemd/system.control/ollama.service.d\n"
    "systemctl disable spare.service 2>/dev/null; systemctl stop spare.service ollama@x.service getty@tty9.service\n"
    "systemctl reset-failed evil.service getty@tty9.service ollama@x.service 2>/dev/null\n"
    "systemctl daemon-reload\n"
)


def test_every_denied_call_has_a_root_control_or_a_stated_reason():
    controlled = {_key(c) for c in CONTROLS}
    for case in DENIED:
        assert (_key(case) in controlled) != (case.name in NO_CONTROL), case.name
    assert set(NO_CONTROL) <= {c.name for c in DENIED}
    assert (len(DENIED), len(CONTROLS), len(NO_CONTROL)) == (28, 19, 6)


@pytest.mark.parametrize("case", CONTROLS, ids=[_root_name(c) for c in CONTROLS])
def test_root_control_changes_the_snapshot(matrix_bed: Bed, case: Case):
    """Root (whom systemd never asks polkit about) makes the same call: the snapshot must change."""
    bed = matrix_bed
    bed.c.run(["systemctl", "reset-failed", UNIT], check=True)
    if not bed.api_answers():
        bed.recover()
    if "needs-reload" in case.tags:
        bed.c.sh("echo '# touched' >> /etc/systemd/system/other.service", check=True)
    if "stopped" in case.tags:
        _stop(bed)
    try:
        before = _snapshot(bed)
        r = bed.c.run([BUS_CALL, case.member, case.signature, json.dumps(case.body)], timeout=60)
        reply = json.loads(r.stdout)
        time.sleep(0.5)
        changed = _diff(before, _snapshot(bed))
        conftest.MATRIX.append(
            (
                bed.suite,
                _root_name(case),
                "root control",
                "changed" if changed and "error" not in reply else f"NOT CHANGED: {reply}",
                reply.get("error", "-").rsplit(".", 1)[-1],
                changed[0] if changed else "-",
            )
        )
        assert "error" not in reply, reply
        assert changed, f"root's {case.member} changed nothing the snapshot looks at"
    finally:
        bed.c.sh(UNDO, check=False)
        bed.recover()
        assert bed.prop("Description") != "pwned"

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

#: Units the test adds: a disabled unit to enable or start.  The test bed itself installs
#: ollama@.service (the stand-in as a template), whose instances the default grant must refuse.
EXTRA_UNITS = {
    "/etc/systemd/system/spare.service": (
        "[Unit]\nDescription=ollamactl test: disabled spare unit\n\n"
        "[Service]\nExecStart=/bin/sleep infinity\n\n[Install]\nWantedBy=multi-user.target\n"
    ),
}
#: An instance of the test bed's template, running (its port is in /etc/ollama/11501.env).
INSTANCE = "ollama@11501.service"
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
    INSTANCE,
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
        "alice try-restarts ollama@11501.service (the default grant names ollama.service only)",
        "alice",
        "TryRestartUnit",
        "ss",
        [INSTANCE, "replace"],
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
    bed.c.run(["systemctl", "start", INSTANCE], check=True)
    yield bed
    bed.c.run(["rm", "-f", "/etc/systemd/system/ollama-alias.service", *EXTRA_UNITS], check=True)
    bed.c.run(["systemctl", "daemon-reload"], check=True)


def _snapshot(bed: Bed, watched: tuple[str, ...] = WATCHED) -> dict[str, str]:
    """Everything a denied call could have changed, as root sees it."""
    r = bed.c.sh(
        "systemctl list-units --all --plain --no-legend --no-pager --full | sort\n"
        "echo ---\n"
        "systemctl list-unit-files --no-legend --no-pager --full | sort\n"
        "echo ---\n"
        f"systemctl show -p {PROPS} {' '.join(watched)}\n"
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
    f"systemctl start {INSTANCE}\n"
    "systemctl reset-failed evil.service getty@tty9.service ollama@x.service 2>/dev/null\n"
    "systemctl daemon-reload\n"
)


def test_every_denied_call_has_a_root_control_or_a_stated_reason():
    controlled = {_key(c) for c in CONTROLS}
    for case in DENIED:
        assert (_key(case) in controlled) != (case.name in NO_CONTROL), case.name
    assert set(NO_CONTROL) <= {c.name for c in DENIED}
    assert (len(DENIED), len(CONTROLS), len(NO_CONTROL)) == (29, 20, 6)


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


# -- the template grant: `ollamactl policy install --unit 'ollama@.service'` -----------------------------
#
# The admin grants the instances of one template.  systemd gives polkit the unit's primary name
# (after alias resolution), and the rule answers YES only for ollama@INSTANCE.service with INSTANCE
# in units.INSTANCE_PATTERN.  One bed per release for all the cases below; the grant is removed after.

PK_VERDICTS = "/usr/local/bin/pk-verdicts"
PK_VERDICTS_PY = """\
#!/usr/bin/python3
# pk-verdicts UID PID VERB JSON-UNITS: polkitd's verdict on manage-units for process PID of UID, for each
# unit as systemd would ask (details unit and verb; only root may pass details).  No interaction.
import asyncio, json, sys
from dbus_next import BusType, Message, MessageType, Variant
from dbus_next.aio import MessageBus

async def main():
    uid, pid, verb, units = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3], json.loads(sys.argv[4])
    with open(f"/proc/{pid}/stat") as fh:
        start = int(fh.read().rsplit(")", 1)[1].split()[19])
    subject = ["unix-process", {"pid": Variant("u", pid), "start-time": Variant("t", start), "uid": Variant("i", uid)}]
    bus = await MessageBus(bus_type=BusType.SYSTEM).connect()
    out = []
    for unit in units:
        msg = Message(destination="org.freedesktop.PolicyKit1", path="/org/freedesktop/PolicyKit1/Authority",
                      interface="org.freedesktop.PolicyKit1.Authority", member="CheckAuthorization",
                      signature="(sa{sv})sa{ss}us",
                      body=[subject, "org.freedesktop.systemd1.manage-units", {"unit": unit, "verb": verb}, 0, ""])
        reply = await asyncio.wait_for(bus.call(msg), 20)
        if reply.message_type == MessageType.ERROR:
            out.append("error " + reply.error_name)
        else:
            out.append("yes" if reply.body[0][0] else "no")
    print(json.dumps(out))

asyncio.run(main())
"""
TEMPLATE_GRANT_FILE = "/etc/polkit-1/rules.d/50-ollamactl-ollamactl-ollama@.service.rules"
OTHER_TEMPLATE = "[Unit]\nDescription=ollamactl test: another template %i\n\n[Service]\nExecStart=/bin/sleep infinity\n"
#: Alias symlinks in /etc/systemd/system: name -> target (relative, as `systemctl enable` writes Alias=).
#: What systemd does with each (seen on bookworm, trixie and sid) is in the case list below.
TEMPLATE_ALIASES = {
    # out: an instance name aliased to a plain unit.  systemd ignores the symlink (an instance may
    # alias only an instance or a template), so the name stays an instance of ollama@.service.
    "ollama@evil.service": "other.service",
    # out: to the same instance of another template: a valid alias, polkit sees other@11503.service.
    "ollama@11503.service": "other@11503.service",
    # out: an instance aliased to another template: valid, polkit sees other@11504.service.
    "ollama@11504.service": "other@.service",
    # in: a plain name aliased to one of our instances.  systemd ignores it: foo.service is not-found.
    "foo.service": INSTANCE,
    # in: a template aliased to ours: gpu@11501.service loads as ollama@11501.service, which is granted.
    "gpu@.service": "ollama@.service",
}
#: Running units whose state the template cases watch (besides WATCHED).
TEMPLATE_RUNNING = (
    INSTANCE,
    "ollama@11502.service",
    "other@11501.service",
    "other@11503.service",
    "other@11504.service",
)
TEMPLATE_WATCHED = (*WATCHED, *TEMPLATE_RUNNING[1:])


@dataclass(frozen=True)
class TCase:
    """One call on the template bed.

    expect: "allowed" (restarts ``restarts``), "denied" (by polkit; systemd asks it before it looks
    at a not-found unit), "no-op" (accepted; an inactive unit stays inactive), "refused" (systemd
    answers before polkit).  sees: the primary name systemd loads the unit as, i.e. what polkit gets
    as "unit" (with the load state when not loaded).
    """

    name: str
    user: str
    member: str
    unit: str
    expect: str
    sees: str | None
    restarts: str | None = None


LONG = "ollama@" + "a" * 65 + ".service"
TEMPLATE_CASES = [
    TCase(
        "alice try-restarts ollama@11501.service", "alice", "TryRestartUnit", INSTANCE, "allowed", INSTANCE, INSTANCE
    ),
    TCase(
        "alice restarts ollama@11501.service (verb not granted)", "alice", "RestartUnit", INSTANCE, "denied", INSTANCE
    ),
    TCase("alice stops ollama@11501.service", "alice", "StopUnit", INSTANCE, "denied", INSTANCE),
    TCase("bob (non-member) try-restarts ollama@11501.service", "bob", "TryRestartUnit", INSTANCE, "denied", INSTANCE),
    TCase(
        "alice try-restarts other@11501.service (other template)",
        "alice",
        "TryRestartUnit",
        "other@11501.service",
        "denied",
        "other@11501.service",
    ),
    TCase("alice try-restarts other.service", "alice", "TryRestartUnit", "other.service", "denied", "other.service"),
    TCase(
        "alice try-restarts the template ollama@.service", "alice", "TryRestartUnit", "ollama@.service", "refused", None
    ),
    TCase(
        "alice try-restarts ollama@x\\x2dy.service (escape)",
        "alice",
        "TryRestartUnit",
        "ollama@x\\x2dy.service",
        "denied",
        "ollama@x\\x2dy.service",
    ),
    TCase(
        "alice try-restarts ollama@..service",
        "alice",
        "TryRestartUnit",
        "ollama@..service",
        "denied",
        "ollama@..service",
    ),
    TCase(
        "alice try-restarts ollama@x@y.service",
        "alice",
        "TryRestartUnit",
        "ollama@x@y.service",
        "denied",
        "ollama@x@y.service",
    ),
    TCase(
        "alice try-restarts ollama@-x.service",
        "alice",
        "TryRestartUnit",
        "ollama@-x.service",
        "denied",
        "ollama@-x.service",
    ),
    TCase("alice try-restarts ollama@<65 x a>.service", "alice", "TryRestartUnit", LONG, "denied", LONG),
    TCase(
        "alice try-restarts ollama@11501.socket",
        "alice",
        "TryRestartUnit",
        "ollama@11501.socket",
        "denied",
        "ollama@11501.socket (not-found)",
    ),
    TCase(
        "alice try-restarts ollamax@11501.service",
        "alice",
        "TryRestartUnit",
        "ollamax@11501.service",
        "denied",
        "ollamax@11501.service (not-found)",
    ),
    TCase(
        "alias out: ollama@evil.service -> other.service",
        "alice",
        "TryRestartUnit",
        "ollama@evil.service",
        "no-op",
        "ollama@evil.service",
    ),
    TCase(
        "alias out: ollama@11503.service -> other@11503.service",
        "alice",
        "TryRestartUnit",
        "ollama@11503.service",
        "denied",
        "other@11503.service",
    ),
    TCase(
        "alias out: ollama@11504.service -> other@.service",
        "alice",
        "TryRestartUnit",
        "ollama@11504.service",
        "denied",
        "other@11504.service",
    ),
    TCase(
        "alias in: foo.service -> ollama@11501.service",
        "alice",
        "TryRestartUnit",
        "foo.service",
        "denied",
        "foo.service (not-found)",
    ),
    TCase(
        "alias in: gpu@11501.service (gpu@.service -> ollama@.service)",
        "alice",
        "TryRestartUnit",
        "gpu@11501.service",
        "allowed",
        INSTANCE,
        INSTANCE,
    ),
]


@pytest.fixture(scope="module")
def template_bed(matrix_bed: Bed):
    """The admin grants the instances of ollama@.service; another template, two instances and aliases exist."""
    bed = matrix_bed
    bed.c.write_file(PK_VERDICTS, PK_VERDICTS_PY, 0o755)
    bed.c.write_file("/etc/systemd/system/other@.service", OTHER_TEMPLATE)
    for name, target in TEMPLATE_ALIASES.items():
        bed.c.run(["ln", "-sfn", target, f"/etc/systemd/system/{name}"], check=True)
    bed.c.run(["systemctl", "daemon-reload"], check=True)
    # Without --offline, install asks systemd whether the unit is an alias (LoadUnit), which a template is not.
    online = bed.ollamactl("policy", "install", "--group", "ollamactl", "--unit", "ollama@.service", user="root")
    said = (online.stdout + online.stderr).strip().replace("\n", " | ")[:140] or "-"
    conftest.MATRIX.append(
        (
            bed.suite,
            "root: ollamactl policy install --unit ollama@.service",
            "installs",
            f"exit {online.returncode}",
            "-",
            said,
        )
    )
    if online.returncode != 0:
        r = bed.ollamactl(
            "policy", "install", "--offline", "--group", "ollamactl", "--unit", "ollama@.service", user="root"
        )
        assert r.returncode == 0, r.stdout + r.stderr
    assert bed.c.run(["test", "-f", TEMPLATE_GRANT_FILE]).returncode == 0
    bed.c.run(["systemctl", "start", *TEMPLATE_RUNNING], check=True)
    sleeper = bed.c.sh(
        "setsid -f runuser -u alice -- sleep 900 </dev/null >/dev/null 2>&1; sleep 0.2; pgrep -n -u alice -x sleep",
        check=True,
    )
    pid = sleeper.stdout.split()[-1]
    uid = bed.c.run(["id", "-u", "alice"], check=True).stdout.strip()
    _wait_for_rule(bed, uid, pid)
    bed.pk = (uid, pid)
    yield bed
    bed.c.run(["kill", pid])
    bed.c.run(["systemctl", "stop", *TEMPLATE_RUNNING[1:], "gpu@11501.service", "ollama@evil.service"])
    bed.c.run(
        [
            "rm",
            "-f",
            TEMPLATE_GRANT_FILE,
            "/etc/systemd/system/other@.service",
            *(f"/etc/systemd/system/{n}" for n in TEMPLATE_ALIASES),
        ],
        check=True,
    )
    bed.c.run(["systemctl", "daemon-reload"], check=True)
    bed.c.run(["systemctl", "reset-failed"])


def _verdicts(bed: Bed, units: list[str], verb: str = "try-restart") -> list[str]:
    uid, pid = bed.pk
    r = bed.c.run([PK_VERDICTS, uid, pid, verb, json.dumps(units)], timeout=120)
    assert r.returncode == 0, r.stderr
    return json.loads(r.stdout)


def _wait_for_rule(bed: Bed, uid: str, pid: str) -> None:
    """polkitd reloads its rules on inotify; wait until it applies the new one."""
    bed.pk = (uid, pid)
    end = time.monotonic() + 30
    while _verdicts(bed, [INSTANCE]) != ["yes"]:
        assert time.monotonic() < end, "polkitd never applied the template grant"
        time.sleep(0.2)


def test_polkit_and_python_agree_on_the_instance_grammar(template_bed: Bed):
    """The installed rule, run by the real polkitd (duktape or mozjs), against units.template_instance."""
    from ollamactl.units import template_instance
    from tests.unit.test_units import TEMPLATE_TABLE

    bed = template_bed
    names = [u for u, _ in TEMPLATE_TABLE if "\x00" not in u]
    got = _verdicts(bed, names)
    # the packaged rule (ollama.service) is installed too
    want = ["yes" if template_instance("ollama@.service", u) or u == UNIT else "no" for u in names]
    wrong = [(u, g, w) for u, g, w in zip(names, got, want, strict=True) if g != w]
    conftest.MATRIX.append(
        (
            bed.suite,
            f"polkitd vs Python on {len(names)} names (template grant)",
            "agree",
            "agree" if not wrong else f"DISAGREE: {wrong[:3]}",
            "-",
            "-",
        )
    )
    assert not wrong
    assert got.count("yes") == 5 + 1
    assert _verdicts(bed, [INSTANCE], "restart") == ["no"] and _verdicts(bed, [INSTANCE], "stop") == ["no"]


def _primary(bed: Bed, unit: str) -> str:
    """The name systemd loads ``unit`` as (what it would give polkit), or "not-found"/"invalid"."""
    r = bed.c.run(
        [
            "busctl",
            "--json=short",
            "call",
            "org.freedesktop.systemd1",
            "/org/freedesktop/systemd1",
            "org.freedesktop.systemd1.Manager",
            "LoadUnit",
            "s",
            unit,
        ]
    )
    if r.returncode != 0:
        return "invalid: " + r.stderr.strip()[:60]
    path = json.loads(r.stdout)["data"][0]

    def unit_property(name: str) -> str:
        argv = ["busctl", "--json=short", "get-property", "org.freedesktop.systemd1", path]
        return json.loads(bed.c.run([*argv, "org.freedesktop.systemd1.Unit", name], check=True).stdout)["data"]

    name, state = unit_property("Id"), unit_property("LoadState")
    return name if state == "loaded" else f"{name} ({state})"


@pytest.mark.parametrize("case", TEMPLATE_CASES, ids=[c.name for c in TEMPLATE_CASES])
def test_template_grant_matrix(template_bed: Bed, case: TCase):
    bed = template_bed
    bed.c.run(["systemctl", "reset-failed", *TEMPLATE_RUNNING], check=True)
    bed.c.run(["systemctl", "start", *TEMPLATE_RUNNING], check=True)
    watched = TEMPLATE_WATCHED
    before = _snapshot(bed, watched)
    inv_before = bed.prop("InvocationID", case.restarts) if case.restarts else None
    reply = _call(bed, Case(case.name, case.user, case.member, "ss", [case.unit, "replace"]))
    error = reply.get("error", "")
    sees = _primary(bed, case.unit)
    short = error.rsplit(".", 1)[-1] if error else "-"
    if case.expect == "allowed":
        ok = not error
        end = time.monotonic() + 30
        while ok and (
            bed.prop("InvocationID", case.restarts) == inv_before or bed.prop("ActiveState", case.restarts) != "active"
        ):
            if time.monotonic() > end:
                ok = False
            time.sleep(0.1)
        others = [u for u in TEMPLATE_RUNNING if u != case.restarts]
        conftest.MATRIX.append(
            (
                bed.suite,
                f"template grant: {case.name}",
                "allowed",
                "allowed" if ok else f"NOT ALLOWED: {reply}",
                short,
                f"restarted {case.restarts} (new invocation); polkit saw {sees}",
            )
        )
        assert ok, f"{case.name}: expected a restart of {case.restarts}, got {reply}"
        assert sees == case.sees
        assert all(bed.prop("ActiveState", u) == "active" for u in others)
        return
    time.sleep(0.5)
    changed = _diff(before, _snapshot(bed, watched))
    polkit_refused = error in (
        "org.freedesktop.DBus.Error.InteractiveAuthorizationRequired",
        "org.freedesktop.DBus.Error.AccessDenied",
    )
    outcome = {
        "denied": polkit_refused,
        "no-op": not error,
        "refused": bool(error) and not polkit_refused,
    }[case.expect]
    conftest.MATRIX.append(
        (
            bed.suite,
            f"template grant: {case.name}",
            case.expect,
            case.expect if outcome else f"GOT: {reply}",
            short,
            ("yes" if not changed else "NO: " + "; ".join(changed[:3])) + f"; polkit saw {sees}",
        )
    )
    assert outcome, f"{case.name}: expected {case.expect}, got {reply}"
    assert not changed, f"{case.name} changed the system:\n" + "\n".join(changed)
    if case.sees is not None:
        assert sees == case.sees

"""Attacks on ollamactl, performed for real on booted Debian 12 and 13 with the .deb installed.

The threat model (SECURITY.md): a member of group ollamactl (alice) may restart
Ollama and nothing more; a non-member (bob) may do nothing; root runs our
commands in a directory every member can write; any local user can squat
Ollama's port while it is down and so play a hostile server; the audit trail
must not believe what a client says about itself.

Each test performs one attack inside the container as alice or bob, then runs
what the attack aims at (root's ``ollamactl restart`` / ``status`` / ``probe``
/ ``doctor``, the running watchdog) and checks that the attack's *effect* did
not happen: the target file does not exist or is unchanged, root's command
returned within its timeout with a clear one-line error and no traceback, no
ESC byte reached root's terminal, memory stayed bounded, the watchdog still
restarts a wedged stand-in.  Every check becomes a row of the "attacks" table
printed at the end of the run (tests/e2e/conftest.py), defended or not.

Root's commands run under a small in-container wrapper (``run.py`` below) that
bounds their time and address space (2 GiB, so that an unbounded read fails
inside the container instead of eating the test host) and reports their exit
code, output, wall time and peak RSS.  The watchdog gets the same address-space
bound through a runtime drop-in, for the same reason.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from typing import Any

import pytest

from tests.e2e import conftest
from tests.e2e.conftest import REPO, UNIT, Bed
from tests.e2e.test_watch import WATCHDOG, ensure_units, settle

RUN_DIR = "/run/ollamactl"
TOOLS = "/usr/local/lib/ollamactl-attacks"
SAFETY_DROPIN = f"/run/systemd/system/{WATCHDOG}.d/zz-attack-safety.conf"
CONFIG = "/etc/ollamactl/config.toml"
TMPFILES = "/usr/lib/tmpfiles.d/ollamactl.conf"
AS_LIMIT = 2 << 30  # bytes of address space for root's commands and the watchdog
MEM_SLACK = 64 << 20  # a hostile input may cost this much RSS over the benign baseline, no more
ESC = "\x1b"
#: A second restart within a test must not hit the budget's 10 s gap: the budget is not what these test.
RELAXED = {"OLLAMACTL_RESTART_BACKOFF": "0", "OLLAMACTL_MAX_RESTARTS": "100"}
#: The watchdog as test_watch.py runs it, faster: two failed 1 s probes half a second apart are a wedge.
WATCH_CONFIG = """\
watch_period = 0.5
watch_failure_threshold = 2
watch_startup_grace = 2
probe_timeout = 1
max_restarts = 20
restart_backoff = 0
"""
#: Files an attack may create outside /run/ollamactl; removed after every test.
TARGETS = ("/etc/profile.d/zz-pwn.sh", "/etc/nologin", "/etc/systemd/system/pwn.service")
SECRET = "/etc/ollamactl-attack-secret"

# --------------------------------------------------------------------------- in-container tools

RUNNER = r"""
import json, os, resource, subprocess, sys, time
limit, as_bytes, argv = float(sys.argv[1]), int(sys.argv[2]), sys.argv[3:]
def cap():
    resource.setrlimit(resource.RLIMIT_AS, (as_bytes, as_bytes))
t0 = time.monotonic()
p = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                     preexec_fn=cap, start_new_session=True)
try:
    out, err = p.communicate(timeout=limit)
    timed_out = False
except subprocess.TimeoutExpired:
    os.killpg(p.pid, 9)
    out, err = p.communicate()
    timed_out = True
elapsed = time.monotonic() - t0
rss = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss * 1024
print(json.dumps({"rc": p.returncode, "elapsed": elapsed, "rss": rss, "timed_out": timed_out,
                  "out": out.decode("utf-8", "replace"), "err": err.decode("utf-8", "replace")}))
"""

PLANT = r"""
# plant.py KIND ...: what a member does to /run/ollamactl.  Prints {"ok": bool, ...}.
#   pids TARGET N      symlinks .state.<pid>.tmp -> TARGET for the next N pids
#   symlink NAME TARGET, fifo NAME, file NAME (content on stdin), sparse NAME SIZE
# NAME replaces whatever is there (rename within the directory, as any member may).
import json, os, secrets, sys
D = "/run/ollamactl"
kind, args = sys.argv[1], sys.argv[2:]
def done(**kw):
    print(json.dumps(kw)); sys.exit(0)
try:
    if kind == "pids":
        target, n = args[0], int(args[1])
        with open("/proc/sys/kernel/ns_last_pid") as fh:
            last = int(fh.read())
        made = 0
        for pid in range(last + 1, last + 1 + n):
            try:
                os.symlink(target, f"{D}/.state.{pid}.tmp")
                made += 1
            except FileExistsError:
                pass
        done(ok=made > 0, made=made, first=last + 1)
    name, tmp = args[0], f"{D}/.plant.{secrets.token_hex(6)}"
    if kind == "symlink":
        os.symlink(args[1], tmp)
    elif kind == "fifo":
        os.mkfifo(tmp, 0o660)
    elif kind == "file":
        with open(tmp, "wb") as fh:
            fh.write(sys.stdin.buffer.read())
        os.chmod(tmp, 0o660)
    elif kind == "sparse":
        with open(tmp, "wb") as fh:
            fh.truncate(int(args[1]))
        os.chmod(tmp, 0o660)
    os.replace(tmp, f"{D}/{name}")
    done(ok=True)
except OSError as exc:
    done(ok=False, error=f"{type(exc).__name__}: {exc}")
"""

HOLD = r"""
# hold.py OUT [create]: take every lock of /run/ollamactl one can (the directory's own fd, restart.lock),
# report which to OUT, and hold them until killed.
import errno, fcntl, json, os, signal, sys
D = "/run/ollamactl"
out, create = sys.argv[1], sys.argv[2:] == ["create"]
held, fds = {}, []
def take(name, opener):
    try:
        fd = opener()
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        fds.append(fd)
        held[name] = "held"
    except OSError as exc:
        held[name] = errno.errorcode.get(exc.errno, str(exc))
take("directory", lambda: os.open(D, os.O_RDONLY | os.O_DIRECTORY))
flags = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | (os.O_CREAT if create else 0)
take("restart.lock", lambda: os.open(D + "/restart.lock", flags, 0o660))
with open(out + ".tmp", "w") as fh:
    json.dump({"pid": os.getpid(), "held": held}, fh)
os.replace(out + ".tmp", out)
while True:
    signal.pause()
"""

NON_MEMBER = r"""
# What a non-member tries on /run/ollamactl; prints {attempt: "ok" or errno name}.
import errno, fcntl, json, os
D = "/run/ollamactl"
res = {}
def attempt(name, fn):
    try:
        fn()
        res[name] = "ok"
    except OSError as exc:
        res[name] = errno.errorcode.get(exc.errno, str(exc))
def flock(path, flags):
    fd = os.open(path, flags)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    finally:
        os.close(fd)
def read(path):
    with open(path, "rb") as fh:
        fh.read(65536)
attempt("list the directory", lambda: os.listdir(D))
attempt("read state.json", lambda: read(D + "/state.json"))
attempt("flock the directory", lambda: flock(D, os.O_RDONLY | os.O_DIRECTORY))
attempt("flock restart.lock", lambda: flock(D + "/restart.lock", os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK))
attempt("create a file", lambda: os.close(os.open(D + "/bob", os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)))
print(json.dumps(res))
"""

FORGE_JOURNAL = r"""
# Log, as whoever runs this, a record that claims to be root's restart (journald's native protocol).
import socket, sys
tag = sys.argv[1]
fields = {
    "SYSLOG_IDENTIFIER": "ollamactl", "PRIORITY": "5", "MESSAGE": f"restarted ollama.service (reason: {tag})",
    "OLLAMACTL_OUTCOME": "restarted", "OLLAMACTL_UNIT": "ollama.service", "OLLAMACTL_REASON": tag,
    "OLLAMACTL_UID": "0", "OLLAMACTL_USER": "root", "OLLAMACTL_PID": "1",
    # trusted fields: journald must drop these from a client
    "_UID": "0", "_PID": "1", "_SYSTEMD_UNIT": "ollamactl-watchdog.service",
}
data = "".join(f"{k}={v}\n" for k, v in fields.items()).encode()
with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as s:
    s.sendto(data, "/run/systemd/journal/socket")
"""

# --------------------------------------------------------------------------- results and the table


def _show(text: str, limit: int = 160) -> str:
    """One printable line: control characters (ESC included) shown escaped, clipped."""
    out = "".join(ch if ch.isprintable() else ch.encode("unicode_escape").decode() for ch in text)
    return out if len(out) <= limit else out[: limit - 3] + "..."


def _strings(value: Any) -> list[str]:
    """Every string in a decoded JSON value, keys included (json.dumps would escape an ESC back to \\u001b)."""
    if isinstance(value, str):
        return [value]
    if isinstance(value, dict):
        return [s for k, v in value.items() for s in (k, *_strings(v))]
    if isinstance(value, list):
        return [s for v in value for s in _strings(v)]
    return []


@dataclass
class Run:
    """One command run by the in-container wrapper."""

    argv: list[str]
    rc: int
    elapsed: float
    rss: int
    timed_out: bool
    out: str
    err: str

    @property
    def text(self) -> str:
        return self.out + self.err

    def first_line(self) -> str:
        lines = [line for line in self.text.splitlines() if line.strip()]
        return lines[0] if lines else ""

    def summary(self) -> str:
        state = f"killed after {self.elapsed:.1f}s (hung)" if self.timed_out else f"rc={self.rc} in {self.elapsed:.1f}s"
        return f"{state}, {self.rss >> 20} MiB: {_show(self.first_line(), 110)!r}"

    def problems(self, codes: tuple[int, ...], bound: float, max_rss: int | None = None) -> list[str]:
        """What a user would notice: a hang, a traceback, terminal escapes, a wrong exit, a messy error."""
        found = []
        if self.timed_out:
            return [f"did not return within {self.elapsed:.0f}s"]
        if self.elapsed > bound:
            found.append(f"took {self.elapsed:.1f}s (bound {bound:g}s)")
        if "Traceback" in self.text:
            tail = [line for line in self.text.splitlines() if line.strip()][-1:]
            found.append(f"traceback ({_show(tail[0] if tail else '', 80)})")
        if ESC in self.text:
            found.append("ESC byte in the output")
        if self.rc not in codes:
            found.append(f"exit {self.rc} (expected {'/'.join(map(str, codes))})")
        if self.rc != 0 and "--json" not in self.argv and len(self.err.strip().splitlines()) > 1:
            found.append(f"error is {len(self.err.strip().splitlines())} lines, not one")
        if max_rss is not None and self.rss > max_rss:
            found.append(f"peak RSS {self.rss >> 20} MiB (bound {max_rss >> 20} MiB)")
        if "--json" in self.argv and not self.timed_out:
            try:
                payload = json.loads(self.out)
            except ValueError:
                found.append("--json output is not one JSON object")
            else:
                if any(ESC in text for text in _strings(payload)):
                    found.append("ESC inside a JSON string")
        return found


@dataclass
class Attack:
    """Collects the checks of one attack as rows of the attacks table; fails the test if any was not defended."""

    bed: Bed
    name: str
    actor: str
    failures: list[str] = field(default_factory=list)

    def check(self, target: str, defended: bool, evidence: str) -> bool:
        conftest.ATTACKS.append(
            (self.bed.suite, self.name, self.actor, target, "yes" if defended else "no", _show(evidence, 260))
        )
        if not defended:
            self.failures.append(f"{target}: {evidence}")
        return defended

    def command(
        self, target: str, run: Run, codes: tuple[int, ...], bound: float, max_rss: int | None = None, note: str = ""
    ) -> Run:
        found = run.problems(codes, bound, max_rss)
        self.check(target, not found, ("; ".join(found) + " | " if found else "") + run.summary() + note)
        return run

    def verdict(self) -> None:
        assert not self.failures, f"{self.actor}: {self.name}: not defended:\n" + "\n".join(self.failures)


# --------------------------------------------------------------------------- fixtures


@dataclass
class Site:
    """The bed with the attack tools, and cleanup of whatever a test planted or started."""

    bed: Bed
    baseline_rss: int
    pids: list[int] = field(default_factory=list)

    @property
    def c(self):
        return self.bed.c

    def cli(self, *args: str, user: str = "root", limit: float = 30, env: dict[str, str] | None = None) -> Run:
        argv = ["ollamactl", *args]
        r = self.c.run(["python3", f"{TOOLS}/run.py", str(limit), str(AS_LIMIT), *argv], user=user, env=env,
                       timeout=limit + 30)  # fmt: skip
        assert r.returncode == 0, f"the runner failed: {r.stderr}"
        return Run(argv=argv, **json.loads(r.stdout))

    def plant(self, *args: str, user: str = "alice", data: bytes | None = None) -> dict[str, Any]:
        # with bytes input the testbed runs in binary mode: bytes out too
        r = self.c.run(["python3", f"{TOOLS}/plant.py", *args], user=user, input=data, timeout=60)  # type: ignore[arg-type]
        out = r.stdout.decode() if isinstance(r.stdout, bytes) else r.stdout
        assert r.returncode == 0, f"plant.py {args}: {r.stderr!r}"
        return json.loads(out)

    def hold(self, user: str, create: bool) -> dict[str, Any]:
        """Start a lock holder as ``user`` in the background; return what it holds."""
        self.c.run(["install", "-d", "-m", "1777", "/run/attack-out"], check=True)
        out = f"/run/attack-out/hold-{user}.json"
        self.c.run(["rm", "-f", out], check=True)
        script = f"setsid -f python3 {TOOLS}/hold.py {out} {'create' if create else ''} </dev/null >/dev/null 2>&1"
        self.c.sh(script, user=user, check=True)
        end = time.monotonic() + 15
        while (r := self.c.run(["cat", out])).returncode != 0:
            assert time.monotonic() < end, f"the lock holder of {user} did not start"
            time.sleep(0.05)
        info = json.loads(r.stdout)
        self.pids.append(info["pid"])
        return info

    def start_watchdog(self) -> None:
        self.c.write_file(CONFIG, WATCH_CONFIG)
        for unit in (WATCHDOG, UNIT):
            self.c.run(["systemctl", "reset-failed", unit])  # fails for a unit never loaded: fine
        self.c.run(["systemctl", "start", WATCHDOG], check=True, timeout=60)
        assert self.bed.prop("ActiveState", unit=WATCHDOG) == "active"

    def watchdog_identity(self) -> tuple[str, str]:
        return self.bed.prop("MainPID", unit=WATCHDOG), self.bed.prop("NRestarts", unit=WATCHDOG)

    def wedge_and_wait(self, deadline: float) -> tuple[bool, str]:
        """Wedge the stand-in (silent until it exits); True once a new process answers within ``deadline``."""
        settle(self.bed, 2)  # past the watchdog's startup grace, so failures count at once
        before = self.bed.prop("InvocationID")
        self.c.sh(f"kill -USR2 $(systemctl show -p MainPID --value {UNIT})", check=True)
        t0 = time.monotonic()
        while time.monotonic() - t0 < deadline:
            if self.bed.prop("InvocationID") != before and self.bed.api_answers(timeout=0.5):
                return True, f"wedged stand-in restarted and answering after {time.monotonic() - t0:.1f}s"
            time.sleep(0.2)
        log = self.c.run(["journalctl", "-u", WATCHDOG, "-n", "4", "--no-pager", "-o", "cat"]).stdout
        return False, f"no recovery within {deadline:g}s; watchdog log: {' / '.join(log.strip().splitlines())}"

    def cleanup(self) -> None:
        for pid in self.pids:
            self.c.run(["kill", "-9", str(pid)])
        self.c.run(["systemctl", "stop", WATCHDOG], timeout=60)
        self.c.run(["systemctl", "reset-failed", WATCHDOG])
        self.c.run(["rm", "-rf", CONFIG, SECRET, "/run/attack-out", *TARGETS])
        # everything members may have planted; then the package's own tmpfiles entry puts back what it owns
        self.c.sh(f"find {RUN_DIR} -mindepth 1 -maxdepth 1 -exec rm -rf {{}} +; systemd-tmpfiles --create {TMPFILES}")


@pytest.fixture(scope="module")
def arena(bed: Bed):
    """The attack tools in the container, the watchdog's safety bound, and root's baseline memory use."""
    c = bed.c
    shipped = c.run(["cat", CONFIG])  # the package's conffile: tests replace it, the module puts it back
    c.write_file(f"{TOOLS}/run.py", RUNNER, 0o755)
    c.write_file(f"{TOOLS}/plant.py", PLANT, 0o755)
    c.write_file(f"{TOOLS}/hold.py", HOLD, 0o755)
    c.write_file(f"{TOOLS}/non_member.py", NON_MEMBER, 0o755)
    c.write_file(f"{TOOLS}/forge_journal.py", FORGE_JOURNAL, 0o755)
    c.write_file(f"{TOOLS}/hostile_server.py", (REPO / "tests/standin/hostile_server.py").read_bytes(), 0o755)
    ensure_units(c)
    c.write_file(SAFETY_DROPIN, f"[Service]\nLimitAS={AS_LIMIT}\n")
    c.run(["systemctl", "daemon-reload"], check=True)
    site = Site(bed, baseline_rss=0)
    # what root's commands cost against a healthy Ollama: the yardstick for "memory stayed bounded"
    for args in (("status",), ("probe",), ("doctor",)):
        site.baseline_rss = max(site.baseline_rss, site.cli(*args).rss)
    yield site
    c.run(["rm", "-rf", TOOLS, SAFETY_DROPIN])
    if shipped.returncode == 0:
        c.write_file(CONFIG, shipped.stdout)
    c.run(["systemctl", "daemon-reload"])


@pytest.fixture
def site(arena: Site, healthy: Bed):
    s = Site(healthy, arena.baseline_rss)
    yield s
    s.cleanup()


def _file_state(bed: Bed, path: str) -> str:
    """'absent', or owner/mode/size and the start of the content: evidence of what root did to it."""
    r = bed.c.run(["stat", "-c", "%U:%G %a %s bytes", path])
    if r.returncode != 0:
        return "absent"
    head = bed.c.run(["head", "-c", "60", path]).stdout
    return f"{r.stdout.strip()}: {head!r}"


# --------------------------------------------------------------------------- member vs root: the directory


def test_tmp_file_symlinks_for_upcoming_pids(site: Site):
    """alice plants .state.<pid>.tmp symlinks for the next 2000 pids; root's restart must not write through one."""
    target = "/etc/profile.d/zz-pwn.sh"
    a = Attack(site.bed, f"symlinks .state.<pid>.tmp -> {target} for the next 2000 pids", "alice")
    planted = site.plant("pids", target, "2000")
    assert planted["ok"], planted  # members may create files there, by design; the point is what root does next
    run = site.cli("restart")
    a.command("root: ollamactl restart", run, codes=(0,), bound=30)
    state = _file_state(site.bed, target)
    a.check(target, state == "absent", state)
    a.verdict()


@pytest.mark.parametrize("target", ["/etc/nologin", "/etc/systemd/system/pwn.service"])
def test_restart_lock_symlink(site: Site, target: str):
    """alice replaces restart.lock with a symlink; root's restart must not create the target."""
    a = Attack(site.bed, f"restart.lock -> {target}", "alice")
    assert site.plant("symlink", "restart.lock", target)["ok"]
    run = site.cli("restart", "--timeout", "20")
    a.command("root: ollamactl restart --timeout 20", run, codes=(0, 7), bound=25)
    state = _file_state(site.bed, target)
    a.check(target, state == "absent", state)
    a.verdict()


def test_restart_lock_fifo(site: Site):
    """alice makes restart.lock a FIFO; root's restart --timeout 10 must not hang on it."""
    a = Attack(site.bed, "restart.lock is a FIFO", "alice")
    assert site.plant("fifo", "restart.lock")["ok"]
    run = site.cli("restart", "--timeout", "10", limit=20)
    a.command("root: ollamactl restart --timeout 10", run, codes=(0, 7), bound=12.5)
    a.verdict()


def _entry(at: Any, **kw: Any) -> dict[str, Any]:
    return {"at": at, "unit": UNIT, "uid": 0, "pid": 1, "reason": None, **kw}


NAN, INF = float("nan"), float("inf")  # json.dumps writes NaN, Infinity, -Infinity
# Before the runtime hardening (the code at ff6cbbb) root's restart crashed with a traceback on "at 'x'", "at [1]" and
# the deep nesting; the other cases it already survived, and they stay here as regression guards.
HOSTILE_STATES: dict[str, bytes] = {
    "an entry with at 'x'": json.dumps({"version": 1, "restarts": [_entry("x")]}).encode(),
    "an entry with at [1]": json.dumps({"version": 1, "restarts": [_entry([1])]}).encode(),
    "null entries": json.dumps({"version": 1, "restarts": [None, None, _entry(None)]}).encode(),
    # deep, yet under the 64 KiB a state file may have, so the parser itself meets it
    "60000-deep nesting": b'{"version": 1, "restarts": ' + b"[" * 60_000,
    "NaN and Infinity": json.dumps({"version": 1, "restarts": [_entry(v) for v in (NAN, INF, -INF)]}).encode(),
    "huge ints": json.dumps(
        {"version": 1, "restarts": [_entry(10**400, uid=10**400, pid=-(10**400)), _entry(time.time(), pid=10**30)]}
    ).encode(),
    "entries 10 years in the future": json.dumps(
        {"version": 1, "restarts": [_entry(time.time() + 3.2e8 + i) for i in range(3)]}
    ).encode(),
    "wrong types everywhere": json.dumps({"version": "1", "restarts": {"at": 1}, "x": [None]}).encode(),
}


@pytest.mark.parametrize("case", list(HOSTILE_STATES))
def test_hostile_state_contents(site: Site, case: str):
    """alice writes state.json that is valid JSON but hostile data; root's restart must handle it."""
    a = Attack(site.bed, f"state.json: {case}", "alice")
    assert site.plant("file", "state.json", data=HOSTILE_STATES[case])["ok"]
    run = site.cli("restart", "--timeout", "30")
    a.command("root: ollamactl restart", run, codes=(0, 8), bound=30)
    a.verdict()


@pytest.mark.parametrize("kind", ["symlink to /dev/zero", "FIFO", "100 MiB sparse file"])
def test_state_file_that_never_ends_or_blocks(site: Site, kind: str):
    """alice makes state.json endless, blocking or huge; root's restart, status and doctor stay prompt and small."""
    a = Attack(site.bed, f"state.json is a {kind}", "alice")
    if kind.startswith("symlink"):
        planted = site.plant("symlink", "state.json", "/dev/zero")
    elif kind == "FIFO":
        planted = site.plant("fifo", "state.json")
    else:
        planted = site.plant("sparse", "state.json", str(100 << 20))
    assert planted["ok"], planted
    bound_rss = site.baseline_rss + MEM_SLACK
    run = site.cli("restart", "--timeout", "15", limit=25)
    a.command("root: ollamactl restart --timeout 15", run, codes=(0, 7), bound=17, max_rss=bound_rss)
    a.command("root: ollamactl status", site.cli("status", limit=20), codes=(0,), bound=10, max_rss=bound_rss)
    a.command("root: ollamactl doctor", site.cli("doctor", limit=40), codes=(0, 20), bound=35, max_rss=bound_rss)
    a.verdict()


@pytest.mark.parametrize("via", ["state.json", ".state.<pid>.tmp for the next 2000 pids"])
def test_root_only_file_is_neither_written_nor_shown(site: Site, via: str):
    """alice points a symlink at a root-only file; root's restart must not change it or print it.

    Through .state.<pid>.tmp the code before the hardening truncated the file, wrote the history into it
    and made it 0664; through state.json it already replaced the link, not the file (a regression guard).
    """
    token = f"secret-{time.time_ns()}"
    site.c.write_file(SECRET, token + "\n", 0o600)
    before = site.c.run(["sh", "-c", f"stat -c '%U:%G %a %s' {SECRET}; sha256sum {SECRET}"], check=True).stdout
    a = Attack(site.bed, f"{via} -> a root-only file (0600)", "alice")
    since = time.time()
    if via == "state.json":
        assert site.plant("symlink", "state.json", SECRET)["ok"]
    else:
        assert site.plant("pids", SECRET, "2000")["ok"]
    run = site.cli("restart")
    a.command("root: ollamactl restart", run, codes=(0,), bound=30)
    after = site.c.run(["sh", "-c", f"stat -c '%U:%G %a %s' {SECRET}; sha256sum {SECRET}"], check=True).stdout
    a.check(SECRET, after == before, "unchanged" if after == before else f"{before.split()[:3]} -> {after.split()[:3]}"
            f", now {_file_state(site.bed, SECRET)}")  # fmt: skip
    journal = site.c.run(["journalctl", "--no-pager", f"--since=@{since:.3f}", "-o", "cat"]).stdout
    shown = token in run.text or token in journal
    a.check("its content in root's output or the journal", not shown, "shown" if shown else "not shown")
    a.verdict()


# --------------------------------------------------------------------------- non-member, and the lock


def test_non_member_gets_nothing_from_the_directory(site: Site):
    """bob lists, reads and flocks what he can in /run/ollamactl; root's restart must not wait for him."""
    warm = site.cli("restart", user="alice", env=RELAXED)  # the product creates whatever files it keeps there
    assert warm.rc == 0, warm.summary()
    a = Attack(site.bed, "non-member reads and locks the runtime directory", "bob")
    r = site.c.run(["python3", f"{TOOLS}/non_member.py"], user="bob", check=True)
    for attempt, result in json.loads(r.stdout).items():
        a.check(f"bob: {attempt}", result in ("EACCES", "EPERM"), result)
    held = site.hold("bob", create=False)["held"]
    run = site.cli("restart", "--timeout", "10", env=RELAXED, limit=20)
    a.command(f"root: ollamactl restart --timeout 10 while bob holds {held}", run, codes=(0,), bound=8)
    a.verdict()


def test_member_holding_the_lock_cannot_stop_root_or_the_watchdog(site: Site):
    """alice holds the restart lock forever: root gets a prompt clear timeout, the watchdog still recovers Ollama."""
    a = Attack(site.bed, "member holds the restart lock forever", "alice")
    held = site.hold("alice", create=True)["held"]
    assert "held" in held.values(), held
    run = site.cli("restart", "--timeout", "5", limit=20)
    a.command(f"root: ollamactl restart --timeout 5 (alice holds {held})", run, codes=(0, 7), bound=7)
    site.start_watchdog()
    ident = site.watchdog_identity()
    ok, evidence = site.wedge_and_wait(deadline=60)
    a.check("the watchdog recovers a wedged Ollama", ok, evidence)
    a.check("the watchdog keeps running", site.watchdog_identity() == ident, f"MainPID, NRestarts {ident} -> "
            f"{site.watchdog_identity()}")  # fmt: skip
    a.verdict()


# --------------------------------------------------------------------------- member vs the watchdog


def _forged_history(uid: int, pid: int, reason: str) -> bytes:
    """40 restarts of Ollama in the last 40 s: any budget looks used up."""
    now = time.time()
    entries = [_entry(now - 40 + i, uid=uid, pid=pid, reason=reason) for i in range(40)]
    return json.dumps({"version": 1, "restarts": entries}).encode()


def test_forged_exhausted_budget_does_not_stop_the_watchdog(site: Site):
    """alice forges 40 recent restarts 'by the watchdog'; it must still restart a wedged Ollama."""
    site.start_watchdog()
    ident = site.watchdog_identity()
    uid = int(site.c.run(["id", "-u", "ollamactl"], check=True).stdout)
    a = Attack(site.bed, "state.json forged: 40 restarts in the last 40 s (budget looks used up)", "alice")
    assert site.plant("file", "state.json", data=_forged_history(uid, int(ident[0]), "watch: wedged for 3 probes"))[
        "ok"
    ]
    ok, evidence = site.wedge_and_wait(deadline=30)
    a.check("the watchdog recovers a wedged Ollama", ok, evidence)
    a.check("the watchdog keeps running", site.watchdog_identity() == ident, f"{ident} -> {site.watchdog_identity()}")
    a.verdict()


def test_forged_exhausted_budget_does_not_stop_root(site: Site):
    """alice forges 40 recent restarts 'by root'; SECURITY.md: root's recovery is not affected by the history."""
    a = Attack(site.bed, "state.json forged: 40 restarts in the last 40 s (budget looks used up)", "alice")
    assert site.plant("file", "state.json", data=_forged_history(0, 1, "admin"))["ok"]
    before = site.bed.prop("InvocationID")
    run = site.cli("restart")
    a.command("root: ollamactl restart", run, codes=(0,), bound=30)
    after = site.bed.prop("InvocationID")
    a.check("ollama.service restarted", after != before, f"InvocationID {before[:12]} -> {after[:12]}")
    a.verdict()


@pytest.mark.parametrize("kind", ["an entry with at 'x'", "60000-deep nesting", "symlink to /dev/zero", "FIFO"])
def test_watchdog_survives_a_hostile_state_file(site: Site, kind: str):
    """alice plants a hostile state.json; the watchdog must neither crash nor hang, and still recover Ollama."""
    site.start_watchdog()
    ident = site.watchdog_identity()
    a = Attack(site.bed, f"state.json for the watchdog: {kind}", "alice")
    if kind in HOSTILE_STATES:
        planted = site.plant("file", "state.json", data=HOSTILE_STATES[kind])
    elif kind == "FIFO":
        planted = site.plant("fifo", "state.json")
    else:
        planted = site.plant("symlink", "state.json", "/dev/zero")
    assert planted["ok"], planted
    ok, evidence = site.wedge_and_wait(deadline=30)
    a.check("the watchdog recovers a wedged Ollama", ok, evidence)
    after = site.watchdog_identity()
    a.check("the watchdog keeps running (MainPID, NRestarts)", after == ident, f"{ident} -> {after}")
    a.verdict()


def test_metrics_link_is_not_made_through_a_swapped_directory(site: Site):
    """prometheus owns /var/lib/prometheus: it swaps node-exporter for a link to /etc/ollamactl before the
    watchdog starts.  Root's ExecStartPre (metrics --link) must not put its link there, and the watchdog
    must still start and recover Ollama (only the metrics link is lost)."""
    c = site.c
    parent, textfile = "/var/lib/prometheus", "/var/lib/prometheus/node-exporter"
    a = Attack(site.bed, f"{textfile} swapped for a symlink to /etc/ollamactl", "prometheus")
    c.run(["mv", textfile, f"{textfile}.real"], check=True)
    try:
        c.run(["runuser", "-u", "prometheus", "--", "ln", "-s", "/etc/ollamactl", textfile], check=True)
        owner = c.run(["stat", "-c", "%U", parent], check=True).stdout.strip()
        a.check("the swap is done by the directory's owner", owner == "prometheus", f"{parent} owned by {owner}")
        site.start_watchdog()
        linked = _file_state(site.bed, "/etc/ollamactl/ollamactl.prom")
        a.check("root wrote no link into /etc/ollamactl", linked == "absent", linked)
        said = c.run(["journalctl", "-u", WATCHDOG, "-n", "20", "--no-pager", "-o", "cat"]).stdout
        a.check("metrics --link refused", "without following links" in said, _show(said))
        ok, evidence = site.wedge_and_wait(deadline=30)
        a.check("the watchdog still recovers a wedged Ollama", ok, evidence)
    finally:
        c.run(["rm", "-f", textfile, "/etc/ollamactl/ollamactl.prom"])
        c.run(["mv", f"{textfile}.real", textfile], check=True)
    a.verdict()


def test_metrics_are_not_written_through_a_symlinked_metrics_dir(site: Site):
    """Root runs ``ollamactl watch`` by hand with metrics_dir under /run/ollamactl, where alice (a member) may
    put anything: she makes its parent component a link to a directory of hers.  Root must write nothing
    through the link and say why (one warning naming the fix); the watch itself goes on."""
    c = site.c
    hers, metrics_dir = "/var/tmp/alice-prom", f"{RUN_DIR}/prom/textfile"
    a = Attack(site.bed, f"{RUN_DIR}/prom made a link to {hers} (metrics_dir={metrics_dir})", "alice")
    try:
        c.run(["install", "-d", "-o", "alice", "-g", "alice", "-m", "0755", hers, f"{hers}/textfile"], check=True)
        planted = site.plant("symlink", "prom", hers)
        assert planted["ok"], planted
        env = {"OLLAMACTL_METRICS_DIR": metrics_dir, "OLLAMACTL_WATCH_PERIOD": "0.5"}
        r = c.run(["timeout", "-s", "TERM", "4", "ollamactl", "watch"], env=env, timeout=60)
        said = r.stdout + r.stderr
        written = c.run(["find", hers, "-mindepth", "2"]).stdout.strip()
        a.check("root wrote nothing through the link", written == "", written or f"{hers}/textfile is empty")
        refused = [line for line in said.splitlines() if "metrics not written" in line]
        a.check(
            "watch says why, once, with the fix",
            len(refused) == 1 and "without following links" in refused[0] and "set metrics_dir" in refused[0],
            _show(refused[0] if refused else said),
        )
        a.check("no traceback", "Traceback" not in said, _show(said[-300:]))
    finally:
        c.run(["rm", "-rf", hers])
    a.verdict()


def test_users_cannot_signal_or_notify_the_watchdog(site: Site):
    """alice and bob try to stop, kill or fake sd_notify messages for the watchdog; it must not notice.

    Already defended before the hardening (its own user, NotifyAccess=main); kept as a regression guard.
    """
    site.start_watchdog()
    ident = site.watchdog_identity()
    pid = ident[0]
    notify = (
        "import socket\n"
        "with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as s:\n"
        "    s.sendto(b'STOPPING=1\\nWATCHDOG=trigger\\nSTATUS=pwned\\nMAINPID=1', '/run/systemd/notify')\n"
    )
    attacks = []
    for user in ("alice", "bob"):
        a = Attack(site.bed, "signal or sd_notify the watchdog", user)
        attacks.append(a)
        site.c.run(["python3", "-c", notify], user=user)
        for sig in ("STOP", "KILL"):
            r = site.c.run(["kill", f"-{sig}", pid], user=user)
            a.check(f"kill -{sig} watchdog", r.returncode != 0, _show(r.stderr.strip()) or f"rc={r.returncode}")
    a = Attack(site.bed, "signal or sd_notify the watchdog", "alice, bob")
    attacks.append(a)
    status = site.bed.prop("StatusText", unit=WATCHDOG)
    a.check("watchdog status text", "pwned" not in status, status)
    after = site.watchdog_identity()
    a.check("the watchdog keeps running", after == ident, f"MainPID, NRestarts {ident} -> {after}")
    state = site.bed.prop("ActiveState", unit=WATCHDOG)
    a.check("the watchdog's ActiveState", state == "active", state)
    for a in attacks:
        a.verdict()


# --------------------------------------------------------------------------- a squatted port: a hostile server


@pytest.fixture
def squatter(arena: Site, bed: Bed):
    """ollama.service stopped and bob's hostile server on 127.0.0.1:11434; Ollama restored after."""
    c = bed.c
    c.run(["systemctl", "stop", WATCHDOG], timeout=60)
    c.run(["systemctl", "stop", UNIT], check=True, timeout=60)
    home = c.run(["sh", "-c", "getent passwd bob | cut -d: -f6"], check=True).stdout.strip()
    mode_file, ready = f"{home}/hostile.mode", f"{home}/hostile.ready"
    c.run(["rm", "-f", ready])
    c.sh(
        f"setsid -f python3 {TOOLS}/hostile_server.py --mode-file {mode_file} --ready-file {ready}"
        " </dev/null >/dev/null 2>&1",
        user="bob",
        check=True,
    )
    end = time.monotonic() + 15
    while (r := c.run(["cat", ready])).returncode != 0:
        assert time.monotonic() < end, "bob's hostile server did not start"
        time.sleep(0.05)
    pid = json.loads(r.stdout)["pid"]

    def mode(name: str) -> None:
        c.write_file(mode_file, name + "\n")

    yield mode
    c.run(["kill", "-9", str(pid)])
    c.run(["rm", "-f", mode_file, ready])
    bed.recover()


SERVER_MODES = {
    "escapes": "version string with OSC 0 title, OSC 52 clipboard, CSI 2J",
    "chunked": "chunk size 7fffffffffff, then bytes as fast as read",
    "headers": "endless distinct 8 KiB headers",
    "nested": "100000-deep JSON array as the body",
}


@pytest.mark.parametrize("mode", list(SERVER_MODES))
def test_squatted_port_hostile_server(arena: Site, squatter, mode: str):
    """bob squats 127.0.0.1:11434 while Ollama is down; root's status, probe and doctor must stay sane."""
    site = arena
    squatter(mode)
    a = Attack(site.bed, f"hostile server on :11434: {SERVER_MODES[mode]}", "bob")
    bound_rss = site.baseline_rss + MEM_SLACK
    for args, codes, bound in (
        (("status",), (0, 10), 10),
        (("probe",), (0, 10, 11, 13, 14), 8),  # 14: stopped, which it is
        (("doctor",), (0, 20), 35),
    ):
        for extra in ((), ("--json",)):
            run = site.cli(*args, *extra, limit=45)
            a.command(f"root: ollamactl {' '.join(args + extra)}", run, codes, bound, max_rss=bound_rss)
    if mode == "escapes":  # Ollama stopped and the port squatted: root's restart refuses (exit 14), not fooled
        run = site.cli("restart", "--timeout", "15", limit=30)
        note = f"; 127.0.0.1:11434 is served by {_listener(site.bed)}"  # evidence: who answers there
        a.command("root: ollamactl restart --timeout 15", run, codes=(14,), bound=17, max_rss=bound_rss, note=note)
    a.verdict()


LISTENER = r"""
import pwd
for line in open("/proc/net/tcp").read().splitlines()[1:]:
    f = line.split()
    if f[1] == "0100007F:2CAA" and f[3] == "0A":  # 127.0.0.1:11434, LISTEN
        print(pwd.getpwuid(int(f[7])).pw_name)
"""


def _listener(bed: Bed) -> str:
    """The user owning the socket that listens on 127.0.0.1:11434 (/proc/net/tcp, readable by anyone)."""
    owner = bed.c.run(["python3", "-c", LISTENER], check=True).stdout.split()
    return f"user {', '.join(owner)}" if owner else "nobody"


# --------------------------------------------------------------------------- policy and audit


def _rules(bed: Bed) -> set[str]:
    code = "import json, os; print(json.dumps(os.listdir('/etc/polkit-1/rules.d')))"
    return set(json.loads(bed.c.run(["python3", "-c", code], check=True).stdout))


ALIAS = "attack-alias.service"


@pytest.fixture
def alias(site: Site):
    """attack-alias.service, a symlink to other.service: polkit sees other.service."""
    site.c.run(["ln", "-sf", "/etc/systemd/system/other.service", f"/etc/systemd/system/{ALIAS}"], check=True)
    site.c.run(["systemctl", "daemon-reload"], check=True)
    yield ALIAS
    site.c.run(["rm", "-f", f"/etc/systemd/system/{ALIAS}"])
    site.c.run(["systemctl", "daemon-reload"])


@pytest.mark.parametrize(
    ("case", "args", "primary"),
    [
        # polkitd would silently ignore a rule for "ollamactl\n": the grant would look installed and do nothing
        ("group with a trailing newline", ["--group", "ollamactl\n"], None),
        # polkit sees the primary name: a rule for the alias would not grant what it says
        (f"unit alias {ALIAS} -> other.service", ["--group", "ollamactl", "--unit", ALIAS], "other.service"),
    ],
    ids=["group-newline", "unit-alias"],
)
def test_policy_refuses_bad_names(site: Site, alias: str, case: str, args: list[str], primary: str | None):
    """root installs a grant for a name polkit would see differently; it must be refused, nothing written."""
    a = Attack(site.bed, f"policy install: {case}", "root (typo, pasted input)")
    before = _rules(site.bed)
    run = site.cli("policy", "install", *args)
    new = _rules(site.bed) - before
    for name in new:
        site.c.run(["rm", "-f", f"/etc/polkit-1/rules.d/{name}"])
    a.command("root: ollamactl " + " ".join(["policy", "install", *args]).replace("\n", "\\n"), run, codes=(2,),
              bound=10)  # fmt: skip
    if primary:
        a.check(f"the message names {primary}", primary in run.text, _show(run.first_line()))
    a.check("/etc/polkit-1/rules.d", not new, f"new files: {sorted(new)}" if new else "nothing written")
    a.verdict()


TRUSTED_FIELDS = ("_UID=", "_PID=", "_SYSTEMD_UNIT=")  # journald sets these; a client cannot


def _documented_audit_queries(bed: Bed) -> list[str]:
    """The journalctl commands for our audit trail that the shipped docs and the repo's docs tell admins to run."""
    shipped = bed.c.sh('for f in /usr/share/doc/ollamactl/*.md*; do zcat -f "$f"; done 2>/dev/null || true').stdout
    texts = [shipped] + [(REPO / name).read_text() for name in ("README.md", "SECURITY.md") if (REPO / name).exists()]
    found = []
    for text in texts:
        for chunk in text.split("`"):
            chunk = " ".join(chunk.split())
            if chunk.startswith("journalctl ") and "ollamactl" in chunk and chunk not in found:
                found.append(chunk)
    return found


def test_forged_audit_record(site: Site):
    """bob logs a record claiming root restarted Ollama; the audit queries the docs give must not show it."""
    tag = f"forged-{time.time_ns()}"
    a = Attack(site.bed, "forged audit record: SYSLOG_IDENTIFIER=ollamactl, OLLAMACTL_UID=0, _UID=0", "bob")
    site.c.run(["python3", f"{TOOLS}/forge_journal.py", tag], user="bob", check=True)

    def query(command: str) -> list[dict[str, Any]]:
        """Run a journalctl command line as an admin would (a shell), narrowed to bob's record; -o json wins."""
        r = site.c.sh(f"{command} --no-pager -o json OLLAMACTL_REASON={tag}", timeout=30)
        assert r.returncode in (0, 1), f"{command}: {r.stderr}"  # 1: no entries
        return [json.loads(line) for line in r.stdout.splitlines() if line.startswith("{")]

    end = time.monotonic() + 15
    while not (naive := query("journalctl SYSLOG_IDENTIFIER=ollamactl OLLAMACTL_UID=0")):
        assert time.monotonic() < end, "bob's record never reached the journal: the attack was not performed"
        time.sleep(0.1)
    bob = site.c.run(["id", "-u", "bob"], check=True).stdout.strip()
    trusted = {k: naive[0].get(k) for k in ("_UID", "_PID", "_SYSTEMD_UNIT")}
    a.check("journald's trusted fields", trusted["_UID"] == bob and trusted["_SYSTEMD_UNIT"] != WATCHDOG,
            f"naive query OLLAMACTL_UID=0 shows it; trusted fields say {trusted}")  # fmt: skip
    docs = _documented_audit_queries(site.bed)
    runnable = [q for q in docs if not any(ch in q for ch in "|;&") and " -f" not in q and "--follow" not in q]
    keyed = [q for q in runnable if any(word.startswith(TRUSTED_FIELDS) for word in q.split())]
    if not keyed:
        a.check("the documented audit query", False, f"the docs key no query on {TRUSTED_FIELDS}, only give {docs}")
    for q in keyed:
        shown = query(q)
        a.check(f"documented query `{q}`", not shown, "shows the forged record" if shown else "does not show it")
    a.verdict()

#!/usr/bin/env python3
"""Throwaway Debian containers with real systemd, D-Bus and polkitd.

Why: ollamactl's whole job is "an unprivileged user asks systemd over the system bus to
restart a unit, and polkit says yes or no".  Mocks cannot tell us whether the packaged
polkit rule, sysusers and tmpfiles files really work on systemd 252 / polkitd 122
(bookworm), systemd 257 / polkitd 126 (trixie) and systemd 26x / polkitd 12x (sid), so the
end-to-end tests boot the real thing with systemd-nspawn.

Standard library only; runs under the host's python3 as root.  Layout under CACHE_DIR:

    <suite>-<hash12>/       finished debootstrap trees (read-only lower layers)
    build/                  in-progress builds (renamed into place when complete)
    locks/                  flock files, one per cache key
    run/<name>/             one booted container: upper/, work/, merged/, console.log, state.json

Usage from tests::

    with testbed.boot("bookworm", deb=deb_path) as c:
        c.run(["busctl", ...], user="alice", check=True)

CLI for humans: ``python3 tests/testbed.py build SUITE | build --all | shell SUITE --deb D | gc``.
"""

from __future__ import annotations

import argparse
import atexit
import fcntl
import hashlib
import json
import os
import re
import secrets
import shlex
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from types import TracebackType
from typing import Self

#: Debian 12, 13 and unstable (what Ubuntu 26.04 is built from); tests run on each, in this order.
SUITES = ("bookworm", "trixie", "sid")
CACHE_DIR = Path(os.environ.get("OLLAMACTL_TESTBED_CACHE", "/var/cache/ollamactl-testbed"))

#: Bump whenever the base recipe (packages aside) changes, so stale caches are not reused.
RECIPE_VERSION = "5"

#: debootstrap --include list.  libpam-systemd is needed or polkitd fails to configure.
PACKAGES = (
    "dbus",
    "iproute2",  # the address of host0 on a test network (boot(zone=...))
    "libpam-systemd",
    "openssh-client",  # ollamactl --host (issue 10, part 2)
    "openssh-server",  # not started at boot: start_sshd() starts it where a test needs it
    "polkitd",
    "procps",
    "prometheus-node-exporter",  # metrics (issue 10, part 3); not started at boot, a test starts it
    "python3",
    "python3-dbus-next",
    "python3-loguru",
    "python3-pip",
    "python3-pydantic",
    "systemd",
    "systemd-sysv",
)

#: Packages only some releases have, installed with apt after debootstrap (its resolver cannot pick
#: libggml0's providers).  Debian unstable packages llama.cpp: its llama-server is the real runner
#: for the GGUF models the bed makes (issue 13); bookworm and trixie (and their backports) have none.
SUITE_PACKAGES: dict[str, tuple[str, ...]] = {"sid": ("llama.cpp-tools", "python3-gguf")}
#: Where the bed's GGUF models are made in a root that has llama-server; the stand-in serves them.
GGUF_DIR = "/var/lib/ollama-standin/gguf"
#: The script that makes them (its text is part of the cache key of the roots that run it).
GGUF_MAKER = "tests/standin/make_gguf.py"

#: The Debian build root (tests/debbuild.py): the base plus the packaging toolchain and lintian.
BUILD_SUITE = "bookworm"
BUILD_PACKAGES = (
    "build-essential",
    "debhelper",
    "dh-python",
    "fakeroot",
    "lintian",
    "pybuild-plugin-pyproject",
    "python3-all",
    "python3-setuptools",
)

REPO_ROOT = Path(__file__).resolve().parents[1]

#: Repo file -> (path inside the container, mode).  Owned by other parts of the project.
STANDIN_FILES = {
    "tests/standin/ollama_standin.py": ("/usr/local/bin/ollama", 0o755),
    "tests/standin/ollama.service": ("/etc/systemd/system/ollama.service", 0o644),
    "tests/standin/ollama@.service": ("/etc/systemd/system/ollama@.service", 0o644),
    # freezes a real runner's main thread (stuck-inference on the real llama-server, issue 13)
    "tests/standin/freeze_thread.py": ("/usr/local/lib/ollama-standin/freeze_thread.py", 0o755),
}
#: Instances of ollama@.service (one per GPU), not started at boot: instance -> its EnvironmentFile.
#: Quoted and bare values, as admins write them; the URL is read from the unit (issue 10).
INSTANCE_ENV = {
    "11501": 'OLLAMA_HOST="127.0.0.1:11501"\nCUDA_VISIBLE_DEVICES=0\n',
    "11502": "# second GPU\nOLLAMA_HOST=0.0.0.0:11502\nCUDA_VISIBLE_DEVICES=1\n",
}
POLICY_FILES = {
    "packaging/polkit/50-ollamactl.rules": ("/usr/share/polkit-1/rules.d/50-ollamactl.rules", 0o644),
    "packaging/systemd/ollamactl.sysusers": ("/usr/lib/sysusers.d/ollamactl.conf", 0o644),
    "packaging/systemd/ollamactl.tmpfiles": ("/usr/lib/tmpfiles.d/ollamactl.conf", 0o644),
}

#: Extra units the tests poke at: a harmless running one, one that fails, one that is masked.
EXTRA_UNITS = {
    "other.service": """\
[Unit]
Description=ollamactl testbed: harmless long-running unit

[Service]
ExecStart=/bin/sleep infinity

[Install]
WantedBy=multi-user.target
""",
    "failing.service": """\
[Unit]
Description=ollamactl testbed: unit whose start always fails

[Service]
Type=oneshot
ExecStart=/bin/false
""",
}

#: Unit name prefixes whose enablement links _customise_base removes (not started at boot).
NOT_AT_BOOT = ("ssh.", "ssh@", "sshd", "prometheus-node-exporter")

#: Network zones of the test bed are named ZONE_PREFIX + 8 hex digits (bridge vz-<zone> on the host).
ZONE_PREFIX = "oct"

CONTAINER_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
OLLAMA_URL = "http://127.0.0.1:11434/api/version"

Log = Callable[[str], object]


class TestbedError(RuntimeError):
    """Anything that went wrong building, booting or driving a container."""

    __test__ = False  # not a pytest test class despite the name


class CommandError(TestbedError):
    """A command inside the container failed and check=True was given."""

    def __init__(self, argv: Sequence[str], result: subprocess.CompletedProcess[str], where: str = ""):
        self.argv = list(argv)
        self.result = result
        super().__init__(
            f"command failed{where} (rc={result.returncode}): {shlex.join(self.argv)}\n"
            f"--- stdout ---\n{result.stdout}--- stderr ---\n{result.stderr}"
        )


# --------------------------------------------------------------------------- helpers


def _require_root() -> None:
    if os.geteuid() != 0:
        raise TestbedError("the testbed needs root (debootstrap, mount, systemd-nspawn)")


def _require_tools(*tools: str) -> None:
    missing = [t for t in tools if shutil.which(t) is None]
    if missing:
        raise TestbedError(
            f"missing host tools: {', '.join(missing)} (apt-get install debootstrap systemd-container util-linux)"
        )


def _tail(path: Path, lines: int = 40) -> str:
    try:
        data = path.read_bytes()[-64 * 1024 :].decode("utf-8", "replace")
    except OSError as e:
        return f"<cannot read {path}: {e}>"
    return "\n".join(data.splitlines()[-lines:])


#: The setting that names the Debian mirror for the test roots, honoured before the host's apt sources.
MIRROR_ENV = "OLLAMACTL_TESTBED_MIRROR"


def host_mirror(apt_dir: Path = Path("/etc/apt"), environ: dict[str, str] | None = None) -> str:
    """The Debian mirror for debootstrap: $OLLAMACTL_TESTBED_MIRROR, else the one the host's apt uses.

    Why the host's: CI then hits its nearby mirror or proxy.  With neither there is no guess (a
    hard-coded mirror may be unreachable or not the one wanted): a one-line error names the setting.
    """
    env = os.environ if environ is None else environ
    override = env.get(MIRROR_ENV, "").strip()
    if override:
        if not re.match(r"^(https?|file)://\S+$", override):
            raise TestbedError(f"{MIRROR_ENV}={override!r} is not a mirror URL (e.g. http://deb.debian.org/debian)")
        return override.rstrip("/")
    uris: list[str] = []
    files = [apt_dir / "sources.list"]
    d = apt_dir / "sources.list.d"
    if d.is_dir():
        files += sorted(d.glob("*.list")) + sorted(d.glob("*.sources"))
    for f in files:
        try:
            text = f.read_text(errors="replace")
        except OSError:
            continue
        for line in text.splitlines():
            line = line.split("#", 1)[0].strip()
            if f.suffix == ".sources":
                m = re.match(r"(?i)^URIs:\s*(.+)$", line)
                if m:
                    uris += m.group(1).split()
            else:
                m = re.match(r"^deb\s+(?:\[[^\]]*\]\s+)?(\S+)", line)
                if m:
                    uris.append(m.group(1))
    for uri in uris:
        if re.match(r"^https?://", uri) and re.search(r"/debian/?$", uri):
            return uri.rstrip("/")
    raise TestbedError(
        f"no Debian mirror in {apt_dir}/sources.list{{,.d}}: set {MIRROR_ENV} (e.g. http://deb.debian.org/debian)"
    )


def _cache_key(suite: str, extra: Sequence[str] = ()) -> str:
    """suite-HASH of the package list and recipe; a root with extra packages gets its own key."""
    packages = sorted(set(PACKAGES) | set(extra))
    recipe: dict[str, object] = {"suite": suite, "packages": packages, "recipe": RECIPE_VERSION}
    if not extra and suite in SUITE_PACKAGES:
        recipe["suite_packages"] = sorted(SUITE_PACKAGES[suite])
        recipe["gguf_maker"] = hashlib.sha256((REPO_ROOT / GGUF_MAKER).read_bytes()).hexdigest()
    blob = json.dumps(recipe)
    flavour = "-build" if extra else ""
    return f"{suite}{flavour}-{hashlib.sha256(blob.encode()).hexdigest()[:12]}"


def _mountpoints_under(path: Path) -> list[str]:
    """Mount points at or below path in our mount namespace, deepest first."""
    prefix = str(path.resolve()) if path.exists() else str(path)
    found = []
    with open("/proc/self/mountinfo") as f:
        for line in f:
            mp = line.split()[4].encode().decode("unicode_escape")
            if mp == prefix or mp.startswith(prefix + "/"):
                found.append(mp)
    return sorted(set(found), key=len, reverse=True)


def _unmount_all(path: Path) -> None:
    for mp in _mountpoints_under(path):
        if subprocess.run(["umount", mp], check=False, capture_output=True).returncode != 0:
            subprocess.run(["umount", "-l", mp], check=False, capture_output=True)


def _remove_tree(path: Path) -> None:
    """rm -rf that never crosses into a (stale) mount such as a debootstrap's /proc."""
    if not os.path.lexists(path):
        return
    _unmount_all(path)
    subprocess.run(["rm", "-rf", "--one-file-system", "--", str(path)], check=False, capture_output=True)
    if os.path.lexists(path):
        raise TestbedError(f"could not remove {path}; something is still mounted below it?")


def _chroot(root: Path, argv: Sequence[str], timeout: float = 300) -> subprocess.CompletedProcess[str]:
    env = {"PATH": CONTAINER_PATH, "LANG": "C.UTF-8", "HOME": "/root"}
    r = subprocess.run(
        ["chroot", str(root), *argv], check=False, env=env, text=True, capture_output=True, timeout=timeout
    )
    if r.returncode != 0:
        raise CommandError(argv, r, f" in chroot {root}")
    return r


def isolated(
    root: Path,
    argv: Sequence[str],
    *,
    network: bool = False,
    timeout: float = 600,
    env: dict[str, str] | None = None,
    cwd: str = "/",
) -> subprocess.CompletedProcess[str]:
    """Run argv chrooted into root with its own /proc, /dev, pid and mount namespace (no boot).

    Why not plain chroot: dpkg maintainer scripts and Python want /proc and /dev; the
    private mount namespace makes those mounts vanish with the process, and without
    ``network`` it gets an empty network namespace, so nothing can be downloaded.
    """
    full_env = {"PATH": CONTAINER_PATH, "LANG": "C.UTF-8", "HOME": "/root", "DEBIAN_FRONTEND": "noninteractive"}
    full_env.update(env or {})
    script = (
        'r=$1; shift; mount -t proc proc "$r/proc"; mount --rbind /dev "$r/dev"; '
        'cd "$r"; exec chroot "$r" /bin/sh -c \'cd "$0" && exec "$@"\' "$@"'
    )
    unshare = ["unshare", "--mount", "--propagation", "private", "--pid", "--fork"]
    if not network:
        unshare.append("--net")
    cmd = [*unshare, "/bin/sh", "-ec", script, "sh", str(root), cwd, *argv]
    r = subprocess.run(cmd, check=False, env=full_env, text=True, capture_output=True, timeout=timeout)
    if r.returncode != 0:
        raise CommandError(argv, r, f" in {root}")
    return r


def _tree_path(root: Path, path: str) -> Path:
    """Host path of an absolute in-container path, refusing to follow symlinks out of root."""
    if not path.startswith("/"):
        raise ValueError(f"container path must be absolute: {path!r}")
    target = root / path.lstrip("/")
    parent = target.parent
    parent.mkdir(parents=True, exist_ok=True)
    real_root = root.resolve()
    real_parent = parent.resolve()
    if real_parent != real_root and real_root not in real_parent.parents:
        raise TestbedError(f"{path} resolves outside the container root")
    return target


def _write_tree(root: Path, path: str, content: str | bytes, mode: int = 0o644) -> None:
    target = _tree_path(root, path)
    data = content.encode() if isinstance(content, str) else content
    if target.is_symlink():
        target.unlink()
    tmp = target.with_name(f".{target.name}.testbed-tmp")
    tmp.write_bytes(data)
    os.chmod(tmp, mode)
    os.chown(tmp, 0, 0)
    os.replace(tmp, target)


def _symlink_tree(root: Path, path: str, dest: str) -> None:
    target = _tree_path(root, path)
    if os.path.lexists(target):
        target.unlink()
    os.symlink(dest, target)


# --------------------------------------------------------------------------- base rootfs


def base_rootfs(suite: str, log: Log = print, *, extra: Sequence[str] = ()) -> Path:
    """Return a cached debootstrapped tree for suite, building it once.

    Why cached: debootstrap takes 60-110 s; an overlay over the cached tree boots in seconds.
    The tree is built under build/ and renamed into place only when complete, under an
    flock, so an interrupted or concurrent build is never used.  ``extra`` packages (the
    Debian build root's toolchain) give a separate tree, keyed by suite + package list.
    """
    if suite not in SUITES:
        raise ValueError(f"unknown suite {suite!r}; expected one of {SUITES}")
    packages = sorted(set(PACKAGES) | set(extra))
    key = _cache_key(suite, extra)
    final = CACHE_DIR / key
    if (final / ".testbed-complete").exists():
        return final
    _require_root()
    _require_tools("debootstrap", "chroot")
    mirror = host_mirror()  # before anything is created: a missing mirror is a one-line error
    for sub in ("build", "locks"):
        (CACHE_DIR / sub).mkdir(parents=True, exist_ok=True)
    with open(CACHE_DIR / "locks" / f"{key}.lock", "w") as lock:
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            log(f"testbed: waiting for another process building {key} ...")
            fcntl.flock(lock, fcntl.LOCK_EX)
        if (final / ".testbed-complete").exists():
            return final
        if final.exists():  # half-renamed leftovers cannot happen, but never trust them
            _remove_tree(final)
        tmp = CACHE_DIR / "build" / key
        _remove_tree(tmp)  # we hold the lock: any existing one is from an interrupted build
        tmp.mkdir()
        t0 = time.monotonic()
        log(f"testbed: debootstrap {suite} from {mirror} into {tmp} (once; takes ~1-2 min)")
        build_log = CACHE_DIR / "build" / f"{key}.log"
        argv = [
            "debootstrap",
            "--variant=minbase",
            "--components=main",
            f"--include={','.join(sorted(PACKAGES))}",
            suite,
            str(tmp),
            mirror,
        ]
        keyring = Path("/usr/share/keyrings/debian-archive-keyring.gpg")
        if keyring.exists():
            argv.insert(1, f"--keyring={keyring}")
        try:
            with open(build_log, "w") as out:
                rc = subprocess.run(
                    argv, check=False, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT, timeout=1800
                ).returncode
            if rc != 0:
                raise TestbedError(
                    f"debootstrap {suite} failed (rc={rc}); log {build_log}:\n{_tail(build_log)}\n"
                    f"--- debootstrap.log ---\n{_tail(tmp / 'debootstrap' / 'debootstrap.log')}"
                )
            later = tuple(extra) or SUITE_PACKAGES.get(suite, ())
            if later:
                # debootstrap's resolver cannot pick providers of virtual packages (lintian's
                # perl stack needs perl-openssl-abi-3), so the toolchain comes from apt.
                log(f"testbed: apt-get install {' '.join(sorted(later))} (once)")
                # A mirror snapshot's unstable Release file can be past its Valid-Until (debootstrap
                # does not check it; apt does): the packages are still the signed ones.
                isolated(
                    tmp,
                    ["apt-get", "-o", "Acquire::Check-Valid-Until=false", "update", "-q"],
                    network=True,
                    timeout=600,
                )
                isolated(
                    tmp,
                    ["apt-get", "install", "-y", "-q", "--no-install-recommends", *sorted(later)],
                    network=True,
                    timeout=1200,
                )
            if not extra and suite in SUITE_PACKAGES:
                _make_models(tmp, log)
            _customise_base(tmp)
            (tmp / ".testbed-complete").write_text(
                json.dumps(
                    {
                        "suite": suite,
                        "packages": packages,
                        "recipe": RECIPE_VERSION,
                        "mirror": mirror,
                        "built": time.time(),
                    }
                )
            )
            os.rename(tmp, final)
        except BaseException:
            _remove_tree(tmp)
            raise
        build_log.unlink(missing_ok=True)
        log(f"testbed: built {final} in {time.monotonic() - t0:.0f} s")
        return final


def build_all(log: Log = print) -> list[Path]:
    """Every release's test root and the Debian build root, built side by side (cached ones are reused).

    Why in parallel: on a fresh machine the four debootstraps are mostly downloads and dpkg unpacks,
    about 1-3 min each; one after another they are the first minutes of every CI run.
    """
    jobs: list[tuple[str, Sequence[str]]] = [(s, ()) for s in SUITES] + [(BUILD_SUITE, BUILD_PACKAGES)]
    results: dict[int, Path] = {}
    errors: dict[int, BaseException] = {}

    def one(i: int, suite: str, extra: Sequence[str]) -> None:
        try:
            results[i] = base_rootfs(suite, log=log, extra=extra)
        except Exception as e:  # noqa: BLE001 - re-raised below, with the others, in the caller's thread
            errors[i] = e

    threads = [threading.Thread(target=one, args=(i, s, x), daemon=True) for i, (s, x) in enumerate(jobs)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    if errors:
        names = ", ".join(f"{jobs[i][0]}{'-build' if jobs[i][1] else ''}" for i in sorted(errors))
        raise TestbedError(f"building {names} failed:\n" + "\n".join(str(errors[i]) for i in sorted(errors)))
    return [results[i] for i in range(len(jobs))]


def _make_models(root: Path, log: Log) -> None:
    """The GGUF models the real llama-server runs, made once per cached root (no weights downloaded)."""
    t0 = time.monotonic()
    _write_tree(root, "/usr/local/lib/ollama-standin/make_gguf.py", (REPO_ROOT / GGUF_MAKER).read_bytes(), 0o755)
    isolated(root, ["python3", "/usr/local/lib/ollama-standin/make_gguf.py", GGUF_DIR], timeout=900)
    log(f"testbed: made the GGUF models in {GGUF_DIR} in {time.monotonic() - t0:.0f} s")


def has_real_runner(suite: str) -> bool:
    """Does this release's root carry llama-server and the bed's GGUF models (issue 13)?"""
    return suite in SUITE_PACKAGES


def _customise_base(root: Path) -> None:
    """Things every container wants, done once per cached tree (bump RECIPE_VERSION on change)."""
    # Each boot should get its own transient machine id, not share one baked into the cache.
    (root / "etc" / "machine-id").write_text("")
    (root / "var" / "lib" / "dbus" / "machine-id").unlink(missing_ok=True)
    # debootstrap copies the host's /etc/hostname; without one the container keeps its machine name.
    (root / "etc" / "hostname").unlink(missing_ok=True)
    # Timers that would go off mid-test and fail without network.
    for unit in ("apt-daily.timer", "apt-daily-upgrade.timer", "dpkg-db-backup.timer", "fstrim.timer"):
        _symlink_tree(root, f"/etc/systemd/system/{unit}", "/dev/null")
    # Services the packages enable that most tests don't want (boots stay fast and quiet); the tests
    # that need one start it (start_sshd(); the metrics test starts prometheus-node-exporter).
    # Disabled, not masked: their wants links go, so `systemctl start` still works.
    for wants in (root / "etc" / "systemd" / "system").glob("*.wants"):
        for link in wants.iterdir():
            if link.is_symlink() and link.name.startswith(NOT_AT_BOOT):
                link.unlink()
    # Host keys are made per container at start_sshd(), not shared by every container from this tree.
    for key in (root / "etc" / "ssh").glob("ssh_host_*"):
        key.unlink()
    # The real Ollama installer's service user (scripts/install.sh): useradd -r -s /bin/false -U -m -d /usr/share/ollama
    _chroot(root, ["useradd", "-r", "-s", "/bin/false", "-U", "-m", "-d", "/usr/share/ollama", "ollama"])
    # Fail the build now, not in every test, if the runtime deps are broken.
    _chroot(root, ["python3", "-c", "import dbus_next, pydantic, loguru"])
    shutil.rmtree(root / "var" / "cache" / "apt" / "archives", ignore_errors=True)
    (root / "var" / "cache" / "apt" / "archives" / "partial").mkdir(parents=True, exist_ok=True)
    shutil.rmtree(root / "var" / "lib" / "apt" / "lists", ignore_errors=True)
    (root / "var" / "lib" / "apt" / "lists" / "partial").mkdir(parents=True, exist_ok=True)


# --------------------------------------------------------------------------- containers

_LIVE: set[Container] = set()
_LIVE_LOCK = threading.Lock()
_ATEXIT_REGISTERED = False


def _stop_all_live() -> None:
    with _LIVE_LOCK:
        live = list(_LIVE)
    for c in live:
        try:
            c.stop()
        except Exception as e:  # noqa: BLE001 - best effort at interpreter exit
            print(f"testbed: failed to stop {c.name}: {e}", file=sys.stderr)


def _register_live(c: Container) -> None:
    global _ATEXIT_REGISTERED
    with _LIVE_LOCK:
        _LIVE.add(c)
        if not _ATEXIT_REGISTERED:
            atexit.register(_stop_all_live)
            _ATEXIT_REGISTERED = True


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _children(pid: int) -> list[tuple[int, str]]:
    """(pid, comm) of pid's direct children."""
    out = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            stat = Path(f"/proc/{entry}/stat").read_text()
        except OSError:
            continue
        rparen = stat.rfind(")")
        fields = stat[rparen + 2 :].split()
        if len(fields) > 1 and int(fields[1]) == pid:
            out.append((int(entry), stat[stat.find("(") + 1 : rparen]))
    return out


def _cmdline(pid: int) -> list[str]:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace").split("\0")
    except OSError:
        return []


def _kill_nspawn(nspawn_pid: int, wait: Callable[[float], bool], grace: float = 30) -> None:
    """Orderly shutdown (SIGTERM makes nspawn halt the container), then SIGKILL the payload."""
    try:
        os.kill(nspawn_pid, signal.SIGTERM)
    except ProcessLookupError:
        return
    if wait(grace):
        return
    # Killing nspawn would orphan the container; killing its PID 1 kills the whole pid ns.
    for pid, _ in _children(nspawn_pid):
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    if wait(10):
        return
    try:
        os.kill(nspawn_pid, signal.SIGKILL)
    except ProcessLookupError:
        return
    wait(10)


def _cgroup_dirs(name: str) -> list[Path]:
    """Per-container cgroups we put nspawn in, so parallel containers don't share one."""
    base = Path("/sys/fs/cgroup")
    dirs = []
    if (base / "cgroup.controllers").exists():  # pure v2 host
        dirs.append(base / "ollamactl-testbed" / name)
    else:
        for h in ("unified", "systemd"):
            if (base / h).is_dir() and os.path.ismount(base / h):
                dirs.append(base / h / "ollamactl-testbed" / name)
    return dirs


def _remove_cgroups(name: str) -> None:
    for d in _cgroup_dirs(name):
        # Leaf first: nspawn creates payload/supervisor sub-cgroups; the container its own tree.
        if d.is_dir():
            for sub in sorted((p for p in d.rglob("*") if p.is_dir()), key=lambda p: len(p.parts), reverse=True):
                try:
                    sub.rmdir()
                except OSError:
                    pass
            try:
                d.rmdir()
            except OSError:
                pass


def _run_killing_group(
    cmd: list[str], env: dict[str, str], input: str | bytes | None, timeout: float, argv: Sequence[str]
) -> subprocess.CompletedProcess:
    """subprocess.run whose timeout kills the whole process group.

    Why: nsenter (entering a pid namespace) and runuser fork; subprocess.run would kill only
    nsenter and leave the command running inside the container.  Text mode unless input is bytes.
    """
    text = not isinstance(input, bytes)
    with subprocess.Popen(
        cmd,
        env=env,
        stdin=subprocess.PIPE if input is not None else subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=text,
        start_new_session=True,
    ) as p:
        try:
            out, err = p.communicate(input, timeout=timeout)
        except BaseException as e:
            try:
                os.killpg(p.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            try:  # something that left the group (setsid) may still hold the pipes
                out, err = p.communicate(timeout=5)
            except subprocess.TimeoutExpired:
                out, err = ("", "") if text else (b"", b"")
            if isinstance(e, subprocess.TimeoutExpired):
                raise subprocess.TimeoutExpired(list(argv), timeout, out, err) from None
            raise
    return subprocess.CompletedProcess(list(argv), p.returncode, out, err)


class Container:
    """A booted container.  Drive it with run()/sh()/write_file(); stop() (or `with`) ends it."""

    suite: str
    name: str
    root: Path
    leader_pid: int

    def __init__(self, suite: str, name: str, run_dir: Path, log: Log, zone: str | None = None) -> None:
        self.suite = suite
        self.name = name
        self.zone = zone
        self.address: str | None = None  # on the zone's network, once _join_zone gave it one
        self.run_dir = run_dir
        self.root = run_dir / "merged"
        self.log_path = run_dir / "console.log"
        self.leader_pid = 0
        self._log = log
        self._nspawn: subprocess.Popen[bytes] | None = None
        self._mounted = False
        self._stopped = False
        self._stop_lock = threading.Lock()

    def __repr__(self) -> str:
        return f"<Container {self.name} suite={self.suite} leader={self.leader_pid}>"

    # -- driving

    def _env(self, user: str | None, extra: dict[str, str] | None) -> dict[str, str]:
        name = user or "root"
        env = {"PATH": CONTAINER_PATH, "LANG": "C.UTF-8", "HOME": self._home(name), "USER": name, "LOGNAME": name}
        env.update(extra or {})
        return env

    def _home(self, user: str) -> str:
        try:
            for line in (self.root / "etc" / "passwd").read_text().splitlines():
                parts = line.split(":")
                if len(parts) >= 6 and parts[0] == user:
                    return parts[5]
        except OSError:
            pass
        return "/root" if user == "root" else "/"

    def _enter(self) -> list[str]:
        if self._stopped or not self.leader_pid:
            raise TestbedError(f"container {self.name} is not running")
        return ["nsenter", "-t", str(self.leader_pid), "-a"]

    def run(
        self,
        argv: list[str],
        *,
        user: str | None = None,
        env: dict[str, str] | None = None,
        input: str | None = None,
        timeout: float = 120,
        check: bool = False,
    ) -> subprocess.CompletedProcess[str]:
        """Run argv inside the container as root, or as user via runuser, with a clean env."""
        cmd = self._enter()
        if user is not None and user != "root":
            cmd += ["runuser", "-u", user, "--"]
        cmd += list(argv)
        r = _run_killing_group(cmd, self._env(user, env), input, timeout, argv)
        if check and r.returncode != 0:
            raise CommandError(argv, r, f" in {self.name}" + (f" as {user}" if user else ""))
        return r

    def sh(
        self,
        script: str,
        *,
        user: str | None = None,
        env: dict[str, str] | None = None,
        input: str | None = None,
        timeout: float = 120,
        check: bool = False,
    ) -> subprocess.CompletedProcess[str]:
        """Run a /bin/sh -e script inside the container (same keywords as run)."""
        return self.run(["/bin/sh", "-ec", script], user=user, env=env, input=input, timeout=timeout, check=check)

    def write_file(self, path: str, content: str | bytes, mode: int = 0o644) -> None:
        """Atomically write a root-owned file inside the running container (sees its /run, /tmp)."""
        data = content.encode() if isinstance(content, str) else content
        script = (
            'd=$(dirname "$1"); mkdir -p "$d"; t=$(mktemp "$d/.testbed.XXXXXX"); '
            'cat > "$t"; chmod "$2" "$t"; mv -f "$t" "$1"'
        )
        argv = ["/bin/sh", "-ec", script, "sh", path, f"{mode:o}"]
        r = _run_killing_group([*self._enter(), *argv], self._env(None, None), data, 60, argv)
        if r.returncode != 0:
            raise TestbedError(f"write_file({path}) in {self.name} failed: {r.stderr.decode(errors='replace')}")

    def is_running(self) -> bool:
        """True while systemd-nspawn (and so the container) is alive."""
        return not self._stopped and self._nspawn is not None and self._nspawn.poll() is None

    def console_tail(self, lines: int = 60) -> str:
        """Last lines of the container's console (systemd's boot messages), for diagnostics."""
        return _tail(self.log_path, lines)

    # -- lifecycle

    def _wait_nspawn(self, timeout: float) -> bool:
        assert self._nspawn is not None
        try:
            self._nspawn.wait(timeout=timeout)
            return True
        except subprocess.TimeoutExpired:
            return False

    def stop(self) -> None:
        """Power the container off, unmount its overlay and delete its run dir.  Idempotent."""
        with self._stop_lock:
            if self._stopped:
                return
            self._stopped = True
        try:
            if self._nspawn is not None and self._nspawn.poll() is None:
                powered_off = False
                if self.leader_pid:
                    try:  # SIGRTMIN+4 = systemd's "poweroff"
                        os.kill(self.leader_pid, signal.SIGRTMIN + 4)
                    except ProcessLookupError:
                        pass
                    powered_off = self._wait_nspawn(20)
                    if not powered_off:
                        self._log(f"testbed: {self.name} did not power off in 20 s; killing it")
                if not powered_off:
                    _kill_nspawn(self._nspawn.pid, self._wait_nspawn, grace=5)
            _unmount_all(self.run_dir)
            _remove_tree(self.run_dir)
            _remove_cgroups(self.name)
        finally:
            with _LIVE_LOCK:
                _LIVE.discard(self)

    def __enter__(self) -> Self:
        return self

    def __exit__(self, et: type[BaseException] | None, ev: BaseException | None, tb: TracebackType | None) -> None:
        self.stop()

    # -- boot steps (called by boot())

    def _mount(self, base: Path) -> None:
        for d in ("upper", "work", "merged"):
            (self.run_dir / d).mkdir()
        opts = f"lowerdir={base},upperdir={self.run_dir / 'upper'},workdir={self.run_dir / 'work'}"
        r = subprocess.run(
            ["mount", "-t", "overlay", "overlay", "-o", opts, str(self.root)],
            check=False,
            capture_output=True,
            text=True,
        )
        if r.returncode != 0:
            raise TestbedError(f"mounting overlay for {self.name} failed: {r.stderr.strip()}")
        self._mounted = True

    def _provision(self, package: Path | None) -> None:
        def repo_file(rel: str) -> bytes:
            p = REPO_ROOT / rel
            if not p.is_file():
                raise TestbedError(f"testbed needs {p} (written by another part of the project)")
            return p.read_bytes()

        files = dict(STANDIN_FILES)
        if package is not None and package.suffix == ".whl":
            files.update(POLICY_FILES)  # a .deb brings its own
        for rel, (dest, mode) in files.items():
            _write_tree(self.root, dest, repo_file(rel), mode)
        if package is not None:
            _write_tree(self.root, f"/root/{package.name}", package.read_bytes(), 0o644)
        for unit, text in EXTRA_UNITS.items():
            _write_tree(self.root, f"/etc/systemd/system/{unit}", text)
        for instance, text in INSTANCE_ENV.items():
            _write_tree(self.root, f"/etc/ollama/{instance}.env", text)
        _symlink_tree(self.root, "/etc/systemd/system/masked.service", "/dev/null")
        for unit in ("ollama.service", "other.service"):
            _symlink_tree(self.root, f"/etc/systemd/system/multi-user.target.wants/{unit}", f"../{unit}")

    def _start(self, boot_timeout: float) -> None:
        env = dict(os.environ)
        # On a cgroup-v1/hybrid host nspawn 252 gives the container a hybrid layout unless told
        # otherwise.  trixie's systemd 257 then boots "tainted: cgroupsv1" and hangs >20 s at
        # poweroff; with a unified layout both suites boot and power off cleanly.
        env["SYSTEMD_NSPAWN_UNIFIED_HIERARCHY"] = "1"
        argv = [
            "systemd-nspawn", "-q", "-D", str(self.root), "-b",
            "--register=no", "--keep-unit",
            f"--network-zone={self.zone}" if self.zone else "--private-network",
            f"--machine={self.name}", "--console=read-only", "--setenv=SYSTEMD_COLORS=0",
        ]  # fmt: skip
        # Own cgroup per container: nspawn --keep-unit uses (and carves payload/ out of) the
        # caller's cgroup, so two containers started from one process would collide.  A tiny
        # sh moves itself there, then execs nspawn (no preexec_fn: unsafe with threads).
        procs = []
        for d in _cgroup_dirs(self.name):
            d.mkdir(parents=True, exist_ok=True)
            procs.append(str(d / "cgroup.procs"))
        env["TESTBED_CGROUP_PROCS"] = " ".join(procs)
        script = 'for f in $TESTBED_CGROUP_PROCS; do echo $$ > "$f"; done; unset TESTBED_CGROUP_PROCS; exec "$@"'
        wrapper = ["/bin/sh", "-ec", script, "sh"]
        if threading.current_thread() is threading.main_thread() and shutil.which("setpriv"):
            # If the test process is SIGKILLed, nspawn gets SIGTERM and halts the container.
            # (Only from the main thread: PDEATHSIG fires when the creating *thread* exits.)
            wrapper += ["setpriv", "--pdeathsig", "TERM", "--"]
        with open(self.log_path, "wb") as logf:
            self._nspawn = subprocess.Popen(
                [*wrapper, *argv], env=env, stdin=subprocess.DEVNULL, stdout=logf, stderr=subprocess.STDOUT,
                start_new_session=True,
            )  # fmt: skip
        self._write_state()
        deadline = time.monotonic() + boot_timeout
        while True:
            if self._nspawn.poll() is not None:
                raise self._boot_error(f"systemd-nspawn exited with rc={self._nspawn.returncode}")
            leaders = [pid for pid, comm in _children(self._nspawn.pid) if comm == "systemd"]
            if leaders:
                self.leader_pid = leaders[0]
                break
            if time.monotonic() > deadline:
                raise self._boot_error("container's systemd did not appear")
            time.sleep(0.05)
        self._write_state()
        state = ""
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                raise self._boot_error(f"boot did not finish in {boot_timeout:.0f} s (state {state!r})")
            try:
                r = self.run(["systemctl", "is-system-running", "--wait"], timeout=left)
            except subprocess.TimeoutExpired:
                continue
            state = r.stdout.strip()
            if state in ("running", "degraded"):
                break
            if state in ("maintenance", "stopping"):
                raise self._boot_error(f"system state {state!r}")
            if self._nspawn.poll() is not None:
                raise self._boot_error(f"systemd-nspawn exited with rc={self._nspawn.returncode}")
            time.sleep(0.1)  # "offline" etc.: PID 1 not listening yet
        if state == "degraded":
            failed = self.run(["systemctl", "--failed", "--no-legend", "--plain"]).stdout.strip()
            self._log(f"testbed: {self.name} booted degraded; failed units:\n{failed}")

    def _write_state(self) -> None:
        state = {
            "name": self.name,
            "suite": self.suite,
            "owner_pid": os.getpid(),
            "nspawn_pid": self._nspawn.pid if self._nspawn else 0,
            "leader_pid": self.leader_pid,
        }
        (self.run_dir / "state.json").write_text(json.dumps(state))

    def _boot_error(self, what: str) -> TestbedError:
        return TestbedError(
            f"booting {self.suite} container {self.name} failed: {what}\n"
            f"--- console ({self.log_path}) ---\n{self.console_tail()}"
        )

    def _join_zone(self, address: str, timeout: float) -> None:
        """Give host0 (our end of the zone's bridge) a static address: ADDR/PREFIX, e.g. 10.0.0.2/24.

        nspawn creates the bridge vz-ZONE down and leaves it to the host's systemd-networkd
        (not running here, nor needed): it is set up here, with no address of its own, so
        the host takes no part in the zone's traffic.
        """
        bridge = f"vz-{self.zone}"
        r = subprocess.run(["ip", "link", "set", bridge, "up"], check=False, capture_output=True, text=True)
        if r.returncode != 0:
            raise TestbedError(f"cannot set {bridge} up: {r.stderr.strip()}")
        self.sh(f"ip link set host0 up && ip addr add {shlex.quote(address)} dev host0", timeout=timeout, check=True)
        self.address = address.split("/")[0]

    def start_sshd(self, timeout: float = 60) -> None:
        """Start sshd (not started at boot: see NOT_AT_BOOT), with host keys made now for this container."""
        self.run(["ssh-keygen", "-A"], timeout=timeout, check=True)
        self.run(["systemctl", "start", "ssh.service"], timeout=timeout, check=True)

    def install_deb(self, path: str, timeout: float = 300) -> subprocess.CompletedProcess[str]:
        """``apt-get install`` a .deb already inside the container, as an admin would.

        No network (--private-network): every dependency is in the base tree, so apt
        must not need to download anything, and the run fails if it tries.
        """
        return self.run(
            ["apt-get", "install", "-y", "-q", "--no-install-recommends", "-o", "Dpkg::Use-Pty=0", path],
            env={"DEBIAN_FRONTEND": "noninteractive"}, timeout=timeout, check=True,
        )  # fmt: skip

    def _setup(self, package: Path | None, deadline: float) -> None:
        def left() -> float:
            return max(1.0, deadline - time.monotonic())

        if package is not None and package.suffix == ".deb":
            self.install_deb(f"/root/{package.name}", timeout=left())
        elif package is not None:
            self.run(
                ["python3", "-m", "pip", "install", "--no-deps", "--no-index", "--break-system-packages",
                 "--root-user-action=ignore", "--disable-pip-version-check", "--no-cache-dir",
                 f"/root/{package.name}"],
                timeout=left(), check=True,
            )  # fmt: skip
            self.run(["systemd-sysusers"], timeout=left(), check=True)
            self.run(["systemd-tmpfiles", "--create", "/usr/lib/tmpfiles.d/ollamactl.conf"], timeout=left(), check=True)
        groups = "-G ollamactl " if package is not None else ""
        self.sh(
            f"id alice >/dev/null 2>&1 || useradd -m -s /bin/sh {groups}alice\n"
            "id bob >/dev/null 2>&1 || useradd -m -s /bin/sh bob\n",
            timeout=left(), check=True,
        )  # fmt: skip
        # Restart=always may still be backing off if the service raced the boot; make it so.
        # polkit.service is D-Bus activated: start it now so the first test call is not slower.
        self.run(["systemctl", "start", "ollama.service", "polkit.service"], timeout=left(), check=True)
        probe = (
            "import sys, time, urllib.request\n"
            f"end = time.monotonic() + {max(1.0, deadline - time.monotonic() - 2):.1f}\n"
            "while True:\n"
            "    try:\n"
            f"        urllib.request.urlopen({OLLAMA_URL!r}, timeout=2).read()\n"
            "        sys.exit(0)\n"
            "    except Exception as e:\n"
            "        if time.monotonic() > end:\n"
            "            sys.exit(f'{e}')\n"
            "        time.sleep(0.1)\n"
        )
        r = self.run(["python3", "-c", probe], timeout=left() + 5)
        if r.returncode != 0:
            status = self.run(["systemctl", "status", "--no-pager", "-l", "ollama.service"]).stdout
            journal = self.run(["journalctl", "-b", "--no-pager", "-n", "30", "-u", "ollama.service"]).stdout
            raise TestbedError(f"{OLLAMA_URL} never answered in {self.name}: {r.stderr.strip()}\n{status}\n{journal}")


def boot(
    suite: str,
    *,
    deb: Path | None = None,
    wheel: Path | None = None,
    name: str | None = None,
    log: Log = print,
    boot_timeout: float = 60,
    zone: str | None = None,
    address: str | None = None,
) -> Container:
    """Boot a fresh container (overlay over the cached base) with ollamactl installed.

    Why: each test gets clean systemd/polkit state in a few seconds.  ollamactl comes
    from ``deb`` (apt-get install, as an admin does), or from ``wheel`` (pip plus the
    policy files copied into place), or neither (a bare box, for install tests).  The
    container has users alice (in group ollamactl, when installed) and bob (not), the
    stand-in Ollama answering on 127.0.0.1:11434 in its own network namespace, and
    other/failing/masked.service.

    Its network is private (loopback only), or with ``zone`` (new_zone()) the zone's: a bridge
    vz-ZONE on this host that systemd-nspawn creates with the zone's first container and removes
    with its last, where the container's host0 gets ``address`` (ADDR/PREFIX).  Nothing routes
    from the zone anywhere else: containers of one zone reach each other, and nothing more.
    """
    _require_root()
    _require_tools("systemd-nspawn", "nsenter", "mount", "umount")
    if deb is not None and wheel is not None:
        raise ValueError("give deb or wheel, not both")
    package = Path(deb or wheel).resolve() if (deb or wheel) else None
    if package is not None and (not package.is_file() or package.suffix != (".deb" if deb else ".whl")):
        raise TestbedError(f"not a {'.deb' if deb else 'wheel'}: {package}")
    base = base_rootfs(suite, log=log)
    name = name or f"ollamactl-{suite}-{secrets.token_hex(3)}"
    if not re.fullmatch(r"[a-zA-Z0-9][a-zA-Z0-9-]{0,62}", name):
        raise ValueError(f"bad container name {name!r}")
    if zone is not None and not re.fullmatch(ZONE_PREFIX + r"[0-9a-f]{8}", zone):
        raise ValueError(f"bad zone {zone!r}: make one with new_zone()")
    if (zone is None) != (address is None):
        raise ValueError("give zone and address together")
    run_root = CACHE_DIR / "run"
    run_root.mkdir(parents=True, exist_ok=True)
    run_dir = run_root / name
    try:
        run_dir.mkdir()
    except FileExistsError:
        raise TestbedError(f"{run_dir} exists: a container named {name} is running (or run `testbed.py gc`)") from None
    c = Container(suite, name, run_dir, log, zone=zone)
    _register_live(c)
    t0 = time.monotonic()
    try:
        c._write_state()
        c._mount(base)
        c._provision(package)
        c._start(boot_timeout)
        if zone is not None and address is not None:
            c._join_zone(address, boot_timeout)
        t_booted = time.monotonic()
        c._setup(package, time.monotonic() + max(30.0, boot_timeout))
    except BaseException:
        c.stop()
        raise
    log(f"testbed: {name} ({suite}) booted in {t_booted - t0:.1f} s, ready in {time.monotonic() - t0:.1f} s")
    return c


def new_zone() -> str:
    """A fresh network zone name for boot(zone=...): its host bridge is vz-<name> (at most 15 characters)."""
    return f"{ZONE_PREFIX}{secrets.token_hex(4)}"


def _leftover_bridges() -> list[str]:
    """Zone bridges of ours (vz-oct........) with no container attached any more."""
    r = subprocess.run(["ip", "-o", "link", "show", "type", "bridge"], check=False, capture_output=True, text=True)
    names = re.findall(r"^\d+: (vz-" + ZONE_PREFIX + r"[0-9a-f]{8})[:@]", r.stdout, re.MULTILINE)
    empty = []
    for name in names:
        argv = ["ip", "-o", "link", "show", "master", name]
        ports = subprocess.run(argv, check=False, capture_output=True, text=True)
        if ports.returncode == 0 and not ports.stdout.strip():
            empty.append(name)
    return empty


# --------------------------------------------------------------------------- gc


def gc(all_: bool = False, log: Log = print) -> None:
    """Stop containers and unmount overlays left by killed runs (owner process gone).

    With all_=True also stops containers whose owner is still alive.
    """
    _require_root()
    run_root = CACHE_DIR / "run"
    if run_root.is_dir():
        for run_dir in sorted(run_root.iterdir()):
            try:
                state = json.loads((run_dir / "state.json").read_text())
            except (OSError, ValueError):
                state = {}
            owner = int(state.get("owner_pid", 0))
            if owner and owner != os.getpid() and _pid_alive(owner) and not all_:
                log(f"gc: {run_dir.name}: in use by pid {owner}, skipped (use --all)")
                continue
            nspawn_pid = int(state.get("nspawn_pid", 0))
            if nspawn_pid and _pid_alive(nspawn_pid) and str(run_dir / "merged") in _cmdline(nspawn_pid):
                log(f"gc: {run_dir.name}: stopping nspawn pid {nspawn_pid}")

                def wait(t: float, pid: int = nspawn_pid) -> bool:
                    end = time.monotonic() + t
                    while time.monotonic() < end:
                        if not _pid_alive(pid) or _is_zombie(pid):
                            return True
                        time.sleep(0.1)
                    return False

                _kill_nspawn(nspawn_pid, wait)
            log(f"gc: {run_dir.name}: unmounting and removing")
            _remove_tree(run_dir)
            _remove_cgroups(run_dir.name)
    # Interrupted base builds whose lock is free.
    build = CACHE_DIR / "build"
    if build.is_dir():
        for tmp in build.iterdir():
            if not tmp.is_dir():
                continue
            lockfile = CACHE_DIR / "locks" / f"{tmp.name}.lock"
            with open(lockfile, "w") as lock:
                try:
                    fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
                except BlockingIOError:
                    continue
                log(f"gc: removing interrupted build {tmp}")
                _remove_tree(tmp)
    # Zone bridges nspawn did not get to remove (killed runs).
    if shutil.which("ip"):
        for bridge in _leftover_bridges():
            log(f"gc: removing bridge {bridge}")
            subprocess.run(["ip", "link", "delete", bridge], check=False, capture_output=True)
    # Empty per-container cgroups of containers that no longer exist.
    for parent in {d.parent for d in _cgroup_dirs("x")}:
        if parent.is_dir():
            for d in parent.iterdir():
                if d.is_dir() and not (run_root / d.name).exists():
                    _remove_cgroups(d.name)
    current = {_cache_key(s) for s in SUITES} | {_cache_key(BUILD_SUITE, BUILD_PACKAGES)}
    for d in CACHE_DIR.glob("*-*"):
        if d.is_dir() and d.name not in current and re.fullmatch(r"[a-z]+(-build)?-[0-9a-f]{12}", d.name):
            log(f"gc: note: {d} is an outdated base tree (delete it by hand if unused)")
    # Lock files of keys that have neither a tree nor a build any more.
    locks = CACHE_DIR / "locks"
    if locks.is_dir():
        for lf in locks.glob("*.lock"):
            key = lf.name.removesuffix(".lock")
            if key not in current and not (CACHE_DIR / key).exists() and not (build / key).exists():
                lf.unlink(missing_ok=True)


def _is_zombie(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return True
    return stat[stat.rfind(")") + 2 :].startswith("Z")


# --------------------------------------------------------------------------- CLI


def main(argv: list[str] | None = None) -> int:
    """Small CLI for humans: build a base, get a shell-able container, or clean up."""
    p = argparse.ArgumentParser(prog="testbed.py", description=__doc__.splitlines()[0])
    sub = p.add_subparsers(dest="cmd", required=True)
    b = sub.add_parser("build", help="debootstrap (or reuse) the cached base tree")
    b.add_argument("suite", choices=SUITES, nargs="?")
    b.add_argument("--toolchain", action="store_true", help="the Debian build root (base + packaging tools)")
    b.add_argument("--all", action="store_true", help="every release's root and the build root, in parallel")
    s = sub.add_parser("shell", help="boot a container and wait for Ctrl-C")
    s.add_argument("suite", choices=SUITES)
    what = s.add_mutually_exclusive_group()
    what.add_argument("--deb", type=Path, help="install this .deb with apt (make deb builds one)")
    what.add_argument("--wheel", type=Path, help="install this wheel with pip plus the policy files")
    s.add_argument("--name")
    g = sub.add_parser("gc", help="stop leftover containers, unmount stale overlays")
    g.add_argument("--all", action="store_true", help="also stop containers of live processes")
    a = p.parse_args(argv)
    try:
        if a.cmd == "build" and a.all:
            t0 = time.monotonic()
            roots = build_all()
            print("\n".join(map(str, roots)) + f"\n({len(roots)} roots ready in {time.monotonic() - t0:.0f} s)")
        elif a.cmd == "build":
            if a.suite is None:
                p.error("build: give a SUITE or --all")
            print(base_rootfs(a.suite, extra=BUILD_PACKAGES if a.toolchain else ()))
        elif a.cmd == "gc":
            gc(all_=a.all)
        else:
            signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
            with boot(a.suite, deb=a.deb, wheel=a.wheel, name=a.name) as c:
                print(f"\n{c.name} is up (leader pid {c.leader_pid}, root {c.root}). Enter it with:\n")
                print(f"  nsenter -t {c.leader_pid} -a /bin/bash -l")
                print(f"  nsenter -t {c.leader_pid} -a runuser -l alice")
                print(f"\nconsole log: {c.log_path}\nCtrl-C stops and discards it.")
                try:
                    while c.is_running():
                        time.sleep(1)
                    print("container exited")
                except KeyboardInterrupt:
                    print("\nstopping ...")
    except TestbedError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())

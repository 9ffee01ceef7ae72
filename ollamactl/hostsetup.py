"""``ollamactl setup``: what the Debian package puts in place, for installs from the wheel.

On Fedora, Arch, RHEL (or Debian without the .deb) ollamactl comes from pip or
pipx, and this one root command does the rest, from the same files the .deb
ships (packaging/systemd, in the wheel as the package data ollamactl/_data/systemd;
the polkit rule is rendered by ``policy``): the group and the watchdog's user
(systemd-sysusers), the runtime directory (systemd-tmpfiles), the grant, the
TimeoutStopSec drop-in for Ollama's unit and the watchdog unit, left disabled.
Then systemd reloads its units, which never restarts anything.

Idempotent: a second run changes nothing.  It only ever overwrites or removes
a file that carries its own marker, so an admin's file of the same name is
left alone (an error says so).  ``--undo`` removes what it wrote; the group
and the user stay, as Debian does for system accounts.
"""

from __future__ import annotations

import asyncio
import errno
import os
import shutil
import stat
import struct
import subprocess
import sys
from dataclasses import asdict, dataclass
from importlib import resources
from pathlib import Path

from ollamactl.errors import EXIT_USAGE, OllamactlError, PermissionDenied, UsageError
from ollamactl.text import clean

GROUP = "ollamactl"
WATCHDOG = "ollamactl-watchdog.service"
MARKER = "# Written by `ollamactl setup`; `ollamactl setup --undo` removes it."
DPKG_LIST = Path("/var/lib/dpkg/info/ollamactl.list")
TOOL_TIMEOUT = 60.0  # systemd-sysusers / systemd-tmpfiles: seconds
RELOAD_TIMEOUT = 60.0  # systemd's Reload re-reads every unit file: seconds
#: ProtectHome=yes and PrivateTmp=yes hide these from the watchdog, and the user ollamactl cannot read homes.
_PRIVATE = ("/home/", "/root/", "/tmp/", "/var/tmp/", "/run/user/")


class SetupError(OllamactlError):
    """setup could not put a file in place, or must not (an admin's file, the Debian package).

    Exit 2, like the policy writer: what was done so far stays (each step is idempotent; run again).
    """

    exit_code = EXIT_USAGE
    kind = "setup"


@dataclass(frozen=True)
class Step:
    """One thing setup did: ``action`` is created, updated, unchanged, removed, absent or ran."""

    action: str
    path: str
    what: str

    def to_dict(self) -> dict[str, str]:
        return asdict(self)


@dataclass(frozen=True)
class Layout:
    """Where setup writes; ``root`` is "/" except in tests."""

    root: Path = Path("/")
    unit: str = "ollama.service"

    def at(self, path: str) -> Path:
        return self.root / path.lstrip("/")

    @property
    def sysusers(self) -> Path:
        return self.at("/etc/sysusers.d/ollamactl.conf")

    @property
    def tmpfiles(self) -> Path:
        return self.at("/etc/tmpfiles.d/ollamactl.conf")

    @property
    def dropin(self) -> Path:
        return self.at(f"/etc/systemd/system/{self.unit}.d/ollamactl.conf")

    @property
    def watchdog(self) -> Path:
        return self.at(f"/etc/systemd/system/{WATCHDOG}")

    @property
    def rules_dir(self) -> Path:
        return self.at("/etc/polkit-1/rules.d")

    @property
    def runtime_dir(self) -> Path:
        from ollamactl.runtime import RUN_DIR

        return self.at(str(RUN_DIR))


def shipped_dir() -> Path:
    """The directory of the unit files and snippets the .deb ships: the wheel's, or a source checkout's.

    Git holds one copy, packaging/systemd; pyproject.toml maps it into the wheel as ollamactl/_data/systemd.
    Run from a checkout (the tests, an editable install) the package has no _data, and the checkout's
    packaging/systemd beside it is the same file.
    """
    package = Path(str(resources.files("ollamactl")))
    packaged = package / "_data" / "systemd"
    if packaged.is_dir():
        return packaged
    checkout = package.resolve().parent
    if (checkout / "pyproject.toml").is_file() and (checkout / "packaging" / "systemd").is_dir():
        return checkout / "packaging" / "systemd"
    raise SetupError(f"the unit files ollamactl ships are missing: no {packaged}; reinstall ollamactl")


def shipped(name: str) -> str:
    """A file the .deb ships, e.g. ``ollama.service.d/ollamactl.conf``, from ``shipped_dir()``."""
    return (shipped_dir() / name).read_text(encoding="utf-8")


def command_line() -> str:
    """How the watchdog unit should start this very ollamactl: its script, or ``python -m ollamactl``."""
    script = os.path.abspath(sys.argv[0]) if sys.argv and sys.argv[0] else ""
    if os.path.basename(script) == "ollamactl" and os.access(script, os.X_OK):
        return script
    return f"{os.path.abspath(sys.executable)} -m ollamactl"


def check_reachable(argv: str) -> None:
    """What the watchdog unit will run must be reachable by it and writable by root alone.

    The watchdog (user ollamactl, ProtectHome=yes, PrivateTmp=yes) runs the command ``argv``
    names, with this interpreter, this package and its dependencies.  Whoever can write any of
    those (a module, a cached .pyc, a .pth file of a site directory, a directory above them, a
    link's target) would run code as the watchdog, which may restart Ollama and read the whole
    journal: more than "restart Ollama".  So each must be root's, and so must the files the watchdog
    unit is made from (``shipped_dir()``; in the package, except in a source checkout).
    """
    executables, trees, sites = _what_runs(argv)
    for path in [*(path for path, _ in executables), *trees, *sites]:
        if str(path).startswith(_PRIVATE):
            raise SetupError(
                f"{path} is under a home or temporary directory, which the watchdog (user {GROUP}, "
                "ProtectHome=yes) cannot run; install system-wide first, e.g.: sudo python3 -m venv "
                "--system-site-packages /opt/ollamactl && sudo /opt/ollamactl/bin/pip install ollamactl && "
                "sudo /opt/ollamactl/bin/ollamactl setup",
                path=str(path),
            )
    walk = _Walk()
    for path, need in executables:
        walk.chain(path, need)
    for path in trees:
        walk.tree(path)
    for site_dir in sites:
        walk.site(site_dir)


def _what_runs(argv: str) -> tuple[list[tuple[Path, int]], list[Path], list[Path]]:
    """The paths (with the bits others need) whose chains count, the trees walked whole, the site directories."""
    executables = [(Path(argv.split()[0]), 0o001), (Path(sys.executable), 0o001)]
    venv_cfg = Path(sys.prefix) / "pyvenv.cfg"  # names the interpreter's home: its stdlib, at every start
    if os.path.lexists(venv_cfg):
        executables.append((venv_cfg, 0))
    executables.append((Path(os.__file__).parent, 0o001))  # the standard library's directory, not each file
    trees = [path for name in ("ollamactl", *DEPENDENCIES) for path in _module_paths(name)]
    data = shipped_dir()  # what the watchdog unit is made from: outside the package in a source checkout
    if not any(data.resolve().is_relative_to(path.resolve()) for path in trees):
        trees.append(data)
    return executables, trees, _site_dirs()


#: What the watchdog imports besides ollamactl and the standard library (pydantic 2's own dependencies
#: included); tests/unit/test_hostsetup.py checks the list against what ``watch`` really imports.
DEPENDENCIES = (
    "dbus_next",
    "pydantic",
    "pydantic_core",
    "annotated_types",
    "typing_extensions",
    "typing_inspection",
    "loguru",
)
#: Groups whose write access is root's own: root, and Debian's staff (it owns /usr/local, on root's PATH).
_ROOTS_GROUPS = ("root", "staff")
#: Files and directories one setup checks at most (ollamactl and pydantic 2 are about 1500).
MAX_CHECKED = 20000
_MAX_LINKS = 40  # links followed to resolve one path, as the kernel's MAXSYMLINKS
_ACL_ACCESS, _ACL_DEFAULT = "system.posix_acl_access", "system.posix_acl_default"
_ACL_USER, _ACL_GROUP, _ACL_MASK, _ACL_WRITE = 0x02, 0x08, 0x10, 0x2


def root_only(path: Path) -> None:
    """Raise SetupError unless ``path`` and every directory above it (and above any link's target on the
    way) are owned by root, writable by root (or a root-equivalent group) alone, and searchable by
    others (the watchdog's user)."""
    _Walk().chain(path)


def _module_paths(name: str) -> list[Path]:
    """Where a top-level module's code is (a package's directories, or one file), without importing it."""
    from importlib.util import cache_from_source, find_spec

    spec = find_spec(name)
    if spec is None:  # not installed (pydantic 1 has no pydantic_core): never imported, nothing to check
        return []
    if spec.submodule_search_locations:
        return [Path(p) for p in spec.submodule_search_locations]
    if not spec.origin or not os.path.isabs(spec.origin):
        return []
    found = [Path(spec.origin)]
    if spec.origin.endswith(".py"):  # one file: its .pyc lives in the site directory's __pycache__
        cache = Path(cache_from_source(spec.origin)).parent
        if os.path.lexists(cache):
            found.append(cache)
    return found


def _site_dirs() -> list[Path]:
    """The site directories this interpreter reads .pth files from at every start."""
    import site

    # not root's user site (~/.local): the watchdog's user has its own, behind ProtectHome=yes
    return [Path(d) for d in site.getsitepackages() if os.path.isdir(d)]


def acl_writers(blob: bytes, trusted_gids: set[int]) -> list[str]:
    """Who, besides root and the owner, a POSIX ACL (the xattr's binary form) lets write.

    The form: a little-endian u32 version, then 8-byte entries (u16 tag, u16 permissions, u32 id).
    Named users (but root) and named groups (but root's) with write count, unless the mask takes it away.
    """
    if len(blob) < 4 or (len(blob) - 4) % 8:
        return [f"an ACL of {len(blob)} bytes that does not parse"]
    entries = [struct.unpack_from("<HHI", blob, off) for off in range(4, len(blob), 8)]
    masked = any(tag == _ACL_MASK and not perm & _ACL_WRITE for tag, perm, _ in entries)
    found = []
    for tag, perm, ident in entries:
        if not perm & _ACL_WRITE or masked:
            continue
        if tag == _ACL_USER and ident != 0:
            found.append(f"user {ident}")
        elif tag == _ACL_GROUP and ident not in trusted_gids:
            found.append(f"group {ident}")
    return found


class _Walk:
    """Checks paths for root_only, never following a link except to resolve it on purpose; bounded."""

    def __init__(self) -> None:
        from ollamactl.nss import group_id

        self.trusted_gids = {gid for gid in map(group_id, _ROOTS_GROUPS) if gid is not None}
        self.checked = 0
        self.seen: set[tuple[int, int]] = set()

    def chain(self, path: Path, need: int = 0o001) -> Path:
        """Check every directory from / down to ``path``, resolving each link on the way (its target's
        directories are checked too); ``path`` itself must have the ``need`` bits for others.  The real path."""
        here, todo, links = Path("/"), list(Path(os.path.abspath(path)).parts[1:]), 0
        self.node(here, self.lstat(here), need=0o001)
        while todo:
            part = todo.pop(0)
            if part in (".", ""):
                continue
            nxt = here.parent if part == ".." else here / part
            st = self.lstat(nxt)
            if stat.S_ISLNK(st.st_mode):  # resolved deliberately; the link itself is as safe as its directory
                links += 1
                if links > _MAX_LINKS:
                    raise SetupError(f"too many links to resolve {path}; install ollamactl on a plain path")
                target = os.readlink(nxt)
                todo = [*Path(target).parts[1 if target.startswith("/") else 0 :], *todo]
                if target.startswith("/"):
                    here = Path("/")
                continue
            here = nxt
            self.node(here, st, need=need if todo == [] and not stat.S_ISDIR(st.st_mode) else 0o001)
        return here

    def tree(self, top: Path) -> None:
        """``top``'s chain, then everything below it (cached .pyc files too), links resolved on purpose."""
        real = self.chain(top, need=0)
        stack = [real]
        while stack:
            d = stack.pop()
            st = self.lstat(d)
            if not stat.S_ISDIR(st.st_mode) or (st.st_dev, st.st_ino) in self.seen:
                continue
            self.seen.add((st.st_dev, st.st_ino))
            for name in self.names(d):
                p = d / name
                st = self.lstat(p)
                if stat.S_ISLNK(st.st_mode):
                    stack.append(self.chain(p, need=0))
                else:
                    self.node(p, st, need=0)
                    if stat.S_ISDIR(st.st_mode):
                        stack.append(p)

    def site(self, site_dir: Path) -> None:
        """A site directory and its .pth files and *customize modules: Python runs them at every start."""
        real = self.chain(site_dir, need=0)
        for name in self.names(real):
            if name.endswith(".pth") or name.split(".")[0] in ("sitecustomize", "usercustomize"):
                p = real / name
                st = self.lstat(p)
                if stat.S_ISLNK(st.st_mode) or stat.S_ISDIR(st.st_mode):
                    self.tree(p)
                else:
                    self.node(p, st, need=0)

    def names(self, d: Path) -> list[str]:
        try:
            with os.scandir(d) as entries:
                return [e.name for e in entries]
        except OSError as exc:
            raise SetupError(f"cannot check {d}: {exc.strerror}", path=str(d)) from None

    def lstat(self, p: Path) -> os.stat_result:
        self.checked += 1
        if self.checked > MAX_CHECKED:
            raise SetupError(
                f"more than {MAX_CHECKED} files to check under {p.parent}; install ollamactl in a venv of its "
                "own (e.g. sudo python3 -m venv /opt/ollamactl) so that setup can check all of it",
                path=str(p),
            )
        try:
            return os.lstat(p)
        except OSError as exc:
            raise SetupError(f"cannot check {p}: {exc.strerror}", path=str(p)) from None

    def node(self, p: Path, st: os.stat_result, need: int) -> None:
        """One file or directory: root's, writable by root alone (mode and ACL); ``need`` bits for others."""
        writable_by_group = st.st_mode & 0o020 and st.st_gid not in self.trusted_gids
        if st.st_uid != 0 or st.st_mode & 0o002 or writable_by_group:
            raise SetupError(
                f"{p} can be changed by someone other than root (owner uid {st.st_uid}, mode "
                f"{stat.S_IMODE(st.st_mode):04o}), and the watchdog would run code from under it; install "
                "ollamactl where only root can write (e.g. a venv in /opt/ollamactl made by root)",
                path=str(p),
            )
        for attr in (_ACL_ACCESS, _ACL_DEFAULT) if stat.S_ISDIR(st.st_mode) else (_ACL_ACCESS,):
            try:
                blob = os.getxattr(p, attr, follow_symlinks=False)
            except OSError as exc:
                if exc.errno in (errno.ENODATA, errno.ENOTSUP, errno.EOPNOTSUPP):  # no ACL, or no ACLs here
                    continue
                raise SetupError(f"cannot read the ACL of {p}: {exc.strerror}", path=str(p)) from None
            writers = acl_writers(blob, self.trusted_gids)
            if writers:
                raise SetupError(
                    f"{p} has an ACL that lets {', '.join(writers)} write (or create files that will), and the "
                    f"watchdog would run code from under it; remove it (sudo setfacl -b -k {p}) or install "
                    "ollamactl where only root can write",
                    path=str(p),
                )
        if need and not st.st_mode & need:  # others may search the directory / execute the file
            raise SetupError(
                f"{p} is not readable/searchable by others, so the watchdog (user {GROUP}) could not run "
                f"ollamactl from it; install ollamactl where every user can run it (e.g. /opt/ollamactl)",
                path=str(p),
            )


def planned(layout: Layout, argv: str) -> dict[Path, str]:
    """The files setup owns and their content (each with the marker on its first line)."""
    unit = shipped(WATCHDOG).replace("ExecStart=/usr/bin/ollamactl watch", f"ExecStart={argv} watch")
    unit = unit.replace("ExecStartPre=-+/usr/bin/ollamactl metrics", f"ExecStartPre=-+{argv} metrics")
    if f"ExecStart={argv} watch" not in unit:
        raise SetupError(f"the shipped {WATCHDOG} has no 'ExecStart=/usr/bin/ollamactl watch' line to adapt")
    return {
        layout.sysusers: shipped("ollamactl.sysusers"),
        layout.tmpfiles: shipped("ollamactl.tmpfiles"),
        layout.dropin: shipped("ollama.service.d/ollamactl.conf"),
        layout.watchdog: unit,
    }


def _read(path: Path) -> str | None:
    """A file's text, None if absent; never follows a symlink (a link there is refused)."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise SetupError(f"cannot read {path}: {exc.strerror}; nothing more was changed", path=str(path)) from None
    with os.fdopen(fd, "rb") as fh:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise SetupError(f"{path} is not a regular file; nothing more was changed", path=str(path))
        return fh.read(1 << 20).decode("utf-8", "replace")


def _ours(text: str | None, marker: str = MARKER) -> bool:
    return text is not None and marker in text


def _write(path: Path, text: str) -> None:
    """Atomically: a temp file in the same directory, fsync, rename."""
    path.parent.mkdir(mode=0o755, parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC | os.O_NOFOLLOW, 0o644)
        try:
            os.fchmod(fd, 0o644)
            os.write(fd, text.encode())
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, path)
    except OSError as exc:
        tmp.unlink(missing_ok=True)
        raise SetupError(f"cannot write {path}: {exc.strerror}; nothing more was changed", path=str(path)) from None


def _put(path: Path, body: str, what: str, dry_run: bool) -> Step:
    text = f"{MARKER}\n{body}"
    existing = _read(path)
    if existing == text:
        return Step("unchanged", str(path), what)
    if existing is not None and not _ours(existing):
        raise SetupError(
            f"{path} exists and was not written by ollamactl setup; nothing more was changed: "
            "move it away (or merge it by hand) and run setup again",
            path=str(path),
        )
    if not dry_run:
        _write(path, text)
    return Step("created" if existing is None else "updated", str(path), what)


def _remove(path: Path, what: str, dry_run: bool, *, marker: str = MARKER, writer: str = "setup") -> Step:
    """Remove ``path`` if it carries ``marker`` (what ``writer`` puts in its files); never an admin's file."""
    existing = _read(path)
    if existing is None:
        return Step("absent", str(path), what)
    if not _ours(existing, marker):
        return Step(f"kept (not written by {writer})", str(path), what)
    if not dry_run:
        path.unlink()
    return Step("removed", str(path), what)


def _tool(argv: list[str], what: str, dry_run: bool) -> Step:
    """Run systemd-sysusers / systemd-tmpfiles on one file (never systemctl)."""
    if not dry_run:
        if shutil.which(argv[0]) is None:
            raise SetupError(f"{argv[0]} not found: setup needs systemd's {argv[0]} (is this a systemd system?)")
        try:
            r = subprocess.run(argv, capture_output=True, text=True, timeout=TOOL_TIMEOUT, check=False)
        except subprocess.TimeoutExpired:
            raise SetupError(f"{' '.join(argv)} did not finish within {TOOL_TIMEOUT:g}s") from None
        if r.returncode != 0:
            last = clean((r.stderr or r.stdout).strip().splitlines()[-1:][0] if (r.stderr or r.stdout).strip() else "")
            raise SetupError(f"{' '.join(argv)} failed (exit {r.returncode}): {last}", tool=argv[0])
    return Step("ran", " ".join(argv), what)


async def _reload(timeout: float) -> None:
    """systemd's daemon-reload over D-Bus: rereads unit files, never restarts a unit."""
    from ollamactl.systemd import SystemdBus

    async with SystemdBus(call_timeout=timeout) as bus:
        await bus.call("/org/freedesktop/systemd1", "org.freedesktop.systemd1.Manager", "Reload", timeout=timeout)


async def _watchdog_in_use(timeout: float) -> bool:
    from ollamactl.systemd import SystemdBus

    async with SystemdBus(call_timeout=timeout) as bus:
        state = await bus.unit_state(WATCHDOG, timeout=timeout)
    return state.active_state in ("active", "activating", "reloading", "deactivating")


def _preflight(layout: Layout) -> None:
    if os.geteuid() != 0:
        raise PermissionDenied("setup writes to /etc and creates a system group: run it as root: sudo ollamactl setup")
    if layout.at(str(DPKG_LIST)).exists():
        raise SetupError(
            "the Debian package ollamactl is installed and already set all of this up; nothing to do "
            "(setup is for installs from the wheel)"
        )


def setup(layout: Layout = Layout(), *, dry_run: bool = False, reload: bool = True) -> list[Step]:
    """Put every file in place, create the group/user and runtime directory, reload systemd."""
    from ollamactl import policy
    from ollamactl.units import check_unit_name

    check_unit_name(layout.unit)
    _preflight(layout)
    argv = command_line()
    check_reachable(argv)
    files = planned(layout, argv)
    steps = [
        _put(layout.sysusers, files[layout.sysusers], f"group {GROUP} and the watchdog's user", dry_run),
        _tool(["systemd-sysusers", str(layout.sysusers)], "create them", dry_run),
        _put(layout.tmpfiles, files[layout.tmpfiles], "the runtime directory /run/ollamactl (2770)", dry_run),
        _tool(["systemd-tmpfiles", "--create", str(layout.tmpfiles)], "create it", dry_run),
    ]
    grant = policy.make_grant(GROUP, layout.unit)
    rule = layout.rules_dir / policy.default_file_name(grant)
    before = _read(rule)
    if before == policy.render(grant):
        steps.append(Step("unchanged", str(rule), f"the polkit grant: {grant.describe()}"))
    else:
        if not dry_run:
            policy.install(grant, layout.rules_dir)
        action = "created" if before is None else "updated"
        steps.append(Step(action, str(rule), f"the polkit grant: {grant.describe()}"))
    steps.append(_put(layout.dropin, files[layout.dropin], f"TimeoutStopSec for {layout.unit}", dry_run))
    steps.append(_put(layout.watchdog, files[layout.watchdog], f"the watchdog unit (disabled), runs {argv}", dry_run))
    if reload and not dry_run and any(s.action in ("created", "updated") for s in steps):
        asyncio.run(_reload(RELOAD_TIMEOUT))
        steps.append(Step("ran", "daemon-reload (D-Bus Manager.Reload)", "systemd sees the drop-in and the unit"))
    return steps


def undo(layout: Layout = Layout(), *, dry_run: bool = False, reload: bool = True) -> list[Step]:
    """Remove what setup wrote (never an admin's file); the group and user stay."""
    from ollamactl import policy
    from ollamactl.units import check_unit_name

    check_unit_name(layout.unit)
    _preflight(layout)
    if layout.at(f"/etc/systemd/system/multi-user.target.wants/{WATCHDOG}").exists() or (
        reload and asyncio.run(_watchdog_in_use(RELOAD_TIMEOUT))
    ):
        raise UsageError(
            f"{WATCHDOG} is enabled or running; stop it first: sudo systemctl disable --now {WATCHDOG}",
            unit=WATCHDOG,
        )
    grant = policy.make_grant(GROUP, layout.unit)
    rule = layout.rules_dir / policy.default_file_name(grant)
    steps = [
        _remove(rule, "the polkit grant", dry_run, marker=policy.MARKER.strip(), writer="ollamactl"),
        _remove(layout.watchdog, "the watchdog unit", dry_run),
        _remove(layout.dropin, f"TimeoutStopSec for {layout.unit}", dry_run),
        _remove(layout.tmpfiles, "the runtime directory's tmpfiles entry", dry_run),
        _remove(layout.sysusers, "the sysusers entry (group and user stay)", dry_run),
    ]
    if layout.runtime_dir.is_dir() and not layout.runtime_dir.is_symlink():
        if not dry_run:
            shutil.rmtree(layout.runtime_dir)  # fd-based on Linux: never follows a link a member planted inside
        steps.append(Step("removed", str(layout.runtime_dir), "the runtime directory (restart history)"))
    if reload and not dry_run and any(s.action == "removed" for s in steps):
        asyncio.run(_reload(RELOAD_TIMEOUT))
        steps.append(Step("ran", "daemon-reload (D-Bus Manager.Reload)", "systemd forgets the drop-in and the unit"))
    return steps


NEXT_STEPS = (
    f"next: add users to the group (sudo usermod -aG {GROUP} USER; they log in again), check with "
    f"ollamactl doctor, and to run the watchdog: sudo systemctl enable --now {WATCHDOG}"
)

"""``ollamactl setup`` on a scratch root: the files the .deb would ship, idempotent, never an admin's file.

systemd-sysusers/-tmpfiles and the D-Bus reload are not run here (they would act on this
host); tests/e2e/test_setup.py runs the real thing in a bare container from the wheel.
"""

from __future__ import annotations

import json
import os
import shutil
import stat
import struct
import subprocess
import sys
import tempfile
from pathlib import Path
from types import SimpleNamespace

import pytest

from ollamactl import hostsetup, policy
from ollamactl.errors import PermissionDenied, UsageError
from ollamactl.hostsetup import Layout, SetupError

REPO = Path(__file__).resolve().parents[2]
EXE = "/opt/ollamactl/bin/ollamactl"


@pytest.fixture
def ran() -> list[list[str]]:
    return []


@pytest.fixture
def layout(tmp_path, monkeypatch, ran):

    def tool(argv, what, dry_run):
        if not dry_run:
            ran.append(argv)
        return hostsetup.Step("ran", " ".join(argv), what)

    monkeypatch.setattr(hostsetup, "_tool", tool)
    monkeypatch.setattr(hostsetup, "command_line", lambda: EXE)
    monkeypatch.setattr(hostsetup, "check_reachable", lambda argv: None)
    monkeypatch.setattr(hostsetup.os, "geteuid", lambda: 0)
    return Layout(root=tmp_path)


def test_setup_puts_the_deb_files_in_place_with_this_ollamactl_in_the_watchdog(layout, ran):
    steps = hostsetup.setup(layout, reload=False)
    assert [s.action for s in steps] == ["created", "ran", "created", "ran", "created", "created", "created"]
    for path, shipped in (
        (layout.sysusers, "packaging/systemd/ollamactl.sysusers"),
        (layout.tmpfiles, "packaging/systemd/ollamactl.tmpfiles"),
        (layout.dropin, "packaging/systemd/ollama.service.d/ollamactl.conf"),
    ):
        assert path.read_text() == f"{hostsetup.MARKER}\n{(REPO / shipped).read_text()}"
        assert path.stat().st_mode & 0o777 == 0o644
    unit = layout.watchdog.read_text()
    assert f"ExecStart={EXE} watch\n" in unit and "/usr/bin/ollamactl" not in unit
    assert "User=ollamactl" in unit and "[Install]" in unit  # shipped, not enabled: no wants/ symlink
    assert not (layout.root / "etc/systemd/system/multi-user.target.wants").exists()
    rule = layout.rules_dir / "50-ollamactl-ollamactl-ollama.service.rules"
    assert rule.read_text() == policy.render(policy.make_grant("ollamactl"))
    assert ran == [
        ["systemd-sysusers", str(layout.sysusers)],
        ["systemd-tmpfiles", "--create", str(layout.tmpfiles)],
    ]


def test_a_second_run_changes_nothing(layout):
    hostsetup.setup(layout, reload=False)
    before = {p: p.stat().st_mtime_ns for p in layout.root.rglob("*") if p.is_file()}
    steps = hostsetup.setup(layout, reload=False)
    assert {s.action for s in steps} == {"unchanged", "ran"}
    assert {p: p.stat().st_mtime_ns for p in layout.root.rglob("*") if p.is_file()} == before


def test_an_admins_file_is_never_overwritten(layout):
    layout.dropin.parent.mkdir(parents=True)
    layout.dropin.write_text("[Service]\nTimeoutStopSec=300\n")
    with pytest.raises(SetupError, match="not written by ollamactl setup") as info:
        hostsetup.setup(layout, reload=False)
    assert layout.dropin.read_text() == "[Service]\nTimeoutStopSec=300\n"
    assert info.value.exit_code == 2 and "\n" not in info.value.message


def test_a_symlink_in_place_of_a_file_is_refused_not_followed(layout, tmp_path):
    victim = tmp_path / "victim"
    victim.write_text("keep\n")
    layout.tmpfiles.parent.mkdir(parents=True)
    layout.tmpfiles.symlink_to(victim)
    with pytest.raises(SetupError, match="cannot read"):
        hostsetup.setup(layout, reload=False)
    assert victim.read_text() == "keep\n" and layout.tmpfiles.is_symlink()


def test_undo_removes_what_setup_wrote_and_keeps_an_admins_file(layout):
    hostsetup.setup(layout, reload=False)
    admin = layout.at("/etc/systemd/system/ollama.service.d/admin.conf")
    admin.write_text("[Service]\nNice=5\n")
    layout.runtime_dir.mkdir(parents=True)
    (layout.runtime_dir / "state.json").write_text("{}")
    steps = hostsetup.undo(layout, reload=False)
    assert [s.action for s in steps] == ["removed"] * 6
    assert not any(p.is_file() for p in (layout.sysusers, layout.tmpfiles, layout.dropin, layout.watchdog))
    assert not list(layout.rules_dir.iterdir()) and not layout.runtime_dir.exists()
    assert admin.read_text() == "[Service]\nNice=5\n"
    assert {s.action for s in hostsetup.undo(layout, reload=False)} == {"absent"}


def test_undo_refuses_while_the_watchdog_is_enabled(layout):
    hostsetup.setup(layout, reload=False)
    wants = layout.at(f"/etc/systemd/system/multi-user.target.wants/{hostsetup.WATCHDOG}")
    wants.parent.mkdir(parents=True)
    wants.symlink_to(layout.watchdog)
    with pytest.raises(UsageError, match="disable --now ollamactl-watchdog.service"):
        hostsetup.undo(layout, reload=False)
    assert layout.watchdog.is_file()


def test_dry_run_writes_nothing(layout, ran):
    steps = hostsetup.setup(layout, dry_run=True, reload=False)
    assert "created" in {s.action for s in steps}
    assert not any(p.is_file() for p in layout.root.rglob("*")) and ran == []


def test_not_root_and_the_debian_package_are_refused(layout, monkeypatch):
    dpkg = layout.at(str(hostsetup.DPKG_LIST))
    dpkg.parent.mkdir(parents=True)
    dpkg.write_text("/usr/bin/ollamactl\n")
    with pytest.raises(SetupError, match="Debian package ollamactl is installed"):
        hostsetup.setup(layout, reload=False)
    monkeypatch.setattr(hostsetup.os, "geteuid", lambda: 1000)
    with pytest.raises(PermissionDenied, match="sudo ollamactl setup"):
        hostsetup.setup(layout, reload=False)
    assert not layout.sysusers.exists()


# --------------------------------------------------------------------------- where the shipped files are read from


def test_from_a_checkout_the_files_are_packaging_systemd():
    """Git holds one copy (packaging/systemd); a checkout's package has no _data, so setup reads that."""
    assert hostsetup.shipped_dir() == REPO / "packaging" / "systemd"
    assert hostsetup.shipped("ollamactl.tmpfiles") == (REPO / "packaging/systemd/ollamactl.tmpfiles").read_text()


def _package(tmp_path: Path, monkeypatch) -> Path:
    """A stand-in for the installed package: ``resources.files("ollamactl")`` answers with it."""
    pkg = tmp_path / "site" / "ollamactl"
    pkg.mkdir(parents=True)
    monkeypatch.setattr(hostsetup, "resources", SimpleNamespace(files=lambda name: pkg))
    return pkg


def test_from_the_wheel_the_files_are_its_package_data(tmp_path, monkeypatch):
    pkg = _package(tmp_path, monkeypatch)
    (pkg / "_data" / "systemd" / "ollama.service.d").mkdir(parents=True)
    (pkg / "_data" / "systemd" / "ollama.service.d" / "ollamactl.conf").write_text("[Service]\n")
    (tmp_path / "site" / "pyproject.toml").write_text("")  # a checkout's marker is no reason to look past the wheel
    assert hostsetup.shipped_dir() == pkg / "_data" / "systemd"
    assert hostsetup.shipped("ollama.service.d/ollamactl.conf") == "[Service]\n"


def test_a_packaging_directory_beside_an_installed_package_is_not_taken_for_a_checkout(tmp_path, monkeypatch):
    """site-packages holds the PyPI package named packaging: only a checkout (pyproject.toml) has ours."""
    _package(tmp_path, monkeypatch)
    (tmp_path / "site" / "packaging" / "systemd").mkdir(parents=True)
    with pytest.raises(SetupError, match="unit files ollamactl ships are missing"):
        hostsetup.shipped_dir()


@pytest.mark.parametrize("where", ["checkout", "wheel"])
def test_the_shipped_files_are_checked_like_the_package_when_outside_it(monkeypatch, where):
    """The watchdog unit is made from them: whoever could write a checkout's packaging/systemd would pick
    what the watchdog runs.  In the wheel they are inside the package, walked already."""
    data = {"checkout": Path("/x/packaging/systemd"), "wheel": Path("/x/ollamactl/_data/systemd")}[where]
    monkeypatch.setattr(hostsetup, "shipped_dir", lambda: data)
    monkeypatch.setattr(hostsetup, "_module_paths", lambda name: [Path("/x/ollamactl")] if name == "ollamactl" else [])
    monkeypatch.setattr(hostsetup, "_site_dirs", lambda: [])
    _, trees, _ = hostsetup._what_runs(EXE)
    assert trees == ([Path("/x/ollamactl"), data] if where == "checkout" else [Path("/x/ollamactl")])


@pytest.mark.parametrize("exe", ["/home/alice/.local/bin/ollamactl", "/root/.local/bin/ollamactl", "/tmp/v/bin/x"])
def test_an_ollamactl_the_watchdog_cannot_run_is_refused(exe):
    with pytest.raises(SetupError, match="ProtectHome"):
        hostsetup.check_reachable(exe)


@pytest.fixture
def tree():
    """A root-owned tree others can search, down to an executable: what check_reachable accepts.

    Under /run (root's 0755), not pytest's tmp dir: /tmp is writable by everyone, so nothing
    under it is acceptable.
    """
    if os.geteuid() != 0 or not os.access("/run", os.W_OK):
        pytest.skip("needs root (a root-owned directory outside /tmp)")
    top = Path(tempfile.mkdtemp(dir="/run", prefix="ollamactl-test-"))
    try:
        d = top / "opt" / "ollamactl" / "bin"
        d.mkdir(parents=True)
        exe = d / "ollamactl"
        exe.write_text("#!/bin/sh\n")
        for p in (exe, *exe.parents):
            if p == top.parent:
                break
            p.chmod(0o755)
        yield exe
    finally:
        shutil.rmtree(top)


def test_a_root_owned_tree_is_accepted(tree):
    hostsetup.root_only(tree)


def test_a_directory_others_cannot_search_is_refused(tree):
    tree.parent.chmod(0o700)
    with pytest.raises(SetupError, match=f"{tree.parent} is not readable/searchable by others"):
        hostsetup.root_only(tree)


@pytest.mark.parametrize("how", ["world-writable", "group-writable", "a user's"])
def test_what_a_user_can_change_is_refused(tree, how):
    """Whoever can write the watchdog's executable (or a directory above it) would run code as the watchdog."""
    target = tree.parent.parent  # /opt/ollamactl
    if how == "world-writable":
        target.chmod(0o777)
    elif how == "group-writable":
        os.chown(target, 0, 65534)  # nogroup
        target.chmod(0o775)
    else:
        os.chown(tree, 65534, 0)  # nobody
    with pytest.raises(SetupError, match="can be changed by someone other than root") as info:
        hostsetup.root_only(tree)
    assert info.value.exit_code == 2 and "\n" not in info.value.message


@pytest.mark.parametrize("argv", [["setup"], ["setup", "--undo"], ["setup", "--unit", "ollama@gpu0.service"]])
def test_the_command_line_runs_setup_and_prints_one_json_object(argv, monkeypatch, capsys):
    from ollamactl import cli

    seen: list[tuple[str, Layout, bool]] = []

    def fake(name):
        def run(layout, *, dry_run=False):
            seen.append((name, layout, dry_run))
            return [hostsetup.Step("created", "/etc/x", "a file")]

        return run

    monkeypatch.setattr(hostsetup, "setup", fake("setup"))
    monkeypatch.setattr(hostsetup, "undo", fake("undo"))
    assert cli.main([*argv, "--dry-run", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["steps"] == [{"action": "created", "path": "/etc/x", "what": "a file"}] and out["dry_run"] is True
    name, layout, dry_run = seen[0]
    assert name == ("undo" if "--undo" in argv else "setup") and dry_run
    assert layout.unit == (argv[2] if "--unit" in argv else "ollama.service")


# --------------------------------------------------------------------------- the package, its dependencies, ACLs, links


@pytest.fixture
def install(tree, monkeypatch):
    """A root-only install under /run: bin/ollamactl (``tree``), a package with __pycache__, a dependency
    file, a site directory with a .pth file; check_reachable looks at exactly these."""
    top = tree.parents[1]  # .../opt/ollamactl
    site_dir = top / "lib" / "site-packages"
    pkg = site_dir / "ollamactl"
    (pkg / "__pycache__").mkdir(parents=True)
    (pkg / "__init__.py").write_text("")
    (pkg / "__pycache__" / "__init__.cpython-311.pyc").write_bytes(b"\0" * 16)
    (site_dir / "dep.py").write_text("")
    (site_dir / "x.pth").write_text("")
    for p in (top / "lib", site_dir, pkg, pkg / "__pycache__"):
        p.chmod(0o755)
    executables = [(tree, 0o001)]
    monkeypatch.setattr(hostsetup, "_what_runs", lambda argv: (executables, [pkg, site_dir / "dep.py"], [site_dir]))
    hostsetup.check_reachable(str(tree))  # accepted as it is
    return SimpleNamespace(top=top, exe=tree, site=site_dir, pkg=pkg, executables=executables)


def _refused(install, match: str) -> None:
    with pytest.raises(SetupError, match=match) as info:
        hostsetup.check_reachable(str(install.exe))
    assert info.value.exit_code == 2 and "\n" not in info.value.message


@pytest.mark.parametrize(
    "what", ["__pycache__/*.pyc", "__pycache__", "a module", "a dependency", "a .pth file", "a file deep inside"]
)
def test_anything_in_the_package_or_its_dependencies_a_user_can_write_is_refused(install, what):
    """A .pyc is run as it is when its header matches the source: whoever writes one runs code as the watchdog."""
    path = {
        "__pycache__/*.pyc": install.pkg / "__pycache__" / "__init__.cpython-311.pyc",
        "__pycache__": install.pkg / "__pycache__",
        "a module": install.pkg / "__init__.py",
        "a dependency": install.site / "dep.py",
        "a .pth file": install.site / "x.pth",
        "a file deep inside": install.pkg / "a" / "b" / "c.py",
    }[what]
    if not path.exists():
        path.parent.mkdir(parents=True, mode=0o755)
        path.write_text("")
    os.chown(path, 65534, 0)  # nobody
    _refused(install, f"{path} can be changed by someone other than root")


def _acl(*entries: tuple[int, int, int]) -> bytes:
    """The xattr's binary form; the kernel wants the entries sorted by tag, then id."""
    return struct.pack("<I", 2) + b"".join(struct.pack("<HHI", *e) for e in sorted(entries, key=lambda e: (e[0], e[2])))


OWNER, USER, GROUP_OBJ, GROUP, MASK, OTHER = 0x01, 0x02, 0x04, 0x08, 0x10, 0x20
NOID = 0xFFFFFFFF


def _set_acl(path: Path, blob: bytes, name: str = "system.posix_acl_access") -> None:
    try:
        os.setxattr(path, name, blob)
    except OSError as exc:
        pytest.skip(f"this file system takes no POSIX ACL: {exc.strerror}")


@pytest.mark.parametrize("who", ["user 1000", "group 1000"])
def test_an_acl_that_lets_a_user_write_is_refused(install, who):
    """Mode 0644 and owner root say nothing of an ACL entry ``user:1000:rw-``: the xattr is read too."""
    path = install.pkg / "__init__.py"
    entry = (USER, 6, 1000) if who == "user 1000" else (GROUP, 6, 1000)
    _set_acl(path, _acl((OWNER, 6, NOID), entry, (GROUP_OBJ, 4, NOID), (MASK, 6, NOID), (OTHER, 4, NOID)))
    # the mode shows the mask (rw) as group bits, and the group is root's: the mode alone would pass
    assert path.stat().st_gid == 0 and stat.S_IMODE(path.stat().st_mode) == 0o664
    _refused(install, f"{path} has an ACL that lets {who} write")


def test_an_acl_whose_mask_takes_write_away_and_roots_own_entries_are_accepted(install):
    path = install.pkg / "__init__.py"
    _set_acl(path, _acl((OWNER, 6, NOID), (USER, 6, 1000), (GROUP_OBJ, 4, NOID), (MASK, 4, NOID), (OTHER, 4, NOID)))
    hostsetup.check_reachable(str(install.exe))
    _set_acl(path, _acl((OWNER, 6, NOID), (USER, 6, 0), (GROUP_OBJ, 4, NOID), (MASK, 6, NOID), (OTHER, 4, NOID)))
    os.chown(path, 0, 0)
    hostsetup.check_reachable(str(install.exe))


def test_a_default_acl_on_a_directory_is_refused(install):
    """A default ACL hands write to files root creates later there (a .pyc on the next import)."""
    d = install.pkg / "__pycache__"
    blob = _acl((OWNER, 7, NOID), (USER, 7, 1000), (GROUP_OBJ, 5, NOID), (MASK, 7, NOID), (OTHER, 5, NOID))
    _set_acl(d, blob, "system.posix_acl_default")
    _refused(install, f"{d} has an ACL that lets user 1000 write")


def test_acl_parsing():
    trusted = {0, 50}
    assert hostsetup.acl_writers(_acl((OWNER, 6, NOID), (USER, 2, 1000), (MASK, 7, NOID)), trusted) == ["user 1000"]
    assert hostsetup.acl_writers(_acl((USER, 6, 1000), (MASK, 5, NOID)), trusted) == []  # masked
    assert hostsetup.acl_writers(_acl((USER, 6, 1000)), trusted) == ["user 1000"]  # no mask: nothing masked
    assert hostsetup.acl_writers(_acl((GROUP, 6, 50), (USER, 4, 1000), (USER, 6, 0)), trusted) == []
    assert hostsetup.acl_writers(b"\2\0\0\0\1", trusted) == ["an ACL of 5 bytes that does not parse"]


@pytest.mark.parametrize("where", ["the interpreter", "in the package"])
def test_the_directories_above_a_links_target_must_be_roots_too(install, where):
    """A root-owned link to /srv/python3 is only as safe as /srv: whoever writes there swaps python3."""
    shared = install.top.parent / "shared"  # .../opt/shared, world-writable (sticky, as /tmp is)
    real = shared / "lib" / "python3"
    real.mkdir(parents=True)
    (real / "mod.py").write_text("")
    for p in (real, real.parent):
        p.chmod(0o755)
    shared.chmod(0o1777)
    if where == "the interpreter":
        link = install.exe.parent / "python3"
        link.symlink_to(os.path.relpath(real / "mod.py", link.parent))  # relative, through ../..
        install.executables.append((link, 0))
    else:
        link = install.pkg / "vendored"
        link.symlink_to(real)
    _refused(install, f"{shared} can be changed by someone other than root")


def test_a_link_loop_and_too_many_files_are_errors_not_hangs(install, monkeypatch):
    loop = install.pkg / "loop"
    loop.symlink_to(loop)
    _refused(install, "too many links to resolve")
    loop.unlink()
    monkeypatch.setattr(hostsetup, "MAX_CHECKED", 5)
    _refused(install, "more than 5 files to check")


def _python(code: str) -> str:
    """Run ``code`` in a fresh interpreter (nothing imported yet); its stdout."""
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, cwd=REPO)
    assert r.returncode == 0, r.stderr
    return r.stdout


def test_module_paths_find_a_dependency_and_its_cache_without_importing_it():
    code = (
        "import sys; from ollamactl import hostsetup\n"
        "paths = {n: hostsetup._module_paths(n) for n in hostsetup.DEPENDENCIES}\n"
        "assert not set(hostsetup.DEPENDENCIES) & set(sys.modules), set(hostsetup.DEPENDENCIES) & set(sys.modules)\n"
        "assert paths['pydantic'][0].name == 'pydantic' and paths['typing_extensions'][0].suffix == '.py', paths\n"
    )
    _python(code)


def test_dependencies_list_what_the_watchdog_imports():
    """DEPENDENCIES must not fall behind: import what ``watch`` does and compare the third-party modules."""
    code = (
        "import sys\n"
        "import ollamactl.cli, ollamactl.watch, ollamactl.systemd, ollamactl._pydantic, ollamactl._log\n"
        "from ollamactl._log import enable; enable('INFO', journal=False)\n"
        "from ollamactl.config import load_config; load_config(environ={})\n"
        "tops = {m.split('.')[0] for m in sys.modules} - set(sys.stdlib_module_names) - set(sys.builtin_module_names)\n"
        "print(' '.join(sorted(t for t in tops - {'ollamactl'} if not t.startswith('_'))))\n"
    )
    out = _python(code)
    assert set(out.split()) <= set(hostsetup.DEPENDENCIES) and {"pydantic", "loguru", "dbus_next"} <= set(out.split())

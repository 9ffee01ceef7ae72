"""``ollamactl setup`` on a scratch root: the files the .deb would ship, idempotent, never an admin's file.

systemd-sysusers/-tmpfiles and the D-Bus reload are not run here (they would act on this
host); tests/e2e/test_setup.py runs the real thing in a bare container from the wheel.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path

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
        (layout.sysusers, "ollamactl/_data/ollamactl.sysusers"),
        (layout.tmpfiles, "ollamactl/_data/ollamactl.tmpfiles"),
        (layout.dropin, "ollamactl/_data/ollama.service.d/ollamactl.conf"),
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

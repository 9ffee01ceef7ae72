"""``ollamactl setup`` from the wheel on a bare booted box, as an admin on Fedora/Arch/RHEL would do it.

One root command after ``pip install``: then a member restarts Ollama and a
non-member cannot, the watchdog unit is there but disabled, a second run changes
nothing, ``--undo`` takes it all back, and Ollama is never restarted by any of it.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from tests import testbed
from tests.e2e.conftest import Bed

RULE = "/etc/polkit-1/rules.d/50-ollamactl-ollamactl-ollama.service.rules"
FILES = (
    "/etc/sysusers.d/ollamactl.conf",
    "/etc/tmpfiles.d/ollamactl.conf",
    "/etc/systemd/system/ollama.service.d/ollamactl.conf",
    "/etc/systemd/system/ollamactl-watchdog.service",
    RULE,
)
EXE = "/usr/local/bin/ollamactl"  # where `pip install` as root puts the script


@pytest.fixture(scope="session")
def wheel(tmp_path_factory, deb) -> Path:  # deb: the same prerequisites check (root, nspawn)
    out = tmp_path_factory.mktemp("wheel")
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "-w", str(out), str(testbed.REPO_ROOT)],
        check=True, capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    return next(out.glob("ollamactl-*.whl"))


@pytest.fixture(scope="module", params=testbed.SUITES)
def bare(request, wheel) -> Bed:
    """A booted box without ollamactl; the wheel pip-installed system-wide, nothing else set up."""
    c = testbed.boot(request.param)
    request.addfinalizer(c.stop)
    c.write_file(f"/root/{wheel.name}", wheel.read_bytes())
    c.run(
        ["python3", "-m", "pip", "install", "-q", "--no-deps", "--no-index", "--break-system-packages",
         "--root-user-action=ignore", "--disable-pip-version-check", f"/root/{wheel.name}"],
        check=True, timeout=300,
    )  # fmt: skip
    return Bed(c)


def _setup(bed: Bed, *args: str) -> tuple[int, list[dict], str]:
    """(exit code, the steps, the error message) of ``ollamactl setup ARGS --json`` as root."""
    r = bed.c.run([EXE, "setup", *args, "--json"], timeout=120)
    out = json.loads(r.stdout)  # one JSON object, errors included
    return r.returncode, out.get("steps", []), out.get("message", r.stderr)


def test_an_install_a_user_can_write_is_refused(bare: Bed):
    """The watchdog would run that code as user ollamactl (restarts, the whole journal): setup writes nothing."""
    c = bare.c
    pkg = bare.python("import ollamactl, os; print(os.path.dirname(ollamactl.__file__))", user="root").stdout.strip()
    c.run(["chmod", "o+w", pkg], check=True)
    try:
        rc, steps, message = _setup(bare)
    finally:
        c.run(["chmod", "o-w", pkg], check=True)
    assert rc == 2 and steps == [] and f"{pkg} can be changed by someone other than root" in message
    for path in FILES:
        assert c.run(["test", "-e", path]).returncode != 0, path


def test_setup_from_the_wheel_lets_a_member_restart_and_nobody_else(bare: Bed):
    c = bare
    inv0 = c.prop("InvocationID")
    rc, steps, err = _setup(c)
    assert rc == 0, err
    assert {s["path"] for s in steps if s["action"] == "created"} == set(FILES)
    assert c.prop("InvocationID") == inv0, "setup restarted ollama.service"
    assert c.c.run(["getent", "group", "ollamactl"]).returncode == 0
    assert c.c.run(["id", "-u", "ollamactl"]).returncode == 0
    assert c.c.run(["stat", "-c", "%a %U:%G", "/run/ollamactl"], check=True).stdout.split() == [
        "2770",
        "root:ollamactl",
    ]
    assert c.prop("TimeoutStopUSec") == "10s"  # the drop-in, seen after setup's daemon-reload
    assert c.prop("UnitFileState", "ollamactl-watchdog.service") == "disabled"
    assert c.prop("ExecStart", "ollamactl-watchdog.service").count(f"path={EXE} ") == 1

    c.c.run(["usermod", "-aG", "ollamactl", "alice"], check=True)
    r = c.c.run([EXE, "restart", "--reason", "setup e2e"], user="alice", timeout=120)
    assert r.returncode == 0, r.stderr
    inv1 = c.prop("InvocationID")
    assert inv1 != inv0
    r = c.c.run([EXE, "restart"], user="bob", timeout=120)
    assert r.returncode != 0 and c.prop("InvocationID") == inv1


def test_a_second_setup_changes_nothing(bare: Bed):
    inv = bare.prop("InvocationID")
    rc, steps, err = _setup(bare)
    assert rc == 0, err
    assert {s["action"] for s in steps} <= {"unchanged", "ran"}
    assert bare.prop("InvocationID") == inv


def test_the_watchdog_it_installs_runs(bare: Bed):
    c = bare.c
    c.run(["systemctl", "enable", "--now", "ollamactl-watchdog.service"], check=True, timeout=60)
    assert bare.prop("ActiveState", "ollamactl-watchdog.service") == "active"  # Type=notify: ready when active
    rc, _, err = _setup(bare, "--undo")
    assert rc != 0 and "disable --now ollamactl-watchdog.service" in err
    c.run(["systemctl", "disable", "--now", "ollamactl-watchdog.service"], check=True, timeout=60)


def test_undo_takes_it_back_and_members_can_no_longer_restart(bare: Bed):
    c = bare.c
    inv = bare.prop("InvocationID")
    rc, steps, err = _setup(bare, "--undo")
    assert rc == 0, err
    assert {s["path"] for s in steps if s["action"] == "removed"} >= set(FILES)
    for path in FILES:
        assert c.run(["test", "-e", path]).returncode != 0, path
    assert bare.prop("TimeoutStopUSec") != "10s"
    assert bare.prop("LoadState", "ollamactl-watchdog.service") == "not-found"
    r = c.run([EXE, "restart"], user="alice", timeout=120)
    assert r.returncode != 0 and bare.prop("InvocationID") == inv

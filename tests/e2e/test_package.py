"""The Debian package as an admin meets it, on booted Debian 12, 13 and unstable.

What it installs (paths, modes, users, conffile, drop-in, man page, completion),
that lintian is clean, and a whole life cycle on a bare box: install an older
build, upgrade to this one, remove, purge, with ollama.service never restarted
by the maintainer scripts and nothing of ours left after purge.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import time
import zipfile
from pathlib import Path

import pytest

from tests import debbuild, testbed
from tests.e2e import conftest
from tests.e2e.conftest import UNIT, Bed

OLD_VERSION = "0.0.9-1"
RULE = "/usr/share/polkit-1/rules.d/50-ollamactl.rules"
DROP_IN = "/usr/lib/systemd/system/ollama.service.d/ollamactl.conf"
CONFIG = "/etc/ollamactl/config.toml"
#: TimeoutStopSec in seconds as the shipped drop-in sets it (the README says why).
STOP_S = int(
    next(
        line.split("=", 1)[1].strip().removesuffix("s")
        for line in (testbed.REPO_ROOT / "packaging/systemd/ollama.service.d/ollamactl.conf").read_text().splitlines()
        if line.startswith("TimeoutStopSec=")
    )
)


def _stat(bed: Bed, path: str) -> str:
    return bed.c.run(["stat", "-c", "%a %U:%G %F", path], check=True).stdout.strip()


def test_lintian_reports_no_errors_or_warnings(deb: Path):
    build = debbuild.build()
    counts = build.lintian_counts()
    conftest.PACKAGE_REPORT.append(
        f"{build.deb.name}: {build.deb.stat().st_size} bytes; lintian --info --pedantic: "
        + (", ".join(f"{n} {k}" for k, n in sorted(counts.items())) or "no tags")
    )
    assert not counts.get("E") and not counts.get("W"), build.lintian


#: Every file of packaging/systemd and packaging/polkit, their one copy in git -> where the .deb installs it.
#: The wheel carries each as ollamactl/_data/<the same path> (pyproject.toml maps the directories in).
SHIPPED = {
    "systemd/ollamactl-watchdog.service": "usr/lib/systemd/system/ollamactl-watchdog.service",
    "systemd/ollama.service.d/ollamactl.conf": "usr/lib/systemd/system/ollama.service.d/ollamactl.conf",
    "systemd/ollamactl.sysusers": "usr/lib/sysusers.d/ollamactl.conf",
    "systemd/ollamactl.tmpfiles": "usr/lib/tmpfiles.d/ollamactl.conf",
    "polkit/50-ollamactl.rules": "usr/share/polkit-1/rules.d/50-ollamactl.rules",
}


def _build_wheel(out: Path) -> Path:
    """``make wheel``'s recipe on a fresh copy of the sources, so a stale build/ of the checkout cannot leak in."""
    src = out / "src"
    for rel in (*debbuild.SOURCES, "LICENSE"):
        path = testbed.REPO_ROOT / rel
        if path.is_dir():
            shutil.copytree(path, src / rel, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
        else:
            (src / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(path, src / rel)
    r = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "-w", str(out), str(src)],
        capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert r.returncode == 0, r.stdout + r.stderr
    (wheel,) = out.glob("ollamactl-*.whl")
    return wheel


def _deb_path(root: Path, path: str) -> Path:
    """Where the extracted .deb has ``path``; bookworm's debhelper puts units in /lib (the same place, merged /usr)."""
    if not (root / path).exists() and path.startswith("usr/lib/systemd/"):
        return root / path.removeprefix("usr/")
    return root / path


def test_the_wheel_and_the_deb_carry_packaging_systemd_and_polkit_byte_for_byte(deb: Path, tmp_path: Path):
    """Issue 16: one copy of the unit files and the polkit rule in git, and both artefacts carry exactly it."""
    packaging = testbed.REPO_ROOT / "packaging"
    ours = {
        str(f.relative_to(packaging)): f.read_bytes()
        for top in ("systemd", "polkit")
        for f in sorted((packaging / top).rglob("*"))
        if f.is_file()
    }
    assert set(ours) == set(SHIPPED), "a file of packaging/systemd or packaging/polkit has no place in SHIPPED"
    assert not (testbed.REPO_ROOT / "ollamactl" / "_data").exists(), "a second copy in the package's source"

    with zipfile.ZipFile(_build_wheel(tmp_path / "wheel")) as whl:
        carried = {n.removeprefix("ollamactl/_data/"): whl.read(n) for n in whl.namelist() if "/_data/" in n}
    assert set(carried) == set(ours), f"the wheel's ollamactl/_data: {sorted(carried)}"

    root = tmp_path / "deb"
    subprocess.run(["dpkg-deb", "-x", str(deb), str(root)], check=True, capture_output=True, timeout=120)
    assert not list(root.rglob("_data")), "the .deb ships a second copy (debian/rules removes the wheel's)"
    differ = [f"wheel: ollamactl/_data/{rel}" for rel, body in ours.items() if carried[rel] != body]
    for rel, body in ours.items():
        path = _deb_path(root, SHIPPED[rel])
        if not path.is_file() or path.read_bytes() != body:
            differ.append(f".deb: /{path.relative_to(root)} (from packaging/{rel})")
    assert not differ, "not byte-identical to packaging/: " + ", ".join(differ)
    conftest.PACKAGE_REPORT.append(
        f"the wheel and {deb.name} carry the {len(ours)} files of packaging/systemd and packaging/polkit byte for byte"
    )


def test_depends_only_on_distro_packages(bed: Bed):
    depends = bed.c.run(["dpkg-query", "-W", "-f", "${Depends}", "ollamactl"], check=True).stdout
    names = {d.strip().split()[0].split(":")[0] for d in depends.split(",")}
    assert names == {"polkitd", "python3", "python3-dbus-next", "python3-loguru", "python3-pydantic", "systemd"}


def test_installed_files_users_and_modes(bed: Bed):
    assert bed.c.run(["sh", "-c", "command -v ollamactl"], check=True).stdout.strip() == "/usr/bin/ollamactl"
    where = bed.python("import ollamactl; print(ollamactl.__file__)", user="bob").stdout.strip()
    assert where == "/usr/lib/python3/dist-packages/ollamactl/__init__.py"
    assert bed.c.run(["test", "-f", RULE]).returncode == 0
    assert _stat(bed, RULE).startswith("644 root:root regular")
    # sysusers: group ollamactl, and a system user ollamactl in it for the watchdog
    group = bed.c.run(["getent", "group", "ollamactl"], check=True).stdout.strip().split(":")
    user = bed.c.run(["getent", "passwd", "ollamactl"], check=True).stdout.strip().split(":")
    assert int(group[2]) < 1000 and int(user[2]) < 1000 and user[3] == group[2]
    assert user[6] in ("/usr/sbin/nologin", "/sbin/nologin")
    assert _stat(bed, "/run/ollamactl") == "2770 root:ollamactl directory"
    conffiles = bed.c.run(["dpkg-query", "-W", "-f", "${Conffiles}", "ollamactl"], check=True).stdout
    assert CONFIG in conffiles
    text = bed.c.run(["cat", CONFIG], check=True).stdout
    assert all(line == "" or line.startswith("#") for line in text.splitlines())
    assert bed.ollamactl("status", "--config", CONFIG, user="bob").returncode == 0  # valid as shipped
    assert _stat(bed, DROP_IN).startswith("644 root:root")
    # the watchdog unit is shipped but neither enabled nor started
    assert bed.prop("UnitFileState", unit="ollamactl-watchdog.service") == "disabled"
    assert bed.prop("ActiveState", unit="ollamactl-watchdog.service") == "inactive"
    # the alerting rules that go with the metrics, as an example for the admin's Prometheus
    rules = bed.c.run(["cat", "/usr/share/doc/ollamactl/examples/ollamactl.rules.yml"], check=True).stdout
    assert rules == (testbed.REPO_ROOT / "packaging/prometheus/ollamactl.rules.yml").read_text()


def test_drop_in_bounds_timeout_stop(bed: Bed):
    assert bed.prop("TimeoutStopUSec") == f"{STOP_S}s"
    assert DROP_IN in bed.prop("DropInPaths")


def test_a_wedged_ollama_that_ignores_sigterm_is_killed_in_seconds_not_90(healthy: Bed):
    healthy.set_mode("ignore-sigterm")
    try:
        healthy.c.run(["systemctl", "restart", UNIT], check=True)  # the new process ignores SIGTERM
        healthy.recover_api()
        t0 = time.monotonic()
        r = healthy.ollamactl("restart", "--timeout", "80")
        took = time.monotonic() - t0
    finally:
        healthy.set_mode("ok")
    assert r.returncode == 0, r.stderr
    conftest.PACKAGE_REPORT.append(f"{healthy.suite}: restart of an Ollama ignoring SIGTERM took {took:.1f} s")
    assert STOP_S - 1 < took < STOP_S + 20, f"restart took {took:.1f}s; TimeoutStopSec={STOP_S}s should bound it"


def test_man_page_and_bash_completion(bed: Bed):
    man = bed.c.sh("zcat /usr/share/man/man1/ollamactl.1.gz", check=True).stdout
    for command in ("restart", "status", "policy render", "policy install", "doctor"):
        assert f'.SS "ollamactl {command}"' in man
    complete = (
        ". /usr/share/bash-completion/completions/ollamactl\n"
        "COMP_WORDS=(ollamactl policy render --verb tr); COMP_CWORD=4; _ollamactl; echo ${COMPREPLY[@]}\n"
        "COMP_WORDS=(ollamactl pol); COMP_CWORD=1; _ollamactl; echo ${COMPREPLY[@]}\n"
    )
    out = bed.c.run(["bash", "-c", complete], user="bob", check=True).stdout.splitlines()
    assert out == ["try-restart", "policy"]


@pytest.fixture(scope="module")
def old_deb(deb: Path) -> Path:
    return debbuild.build(version=OLD_VERSION).deb


@pytest.mark.parametrize("suite", testbed.SUITES)
def test_install_upgrade_remove_purge(suite: str, deb: Path, old_deb: Path):
    with testbed.boot(suite) as c:  # a bare box: no ollamactl yet
        bed = Bed(c)
        evidence = []

        def ollama_untouched() -> tuple[str, str]:
            return bed.prop("InvocationID"), bed.prop("NRestarts")

        def step(what: str, argv: list[str]) -> None:
            t0 = time.monotonic()
            c.run(argv, env={"DEBIAN_FRONTEND": "noninteractive"}, timeout=300, check=True)
            version = c.run(["dpkg-query", "-W", "-f", "${db:Status-Abbrev} ${Version}", "ollamactl"]).stdout.strip()
            evidence.append(f"{suite}: {what}: {version or 'not known to dpkg'} ({time.monotonic() - t0:.1f} s)")

        ollama = ollama_untouched()
        c.write_file(f"/root/{old_deb.name}", old_deb.read_bytes())
        c.write_file(f"/root/{deb.name}", deb.read_bytes())

        step("install 0.0.9-1", ["apt-get", "install", "-y", "-q", f"/root/{old_deb.name}"])
        assert bed.ollamactl("--version", user="bob").stdout.strip() == "ollamactl 0.0.9"
        assert bed.prop("TimeoutStopUSec") == f"{STOP_S}s"  # postinst's daemon-reload, without a restart
        # the admin edits the conffile; the upgrade must keep the edit and not prompt
        c.sh(f"sed -i 's/^#timeout = 90.0$/timeout = 60.0/' {CONFIG}", check=True)
        c.run(["usermod", "-aG", "ollamactl", "alice"], check=True)

        step("upgrade to this build", ["apt-get", "install", "-y", "-q", f"/root/{deb.name}"])
        assert bed.ollamactl("--version", user="bob").stdout.strip().startswith("ollamactl 0.1")
        assert "timeout = 60.0" in c.run(["cat", CONFIG], check=True).stdout
        assert ollama_untouched() == ollama, "install or upgrade restarted ollama.service"
        r = bed.ollamactl("restart", "--reason", "after upgrade")
        assert r.returncode == 0, r.stderr  # the grant works for alice
        ollama = ollama_untouched()  # (that restart was alice's, not the package's)
        files = c.run(["dpkg", "-L", "ollamactl"], check=True).stdout.split()

        step("remove", ["apt-get", "remove", "-y", "-q", "ollamactl"])
        assert c.run(["test", "-e", "/usr/bin/ollamactl"]).returncode != 0
        assert c.run(["test", "-e", RULE]).returncode != 0
        assert c.run(["test", "-f", CONFIG]).returncode == 0  # a conffile stays until purge
        assert bed.prop("TimeoutStopUSec") == "1min 30s"  # drop-in gone, daemon-reloaded

        step("purge", ["apt-get", "purge", "-y", "-q", "ollamactl"])
        files_left = 'for f in "$@"; do if [ -f "$f" ] || { [ -L "$f" ] && [ ! -d "$f" ]; }; then echo "$f"; fi; done'
        left = c.run(["sh", "-c", files_left, "sh", *files], check=True).stdout.split()
        left += c.sh(
            "ls -d /etc/ollamactl /run/ollamactl /usr/lib/python3/dist-packages/ollamactl "
            "/usr/lib/systemd/system/ollama.service.d 2>/dev/null || true",
            check=True,
        ).stdout.split()
        assert left == [], f"purge left files of ours: {left}"
        assert c.run(["dpkg-query", "-W", "-f", "${db:Status-Abbrev}", "ollamactl"]).stdout.strip() in ("", "un")
        assert c.run(["getent", "group", "ollamactl"]).returncode == 0  # may stay (Debian practice)
        assert ollama_untouched() == ollama, "a maintainer script restarted ollama.service"
        assert bed.api_answers()
        evidence.append(f"{suite}: ollama.service InvocationID/NRestarts unchanged by install, upgrade, remove, purge")
        conftest.PACKAGE_REPORT.extend(evidence)


@pytest.mark.parametrize("suite", testbed.SUITES)
def test_wheel_install_with_policy_install_gives_the_same_grant(suite: str, tmp_path: Path):
    """The README's recipe for other distributions: wheel + groupadd + tmpfiles + policy install."""
    import subprocess
    import sys

    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "-w", str(tmp_path), str(testbed.REPO_ROOT)],
        check=True,
        timeout=600,
    )
    (wheel,) = tmp_path.glob("ollamactl-*.whl")
    with testbed.boot(suite) as c:  # a bare box
        bed = Bed(c)
        c.write_file(f"/root/{wheel.name}", wheel.read_bytes())
        c.sh(
            "pip install -q --no-deps --no-index --break-system-packages --root-user-action=ignore "
            f"/root/{wheel.name}\n"
            "groupadd --system ollamactl\n"
            "echo 'd /run/ollamactl 2770 root ollamactl -' > /etc/tmpfiles.d/ollamactl.conf\n"
            "systemd-tmpfiles --create /etc/tmpfiles.d/ollamactl.conf\n"
            "usermod -aG ollamactl alice\n",
            check=True,
        )
        assert bed.ollamactl("restart").returncode == 3  # no rule yet
        r = bed.ollamactl("policy", "install", "--group", "ollamactl", user="root")
        assert r.returncode == 0, r.stderr
        assert "/etc/polkit-1/rules.d/50-ollamactl-ollamactl-ollama.service.rules" in r.stdout
        c.run(["rm", "-f", "/run/ollamactl/state.json"], check=True)
        end = time.monotonic() + 10
        while (r := bed.ollamactl("restart")).returncode != 0:
            assert time.monotonic() < end, r.stderr
            time.sleep(0.3)
        assert bed.ollamactl("restart", user="bob").returncode == 3
        rc, out = bed.json("doctor")
        assert rc == 0, out

"""Fixtures that boot one real Debian container per release and act in it as users."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import time
from pathlib import Path

import pytest

from tests import testbed

REPO = Path(__file__).resolve().parents[2]
UNIT = "ollama.service"
MODE_FILE = "/etc/ollama-standin/mode"
CONFIG_FILE = "/etc/ollamactl/config.toml"


TIMINGS: list[str] = []  # recovery figures, printed at the end of the run
#: (suite, case, expected, outcome, D-Bus error, state unchanged) rows of the denial matrix.
MATRIX: list[tuple[str, str, str, str, str, str]] = []
#: Free-form lines from the package tests (sizes, lintian, install/upgrade/purge evidence).
PACKAGE_REPORT: list[str] = []
#: (suite, attack, actor, target, defended "yes"/"no", evidence) rows from tests/e2e/test_attacks.py.
ATTACKS: list[tuple[str, str, str, str, str, str]] = []


#: Seconds spent per release (setup, call and teardown of its tests, boots included), for the CI budget.
SUITE_SECONDS: dict[str, float] = {}


def _suite_of(nodeid: str) -> str | None:
    """The Debian release a test ran on, from its id (``test_x[bookworm-...]``), or None."""
    if not nodeid.endswith("]") or "[" not in nodeid:
        return None
    params = nodeid[nodeid.rindex("[") + 1 : -1].split("-")
    return next((p for p in params if p in testbed.SUITES), None)


def pytest_runtest_logreport(report):
    suite = _suite_of(report.nodeid)
    if suite is not None and "e2e/" in report.nodeid:
        SUITE_SECONDS[suite] = SUITE_SECONDS.get(suite, 0.0) + report.duration


def pytest_terminal_summary(terminalreporter):
    if SUITE_SECONDS:
        terminalreporter.section("end-to-end time per release")
        for suite in testbed.SUITES:
            if suite in SUITE_SECONDS:
                terminalreporter.write_line(f"{suite:9} {SUITE_SECONDS[suite] / 60:5.1f} min")
        total = sum(SUITE_SECONDS.values())
        terminalreporter.write_line(f"{'all':9} {total / 60:5.1f} min ({len(SUITE_SECONDS)} releases)")
    if TIMINGS:
        terminalreporter.section("recovery timings")
        for line in TIMINGS:
            terminalreporter.write_line(line)
    if MATRIX:
        terminalreporter.section("denial matrix")
        head = ("suite", "case", "expected", "outcome", "D-Bus error", "system unchanged")
        widths = [max(len(str(r[i])) for r in [head, *MATRIX]) for i in range(len(head))]
        for row in [head, *sorted(MATRIX, key=lambda r: (r[0], r[2] != "allowed", r[1]))]:
            terminalreporter.write_line("  ".join(str(v).ljust(w) for v, w in zip(row, widths, strict=True)))
    if PACKAGE_REPORT:
        terminalreporter.section("package")
        for line in PACKAGE_REPORT:
            terminalreporter.write_line(line)
    if ATTACKS:
        _attacks_table(terminalreporter)


def _attacks_table(terminalreporter) -> None:
    """One table per release: every attack tried, by whom, against what, and whether it was defended."""
    terminalreporter.section("attacks")
    head = ("attack", "actor", "target", "defended", "evidence")
    for suite in sorted({r[0] for r in ATTACKS}):
        rows = [r[1:] for r in ATTACKS if r[0] == suite]
        defended = sum(r[3] == "yes" for r in rows)
        attacks = len({r[0] for r in rows})
        terminalreporter.write_line(
            f"{suite}: {attacks} attacks, {len(rows)} checks, {defended} defended, {len(rows) - defended} not defended"
        )
        widths = [min(80, max(len(str(r[i])) for r in [head, *rows])) for i in range(len(head) - 1)]
        for row in [head, *rows]:
            cells = [str(v)[:80].ljust(w) for v, w in zip(row[:-1], widths, strict=True)]
            terminalreporter.write_line("  " + "  ".join(cells) + "  " + str(row[-1]))


def pytest_collection_modifyitems(items):
    for item in items:
        if "/e2e/" in str(item.fspath):
            item.add_marker(pytest.mark.e2e)


def _missing_prereq() -> str | None:
    if os.geteuid() != 0:
        return "the end-to-end suite needs root (it boots systemd-nspawn containers)"
    for tool in ("systemd-nspawn", "debootstrap", "nsenter"):
        if shutil.which(tool) is None:
            return f"{tool} is not installed (apt-get install systemd-container debootstrap)"
    return None


@pytest.fixture(scope="session")
def deb() -> Path:
    """The project as an admin gets it: the .deb from tests/debbuild.py (cached by source hash).

    OLLAMACTL_DEB=path tests a given .deb instead (make test passes the one in dist/).
    """
    why = _missing_prereq()
    if why:
        if os.environ.get("OLLAMACTL_E2E_REQUIRED"):
            pytest.fail(why)
        pytest.skip(why)
    given = os.environ.get("OLLAMACTL_DEB")
    if given:
        return Path(given).resolve()
    from tests import debbuild

    return debbuild.build().deb


@pytest.fixture(scope="session", params=testbed.SUITES)
def bed(request, deb) -> Bed:
    """A booted container for one Debian release with the .deb installed, shared by that release's tests."""
    container = testbed.boot(request.param, deb=deb)
    request.addfinalizer(container.stop)
    return Bed(container)


class Bed:
    """Test helpers over a booted testbed.Container."""

    def __init__(self, container: testbed.Container) -> None:
        self.c = container
        self.suite = container.suite

    def ollamactl(
        self, *args: str, user: str = "alice", env: dict[str, str] | None = None, timeout: float = 120
    ) -> subprocess.CompletedProcess[str]:
        return self.c.run(["ollamactl", *args], user=user, env=env, timeout=timeout)

    def json(self, *args: str, **kw) -> tuple[int, dict]:
        r = self.ollamactl(*args, "--json", **kw)
        assert r.stdout.count("\n") == 1, f"expected one JSON line, got {r.stdout!r} / {r.stderr!r}"
        return r.returncode, json.loads(r.stdout)

    def prop(self, name: str, unit: str = UNIT) -> str:
        return self.c.run(["systemctl", "show", "-p", name, "--value", unit], check=True).stdout.strip()

    def python(self, code: str, user: str = "alice") -> subprocess.CompletedProcess[str]:
        return self.c.run(["python3", "-c", code], user=user, timeout=120)

    def saved_config(self) -> str | None:
        """The packaged /etc/ollamactl/config.toml (a conffile), for a test that writes its own to put back."""
        r = self.c.run(["cat", CONFIG_FILE])
        return r.stdout if r.returncode == 0 else None

    def restore_config(self, saved: str | None) -> None:
        if saved is None:
            self.c.run(["rm", "-f", CONFIG_FILE], check=True)
        else:
            self.c.write_file(CONFIG_FILE, saved)

    def set_mode(self, mode: str) -> None:
        self.c.write_file(MODE_FILE, mode + "\n")

    def api_answers(self, timeout: float = 1.0) -> bool:
        code = (
            "import urllib.request,sys\n"
            f"urllib.request.urlopen('http://127.0.0.1:11434/api/version', timeout={timeout}).read()\n"
        )
        return self.python(code, user="root").returncode == 0

    def recover_api(self, timeout: float = 60) -> None:
        """Wait until Ollama answers (after something else restarted it)."""
        end = time.monotonic() + timeout
        while not self.api_answers():
            assert time.monotonic() < end, "ollama.service did not answer again"
            time.sleep(0.2)

    def recover(self, timeout: float = 60) -> None:
        """Put ollama.service back to healthy for the next test, whatever this one did."""
        self.set_mode("ok")
        self.c.run(["systemctl", "reset-failed", UNIT])
        self.c.run(["systemctl", "restart", UNIT], check=True)
        self.recover_api(timeout)


@pytest.fixture
def healthy(bed: Bed) -> Bed:
    """The bed, with Ollama answering before and put back after the test.

    Tests restart ollama.service many times in a row; systemd counts those
    against StartLimitBurst (5 in 10 s), so each test starts with that
    counter reset (``systemctl reset-failed`` does it), and ollamactl's own
    restart budget too, as on a real box where restarts are minutes apart.
    """
    bed.c.run(["systemctl", "reset-failed", UNIT], check=True)
    bed.c.run(["rm", "-f", "/run/ollamactl/state.json"], check=True)  # a fresh restart budget
    if not bed.api_answers():
        bed.recover()
    yield bed
    mode = bed.c.run(["cat", MODE_FILE]).stdout.strip()
    if mode not in ("", "ok") or bed.prop("ActiveState") != "active" or not bed.api_answers():
        bed.recover()

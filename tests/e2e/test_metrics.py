"""Metrics for the monitoring people already run: Debian's prometheus-node-exporter serves ours.

The packaged watchdog writes /var/lib/prometheus/node-exporter/ollamactl.prom (the
package grants its user write access there by an ACL); the real node_exporter,
started in the container, reads it through its textfile collector.  After a
forced wedge and the watchdog's recovery, its HTTP endpoint must serve our series
with the values that happened.
"""

from __future__ import annotations

import re
import time

from tests.e2e.conftest import Bed
from tests.e2e.test_recovery import report
from tests.e2e.test_watch import measure, restarts, settle, watched  # noqa: F401  (watched: the fixture)

EXPORTER = "prometheus-node-exporter.service"
SCRAPE = (
    "import urllib.request; print(urllib.request.urlopen('http://127.0.0.1:9100/metrics', timeout=5).read().decode())"
)
_LINE = re.compile(r"^([a-z_:]+)(?:\{(.*)\})? (\S+)$")


def scrape(bed: Bed) -> dict[tuple[str, frozenset], float]:
    """{(name, labels): value} of node_exporter's ollamactl_* and textfile series."""
    r = bed.python(SCRAPE, user="root")
    assert r.returncode == 0, r.stderr
    out = {}
    for line in r.stdout.splitlines():
        m = _LINE.match(line)
        if m and (m.group(1).startswith("ollamactl_") or m.group(1).startswith("node_textfile_")):
            labels = frozenset(re.findall(r'(\w+)="([^"]*)"', m.group(2) or ""))
            out[(m.group(1), labels)] = float(m.group(3))
    return out


def value(series: dict, name: str, **labels: str) -> float | None:
    want = set(labels.items())
    found = [v for (n, ls), v in series.items() if n == name and want <= ls]
    assert len(found) <= 1, (name, labels, found)
    return found[0] if found else None


def test_node_exporter_serves_our_series_after_a_wedge_and_a_recovery(healthy: Bed, watched):  # noqa: F811
    c = healthy.c
    c.run(["systemctl", "start", EXPORTER], check=True, timeout=60)
    try:
        since = watched()
        settle(healthy, 10)
        end = time.monotonic() + 20
        while value(scrape(healthy), "ollamactl_watchdog_up") != 1:
            assert time.monotonic() < end, c.run(["journalctl", "-u", "ollamactl-watchdog", "-n", "30"]).stdout
            time.sleep(0.5)
        before = scrape(healthy)
        who = {"instance": "ollama", "unit": "ollama.service"}
        assert value(before, "ollamactl_probe_outcome", outcome="healthy", **who) == 1
        assert value(before, "ollamactl_restarts_total", outcome="queued", **who) == 0
        assert value(before, "ollamactl_restart_budget_remaining", **who) == 3
        assert value(before, "node_textfile_scrape_error") == 0

        m = measure(healthy, "SIGUSR2", bound=30)  # the full wedge; the watchdog restarts it
        assert restarts(healthy, since) == 1
        end = time.monotonic() + 20
        while True:  # the next writes: healthy again, with the recovery time
            after = scrape(healthy)
            if value(after, "ollamactl_last_recovery_seconds", **who) is not None and (
                value(after, "ollamactl_probe_outcome", outcome="healthy", **who) == 1
            ):
                break
            assert time.monotonic() < end, after
            time.sleep(0.5)
        assert value(after, "ollamactl_restarts_total", outcome="queued", **who) == 1
        assert value(after, "ollamactl_restart_budget_remaining", **who) == 2
        assert value(after, "ollamactl_probe_consecutive_failures", **who) == 0
        recovery = value(after, "ollamactl_last_recovery_seconds", **who)
        assert 0 < recovery < 30, (recovery, m)  # from the restart to the first healthy verdict
        beat = value(after, "ollamactl_watchdog_heartbeat_timestamp_seconds")
        assert abs(beat - time.time()) < 10 and value(after, "node_textfile_scrape_error") == 0
        link = c.run(["readlink", "/var/lib/prometheus/node-exporter/ollamactl.prom"], check=True).stdout.strip()
        assert link == "/run/ollamactl-metrics/ollamactl.prom"  # made by the unit's ExecStartPre=+, as root
        mode = c.run(["stat", "-c", "%a %U", link], check=True)
        assert mode.stdout.split() == ["644", "ollamactl"], mode.stdout  # written by the watchdog's user
        # a one-off scrape by a member prints the same families
        r = healthy.ollamactl("metrics")
        line = 'ollamactl_probe_outcome{instance="ollama",unit="ollama.service",outcome="healthy"} 1'
        assert r.returncode == 0 and line in r.stdout.splitlines(), r.stdout
        c.run(["systemctl", "stop", "ollamactl-watchdog.service"], check=True, timeout=60)
        stopped = scrape(healthy)  # its last write: stopped, not silently stale
        assert value(stopped, "ollamactl_watchdog_up") == 0 and value(stopped, "node_textfile_scrape_error") == 0
        report(healthy, "metrics via node_exporter", f"restarts_total 1, last recovery {recovery:.1f}s")
    finally:
        c.run(["systemctl", "stop", EXPORTER], timeout=60)

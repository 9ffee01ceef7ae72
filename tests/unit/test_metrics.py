"""Prometheus metrics: the exposition format node_exporter's textfile collector reads, written atomically."""

from __future__ import annotations

import asyncio
import os
import re
import stat
from pathlib import Path

import pytest

from ollamactl import metrics
from ollamactl.metrics import InstanceMetrics, WatchdogMetrics, render, write_textfile
from ollamactl.watch import Notifier, Watcher
from tests.unit.test_restart_flow import make, wire  # noqa: F401  (the fixture)

# The text format's sample line: name, optional {label="value",...}, a value (prometheus.io/docs/instrumenting/
# exposition_formats).  Label values may hold any character but \, " and newline, which are escaped.
_SAMPLE = re.compile(r'[a-zA-Z_:][a-zA-Z0-9_:]*(\{([a-zA-Z_][a-zA-Z0-9_]*="([^"\\\n]|\\[\\"n])*",?)*\})? \S+')
_NAME_OK = re.compile(r"ollamactl_[a-z_]+")


def _families(text: str) -> dict[str, dict[str, float]]:
    """{family: {labels: value}} of the text, checking every line against the format as it goes."""
    out: dict[str, dict[str, float]] = {}
    current = None
    for line in text.splitlines():
        if line.startswith("# HELP "):
            current = line.split()[2]
            assert _NAME_OK.fullmatch(current) and current not in out, line
            out[current] = {}
        elif line.startswith("# TYPE "):
            assert line.split()[2] == current and line.split()[3] in ("gauge", "counter"), line
            assert line.split()[3] != "counter" or current.endswith("_total"), line  # counters end in _total
        else:
            assert _SAMPLE.fullmatch(line) and line.startswith(current), line
            name_labels, value = line.rsplit(" ", 1)
            out[current][name_labels[len(current) :]] = float(value)
    return out


def test_the_text_is_the_exposition_format_with_every_family_and_outcome():
    m = InstanceMetrics(
        "gpu0", "ollama@11501.service", "wedged", 3, 1700000000.25, last_recovery_seconds=2.5, budget_remaining=1
    )
    m.restarts["queued"] = 2
    text = render([m], WatchdogMetrics(started_at=1699999000.0, heartbeat=1700000001.5))
    fam = _families(text)
    who = '{instance="gpu0",unit="ollama@11501.service"'
    assert fam["ollamactl_probe_outcome"][who + ',outcome="wedged"}'] == 1
    assert sum(fam["ollamactl_probe_outcome"].values()) == 1 and len(fam["ollamactl_probe_outcome"]) == 9
    assert fam["ollamactl_probe_consecutive_failures"][who + "}"] == 3
    assert fam["ollamactl_restarts_total"][who + ',outcome="queued"}'] == 2
    assert len(fam["ollamactl_restarts_total"]) == len(metrics.RESTART_OUTCOMES)
    assert fam["ollamactl_last_recovery_seconds"][who + "}"] == 2.5
    assert fam["ollamactl_restart_budget_remaining"][who + "}"] == 1
    assert fam["ollamactl_watchdog_up"][""] == 1 and fam["ollamactl_watchdog_heartbeat_timestamp_seconds"][""] > 1.7e9
    assert text.endswith("\n")


def test_label_values_are_escaped():
    text = render([InstanceMetrics('a"b\\c\nd', "x.service", "healthy")])
    assert 'instance="a\\"b\\\\c\\nd"' in text
    _families(text)


def test_a_one_off_scrape_leaves_out_what_only_the_watchdog_knows():
    fam = _families(render([InstanceMetrics("gpu0", "u.service", "healthy", None, 1.0, None)]))
    assert not fam["ollamactl_probe_consecutive_failures"] and not fam["ollamactl_restarts_total"]
    assert "ollamactl_watchdog_up" not in fam and fam["ollamactl_probe_outcome"]


def test_the_file_is_replaced_atomically_readable_by_node_exporter_and_never_written_through_a_link(tmp_path: Path):
    victim = tmp_path / "victim"
    victim.write_text("keep")
    os.symlink(victim, tmp_path / f".ollamactl.prom.{os.getpid()}.tmp")  # planted where our temporary file goes
    old = os.umask(0o077)
    try:
        path = write_textfile(str(tmp_path), "a 1\n")
    finally:
        os.umask(old)
    assert Path(path).read_text() == "a 1\n" and victim.read_text() == "keep"
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o644  # the watchdog's UMask=0027 must not hide it
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ollamactl.prom", "victim"]  # no temporary left
    inode = os.stat(path).st_ino
    write_textfile(str(tmp_path), "a 2\n")
    assert Path(path).read_text() == "a 2\n" and os.stat(path).st_ino != inode  # a new file renamed over


def test_a_missing_directory_is_an_error_that_says_what_to_do(tmp_path: Path):
    with pytest.raises(metrics.MetricsWriteError, match="set metrics_dir"):
        write_textfile(str(tmp_path / "absent"), "a 1\n")


def test_the_watchdog_counts_its_restarts_and_its_budget(wire):  # noqa: F811
    _, systemd, _ = wire
    watcher = Watcher(make(wire, max_restarts=2, restart_window=600, restart_backoff=0), Notifier(address=""))

    async def go() -> None:
        await watcher.recover("wedged", "no answer", None)
        await watcher.recover("wedged", "no answer", None)
        watcher.hold_until = 0  # past the backoff, the budget itself says no
        await watcher.recover("wedged", "no answer", None)

    asyncio.run(go())
    m = watcher.metrics
    assert m.restarts["queued"] == 2 and m.restarts["budget-exhausted"] == 1 and m.budget_remaining == 0
    assert (m.instance, m.unit) == ("ollama", "ollama.service")


def test_link_puts_a_symlink_in_node_exporters_directory_following_no_link(tmp_path: Path):
    d = tmp_path / "var" / "lib" / "prometheus" / "node-exporter"
    d.mkdir(parents=True)
    target = str(tmp_path / "run" / "ollamactl.prom")
    assert metrics.link_textfile(str(d), target).startswith("linked")
    assert os.readlink(d / "ollamactl.prom") == target
    assert "already links" in metrics.link_textfile(str(d), target)
    os.unlink(d / "ollamactl.prom")
    os.symlink("/stale", d / "ollamactl.prom")  # an old link (another target): replaced
    assert metrics.link_textfile(str(d), target).startswith("linked") and os.readlink(d / "ollamactl.prom") == target
    os.unlink(d / "ollamactl.prom")
    (d / "ollamactl.prom").write_text("someone's\n")  # a file we did not make: left alone
    assert "left alone" in metrics.link_textfile(str(d), target) and (d / "ollamactl.prom").read_text() == "someone's\n"
    assert "does not exist" in metrics.link_textfile(str(tmp_path / "absent"), target)


def test_link_refuses_a_directory_swapped_for_a_symlink(tmp_path: Path):
    """node_exporter's parent belongs to its user: a link put in place of a directory is never followed."""
    elsewhere = tmp_path / "etc"
    elsewhere.mkdir()
    (tmp_path / "prometheus").mkdir()
    os.symlink(elsewhere, tmp_path / "prometheus" / "node-exporter")
    with pytest.raises(metrics.MetricsWriteError, match="without following links"):
        metrics.link_textfile(str(tmp_path / "prometheus" / "node-exporter"), "/run/x.prom")
    assert list(elsewhere.iterdir()) == []


@pytest.mark.parametrize("where", ["parent", "last"])
def test_a_symlinked_metrics_directory_is_refused_and_nothing_is_written_through_it(tmp_path: Path, where: str):
    """Root running ``watch`` by hand: a link someone planted on the way to metrics_dir is never followed."""
    elsewhere = tmp_path / "member"
    (elsewhere / "node-exporter").mkdir(parents=True)
    if where == "parent":
        os.symlink(elsewhere, tmp_path / "prometheus")
    else:
        (tmp_path / "prometheus").mkdir()
        os.symlink(elsewhere / "node-exporter", tmp_path / "prometheus" / "node-exporter")
    with pytest.raises(metrics.MetricsWriteError, match="without following links") as info:
        write_textfile(str(tmp_path / "prometheus" / "node-exporter"), "a 1\n")
    assert "set metrics_dir to the real directory" in info.value.message and "\n" not in info.value.message
    assert list((elsewhere / "node-exporter").iterdir()) == []


def test_a_metrics_dir_with_dot_dot_or_relative_is_refused(tmp_path: Path):
    (tmp_path / "a").mkdir()
    for bad in (str(tmp_path / "a" / ".."), "relative/dir"):
        with pytest.raises(metrics.MetricsWriteError, match="absolute path without '..'"):
            write_textfile(bad, "a 1\n")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a"]

"""Reading Ollama's journal: the gin and slog parsers on hostile text, and journalctl under a deadline."""

from __future__ import annotations

import asyncio
import json
import os
import stat
import time

import pytest
from hypothesis import given
from hypothesis import strategies as st

from ollamactl import journal
from ollamactl.journal import JournalFacts, JournalReader, _Output, observe, parse_gin, slog_message

INV = "0123456789abcdef" * 2
GIN = '[GIN] 2026/08/21 - 12:00:01 | 200 |     1.234567s |       127.0.0.1 | POST     "/api/generate"'
START = (
    'time=2026-08-21T12:00:00.000Z level=INFO source=llama_server.go:433 msg="starting llama-server" '
    'cmd="/usr/local/lib/ollama/llama-server --model /x/blobs/sha256-ab --port 40123 --host 127.0.0.1 -np 1"'
)
LOADING = 'time=2026-08-21T12:00:00.001Z level=INFO source=llama_server.go:1048 msg="loading model via llama-server"'
STARTED = (
    'time=2026-08-21T12:00:01.234Z level=INFO source=llama_server.go:1362 msg="llama-server started in 1.23 seconds"'
)
FAILED = 'time=2026-08-21T12:05:00.000Z level=INFO source=sched.go:641 msg="Load failed" model=/x error="timed out"'


# -- the parsers ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("line", "parsed"),
    [
        (GIN, (200, "1.234567s", "POST", "/api/generate")),
        ('[GIN] 2026/08/21 - 12:00:01 | 500 | 2m0s | ::1 | POST     "/api/chat"', (500, "2m0s", "POST", "/api/chat")),
        ('[GIN] x | 200 | 1ms | 127.0.0.1 | GET      "/api/version"', (200, "1ms", "GET", "/api/version")),
        (
            '[GIN] x | 200 | 1ms | 1.2.3.4 | POST     "/v1/chat/completions?x=1"',
            (200, "1ms", "POST", "/v1/chat/completions"),
        ),
        ('[GIN] x | 200 | 1ms | 1.2.3.4 | POST     "/a|b"', (200, "1ms", "POST", "/a|b")),
        ('[GIN] x | 2000 | 1ms | 1.2.3.4 | POST "/api/chat"', None),
        ("[GIN] x | 200 | 1ms | 1.2.3.4", None),
        ("[GIN] x | 200 | 1ms | 1.2.3.4 | POST /api/chat", None),
        ('GIN | 200 | 1ms | 1.2.3.4 | POST "/api/chat"', None),
        ('[GIN] x | ²00 | 1ms | 1.2.3.4 | POST "/api/chat"', None),
    ],
)
def test_parse_gin(line, parsed):
    assert parse_gin(line) == parsed


@pytest.mark.parametrize(
    ("line", "msg"),
    [
        (START, "starting llama-server"),
        (STARTED, "llama-server started in 1.23 seconds"),
        ("time=x level=INFO msg=plain other=1", "plain"),
        ('time=x level=INFO msg="with \\"quotes\\" inside" a=1', 'with "quotes" inside'),
        ('time=x level=INFO msg="unterminated', None),
        ('level=INFO msg="loading model via llama-server"', None),  # not a slog line: no time= first
        ('some prompt text msg="loading model via llama-server"', None),
    ],
)
def test_slog_message(line, msg):
    assert slog_message(line) == msg


def apply(*lines_at):
    facts = JournalFacts(invocation_id=INV, readable=True)
    for line, at in lines_at:
        observe(facts, line, at)
    return facts


def test_a_successful_inference_request_is_progress_and_nothing_else_is():
    facts = apply(
        (GIN.replace('POST     "/api/generate"', 'GET      "/api/version"'), 10.0),  # our own probes
        (GIN.replace("| 200 |", "| 500 |"), 11.0),  # a client that gave up
        (GIN.replace('"/api/generate"', '"/api/show"'), 12.0),
    )
    assert facts.last_completion_at is None
    facts = apply((GIN, 13.0), (GIN.replace('"/api/generate"', '"/api/chat"'), 14.0))
    assert facts.last_completion_at == 14.0 and facts.completed_since(13.5) and not facts.completed_since(14.0)
    assert facts.last_completion == "POST /api/chat 200 in 1.234567s"


def test_the_load_bracket_and_the_runner_port():
    facts = apply((START, 100.0), (LOADING, 100.1))
    assert facts.load_started_at == 100.0 and facts.runners == {40123: 100.0}
    observe(facts, "llama_model_loader: loaded meta data", 150.0)  # the child's own output: a sign of life
    observe(facts, GIN, 160.0)  # someone else's request: not a sign of the load's life
    assert facts.load_activity_at == 150.0
    observe(facts, STARTED, 170.0)
    assert facts.load_started_at is None and facts.load_activity_at is None
    assert apply((LOADING, 1.0), (FAILED, 2.0)).load_started_at is None


@pytest.mark.parametrize("port", ["0", "65536", "999999", "4012x"])
def test_a_bad_port_is_ignored(port):
    assert apply((START.replace("40123", port), 1.0)).runners == {}


def test_runner_ports_are_bounded():
    facts = apply(*((START.replace("40123", str(40000 + i)), float(i)) for i in range(50)))
    assert len(facts.runners) == journal.MAX_RUNNERS and min(facts.runners) == 40000 + 50 - journal.MAX_RUNNERS


@given(st.text(max_size=300), st.floats(0, 2e9))
def test_property_observe_never_raises_and_keeps_only_clean_bounded_text(text, at):
    facts = JournalFacts(readable=True)
    observe(facts, text, at)
    observe(facts, "[GIN] " + text, at)
    observe(facts, "time=x msg=" + text, at)
    assert facts.last_completion.isprintable() and len(facts.last_completion) <= 123
    assert all(isinstance(p, int) and 0 < p <= 65535 for p in facts.runners)


@given(st.text(max_size=200))
def test_property_gin_fields(text):
    parsed = parse_gin("[GIN] x | 200 | 1s | h | " + text)
    if parsed is not None:
        status, latency, method, path = parsed
        assert status == 200 and method.isalpha() and latency == "1s" and "?" not in path


# -- the reader, with journalctl injected ------------------------------------------------------------------


def entry(i: int, message, at: float | None = None, **extra) -> bytes:
    obj = {"__CURSOR": f"s=abc;i={i:x};b=def", "__REALTIME_TIMESTAMP": str(int((at or 1000 + i) * 1e6))}
    obj["MESSAGE"] = message
    obj.update(extra)
    return json.dumps(obj).encode()


class FakeJournalctl:
    """Answers the reader's queries from a list of entries, as journalctl would."""

    def __init__(self, entries, stderr="", returncode=0):
        self.entries = list(entries)  # (seq, message) of Ollama's, or (seq, message, unit) of another writer
        self.calls = []
        self.stderr, self.returncode = stderr, returncode

    async def __call__(self, args, timeout):
        self.calls.append(args)
        units = {a.split("=", 1)[1] for a in args if a.startswith("_SYSTEMD_UNIT=")}
        rows = [(r[0], r[1]) for r in self.entries if (r[2] if len(r) > 2 else "ollama.service") in units]
        if any(a.startswith("--grep=") for a in args):
            rows = [r for r in rows if "msg=" in r[1]]
        for a in args:
            if a.startswith("--after-cursor="):
                seq = int(a.split("i=")[1].split(";")[0], 16)
                rows = [r for r in rows if r[0] > seq]
        lines = int(next(a for a in args if a.startswith("--lines=")).split("=")[1])
        rows = rows[-lines:][::-1] if "--reverse" in args else rows[:lines]
        unit = {r[0]: (r[2] if len(r) > 2 else "ollama.service") for r in self.entries}
        out = b"\n".join(entry(seq, msg, _SYSTEMD_UNIT=unit[seq]) for seq, msg in rows) + (b"\n" if rows else b"")
        return _Output(out, self.stderr, self.returncode, False)


def read(fake, inv=INV, reader=None):
    reader = reader or JournalReader("ollama.service", timeout=5, run=fake)
    return reader, asyncio.run(reader.update(inv))


def test_seed_then_follow_by_cursor():
    fake = FakeJournalctl([(1, START), (2, LOADING), *((i, "noise") for i in range(3, 2000)), (2000, STARTED)])
    reader, facts = read(fake)
    assert facts.readable and facts.runners == {40123: 1001.0} and facts.load_started_at is None
    assert "--reverse" in fake.calls[0] and any(a.startswith("--grep=") for a in fake.calls[1])
    assert "_SYSTEMD_UNIT=ollama.service" in fake.calls[0] and f"_SYSTEMD_INVOCATION_ID={INV}" in fake.calls[0]
    fake.entries.append((2001, GIN))
    _, facts = read(fake, reader=reader)
    assert fake.calls[-1][4] == "--after-cursor=s=abc;i=7d0;b=def" and facts.last_completion_at == 1000 + 2001
    assert len(fake.calls) == 4  # the tail, the load/runner lines, journald's notes; then one read on


def test_a_flood_note_older_than_the_newest_entries_is_still_read():
    """A flood puts thousands of Ollama's lines after journald's "Suppressed" note (more than the newest entries
    read when an invocation is first seen, the burst scales with free space); a fresh probe still names it."""
    note = "Suppressed 4000 messages from ollama.service"
    noise = [(i, "noise") for i in range(3, 3 + 2 * journal.SEED_ENTRIES)]
    fake = FakeJournalctl([(1, START), (2, note, journal.JOURNALD), *noise, (9000, note, "ollama.service")])
    _, facts = read(fake)
    assert facts.dropped == 4000 and facts.dropped_at == 1002.0 and facts.runners == {40123: 1001.0}


def test_a_new_invocation_starts_afresh():
    fake = FakeJournalctl([(1, LOADING)])
    reader, facts = read(fake)
    assert facts.load_started_at is not None
    fake.entries = [(5, "hello")]
    _, facts = read(fake, inv="f" * 32, reader=reader)
    assert facts.invocation_id == "f" * 32 and facts.load_started_at is None


def test_no_permission_is_a_problem_not_an_error():
    fake = FakeJournalctl([], stderr="No journal files were opened due to insufficient permissions.", returncode=1)
    _, facts = read(fake)
    assert not facts.readable and "systemd-journal" in facts.problem and facts.problem.isprintable()


def test_no_entries_for_a_running_invocation_is_a_problem():
    _, facts = read(FakeJournalctl([]))
    assert not facts.readable and "no journal entries" in facts.problem


@pytest.mark.parametrize("inv", [None, "", "x" * 32, INV + "0", "--grep=x"])
def test_a_bad_invocation_id_is_never_passed_on(inv):
    fake = FakeJournalctl([(1, "x")])
    _, facts = read(fake, inv=inv)
    assert fake.calls == [] and not facts.readable


def test_hostile_entries_are_skipped():
    lines = [
        b"not json",
        b"[1, 2]",
        json.dumps({"__CURSOR": "-x", "__REALTIME_TIMESTAMP": "1", "MESSAGE": GIN}).encode(),
        json.dumps({"__CURSOR": "c\x1b", "__REALTIME_TIMESTAMP": "1", "MESSAGE": GIN}).encode(),
        json.dumps({"__CURSOR": "c", "__REALTIME_TIMESTAMP": "1e9", "MESSAGE": GIN}).encode(),
        json.dumps({"__CURSOR": "c", "__REALTIME_TIMESTAMP": "9" * 40, "MESSAGE": GIN}).encode(),
        b"[" * 100_000,
        entry(7, list(GIN.replace("2026", "20\xff").encode("latin-1"))),  # a MESSAGE journalctl shows as bytes
        entry(8, None),
    ]

    async def run(args, timeout):
        return _Output(b"\n".join(lines) + b"\n", "", 0, False)

    _, facts = read(run)
    assert facts.readable and facts.entries == 2 and facts.last_completion_at == 1007.0


# -- the real subprocess: deadline and output cap ------------------------------------------------------


def fake_journalctl(tmp_path, monkeypatch, script):
    path = tmp_path / "journalctl"
    path.write_text("#!/bin/sh\n" + script)
    path.chmod(path.stat().st_mode | stat.S_IXUSR)
    monkeypatch.setenv("PATH", f"{tmp_path}{os.pathsep}{os.environ['PATH']}")


def test_a_journalctl_that_hangs_is_cut_off_at_the_deadline(tmp_path, monkeypatch):
    fake_journalctl(tmp_path, monkeypatch, "exec sleep 60\n")
    reader = JournalReader("ollama.service", timeout=0.5)
    t0 = time.monotonic()
    facts = asyncio.run(reader.update(INV))
    assert time.monotonic() - t0 < 2 and not facts.readable and "did not finish within 0.5s" in facts.problem


def test_a_journalctl_that_floods_is_read_up_to_the_cap(tmp_path, monkeypatch):
    line = entry(1, "x" * 1000).decode()
    fake_journalctl(tmp_path, monkeypatch, f"while :; do echo '{line}'; done\n")
    out = asyncio.run(journal.run_journalctl([], 10))
    assert out.truncated and journal.MAX_OUTPUT <= len(out.stdout) < journal.MAX_OUTPUT + 70_000


def test_a_missing_journalctl_is_a_problem(tmp_path, monkeypatch):
    monkeypatch.setattr(journal, "JOURNALCTL", str(tmp_path / "nowhere"))
    facts = asyncio.run(JournalReader("ollama.service", timeout=2).update(INV))
    assert not facts.readable and "cannot run journalctl" in facts.problem


def test_a_read_that_fails_after_good_ones_keeps_the_facts_but_marks_them_stale():
    fake = FakeJournalctl([(1, START), (2, GIN)])
    reader, facts = read(fake)
    assert facts.readable and facts.failed_reads == 0
    fake.returncode, fake.stderr = 1, "Failed to seek to cursor: Invalid argument"
    for n in range(1, journal.MAX_FAILED_READS + 1):
        _, facts = read(fake, reader=reader)
        assert facts.readable and facts.failed_reads == n and facts.runners == {40123: 1001.0}
    assert any(a.startswith("--after-cursor=") for a in fake.calls[3])
    assert not any(a.startswith("--after-cursor=") for a in fake.calls[-1])  # after a failure: read afresh
    _, facts = read(fake, reader=reader)
    assert not facts.readable and "Failed to seek" in facts.problem  # failing for good: probes alone
    fake.returncode, fake.stderr = 0, ""
    _, facts = read(fake, reader=reader)
    assert facts.readable and facts.failed_reads == 0


def test_a_slow_or_refused_grep_does_not_cost_the_seed():
    """journalctl scans a huge journal back for --grep (or has no PCRE2): the newest entries still count."""

    class SlowGrep(FakeJournalctl):
        async def __call__(self, args, timeout):
            if any(a.startswith("--grep=") for a in args):
                await asyncio.sleep(timeout + 5)
            return await super().__call__(args, timeout)

    reader = JournalReader("ollama.service", timeout=1, run=SlowGrep([(1, "hello"), (2, GIN)]))
    t0 = time.monotonic()
    facts = asyncio.run(reader.update(INV))
    assert facts.readable and facts.last_completion_at == 1002.0 and time.monotonic() - t0 < 1
    _, facts = read(FakeJournalctl([(1, GIN)], stderr="Compiled without pattern matching support"))
    assert facts.readable and facts.last_completion_at == 1001.0


def test_journalds_word_on_a_flood_is_read_and_only_from_journald():
    """Issue 14 §4: any local user can flood Ollama's log over journald's rate limit; journald then logs
    "Suppressed N messages from ollama.service" as itself, naming the invocation in OBJECT_ fields."""
    rows = [
        entry(1, START, _SYSTEMD_UNIT="ollama.service"),
        entry(2, "Suppressed 8123 messages from ollama.service", at=1500.0, _SYSTEMD_UNIT=journal.JOURNALD),
        entry(3, "Suppressed 99 messages from ollama.service", _SYSTEMD_UNIT="ollama.service"),  # Ollama's own text
    ]
    calls = []

    async def run(args, timeout):
        calls.append(args)
        return _Output(b"\n".join(rows) + b"\n", "", 0, False)

    _, facts = read(run)
    assert facts.dropped == 8123 and facts.dropped_at == 1500.0 and facts.entries == 2
    assert calls[0][-5:] == [
        "_SYSTEMD_UNIT=ollama.service",
        f"_SYSTEMD_INVOCATION_ID={INV}",
        "+",
        f"_SYSTEMD_UNIT={journal.JOURNALD}",
        f"OBJECT_SYSTEMD_INVOCATION_ID={INV}",
    ]

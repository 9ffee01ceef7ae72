"""The systemd journal: our records out (native protocol), Ollama's lines in (journalctl).

A record is one datagram to /run/systemd/journal/socket holding KEY=value
lines (a value with a newline uses the length-prefixed form).  Where there
is no journal, records go to stderr with sd-daemon ``<priority>`` prefixes,
which journald and most log collectors understand.  Every value is cleaned of
control characters first (``text.clean``): some come from outside, and
``journalctl`` would print them to an admin's terminal.
"""

from __future__ import annotations

import json
import math
import os
import re
import socket
import struct
import sys
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from ollamactl.text import clean

JOURNAL_SOCKET = "/run/systemd/journal/socket"
IDENTIFIER = "ollamactl"
_MAX_VALUE = 64 * 1024
_MAX_MESSAGE = 4096  # characters of MESSAGE, after cleaning
_MAX_FIELD = 1024  # characters of any other field, after cleaning
_OWN = ("MESSAGE", "PRIORITY", "SYSLOG_IDENTIFIER")
_KEY_RE = re.compile(r"[^A-Z0-9_]")
_PRIORITIES = {"TRACE": 7, "DEBUG": 7, "INFO": 6, "SUCCESS": 5, "WARNING": 4, "ERROR": 3, "CRITICAL": 2}


def field_name(key: str) -> str:
    """A valid journal field name: upper case letters, digits, underscores, no leading underscore."""
    name = _KEY_RE.sub("_", key.upper()).lstrip("_")
    return (name or "FIELD")[:64]


def encode(fields: dict[str, Any]) -> bytes:
    """The native-protocol datagram for ``fields``."""
    out = bytearray()
    for key, value in fields.items():
        if value is None:
            continue
        data = str(value).encode("utf-8", "replace")[:_MAX_VALUE]
        name = key.encode()
        if b"\n" in data:
            out += name + b"\n" + struct.pack("<Q", len(data)) + data + b"\n"
        else:
            out += name + b"=" + data + b"\n"
    return bytes(out)


class Journal:
    """A connectionless writer to journald; falls back to stderr when there is none."""

    def __init__(self, path: str = JOURNAL_SOCKET) -> None:
        self.path = path
        self._sock: socket.socket | None = None

    def send_record(self, message: str, level: str, extra: dict[str, Any], file: str, line: int, function: str) -> bool:
        """One log record: ``extra`` becomes OLLAMACTL_* fields, the call site CODE_* fields."""
        fields = {f"OLLAMACTL_{k}": v for k, v in extra.items() if not k.startswith("_")}
        fields.update(CODE_FILE=file, CODE_LINE=line, CODE_FUNC=function)
        return self.send(message, _PRIORITIES.get(level, 6), **fields)

    def send(self, message: str, priority: int = 6, **fields: Any) -> bool:
        """Write one record; True if it reached the journal, False if it went to stderr."""
        record = {"MESSAGE": clean(message, _MAX_MESSAGE), "PRIORITY": priority, "SYSLOG_IDENTIFIER": IDENTIFIER}
        record.update({field_name(k): None if v is None else clean(v, _MAX_FIELD) for k, v in fields.items()})
        try:
            if self._sock is None:
                self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)
            self._sock.sendto(encode(record), self.path)
            return True
        except OSError:
            extra = " ".join(f"{k}={v}" for k, v in record.items() if k not in _OWN and v is not None)
            sys.stderr.write(f"<{priority}>{IDENTIFIER}: {record['MESSAGE']}{' ' + extra if extra else ''}\n")
            sys.stderr.flush()
            return False


class JournalSink:
    """A loguru sink: each record becomes a journal entry, its ``extra`` fields prefixed OLLAMACTL_."""

    def __init__(self, journal: Journal | None = None) -> None:
        self.journal = journal or Journal()

    def __call__(self, message: Any) -> None:
        r = message.record
        self.journal.send_record(r["message"], r["level"].name, r["extra"], r["file"].path, r["line"], r["function"])


# -- reading Ollama's journal ------------------------------------------------
#
# Evidence of progress: Ollama writes a gin access line when a request
# *completes* (a hung one never appears), and slog lines around a model load
# and the start of each llama-server runner (with its --port).  We read them
# with journalctl (the journal's own reader; the file format is not ours to
# parse), for the unit's current invocation only, incrementally by cursor, under
# a deadline, and with the output capped.  Every message is hostile text: it is
# parsed defensively and only cleaned, capped pieces of it are ever kept.

JOURNALCTL = "journalctl"
MAX_OUTPUT = 4 << 20  # bytes of journalctl output read per call; the rest is left for the next call
MAX_LINE = 64 * 1024  # one JSON entry; journalctl prints fields over 4096 bytes as null anyway
MAX_CURSOR = 512
SEED_ENTRIES = 1000  # the newest entries read when an invocation is first seen
SEED_EVENTS = 64  # the newest load/runner lines read then (journalctl --grep)
SEED_DROPS = 8  # journald's newest "Suppressed N messages" notes about the invocation read then
BATCH = 2000  # entries per incremental read
MAX_BATCHES = 5  # incremental reads per update before jumping to the tail
MAX_RUNNERS = 8  # runner ports remembered per invocation
MAX_FAILED_READS = 3  # reads in a row that may fail before the journal counts as unreadable
#: Successful requests to these paths are progress: they ran inference (or an embedding) to the end.
PROGRESS_PATHS = frozenset(
    {
        "/api/generate",
        "/api/chat",
        "/api/embed",
        "/api/embeddings",
        "/v1/chat/completions",
        "/v1/completions",
        "/v1/embeddings",
        "/v1/responses",
        "/v1/messages",
    }
)
_EVENTS_RE = r'msg="(starting llama-server|loading model via llama-server|llama-server started in |Load failed)'
_PORT_RE = re.compile(r"--port[ =]([0-9]{1,5})(?=[\s\"\\]|$)")
_BLOB_RE = re.compile(r"--model[ =]\S*/blobs/sha256[-:]([0-9a-f]{64})(?=[\s\"\\]|$)")
_HEX32_RE = re.compile(r"[0-9a-f]{32}")
JOURNALD = "systemd-journald.service"
_SUPPRESSED_RE = re.compile(r"Suppressed ([0-9]{1,9}) messages from ")
_DENIED_HINTS = ("insufficient permissions", "not seeing messages from other users")


@dataclass
class JournalFacts:
    """What the unit's journal says about the current invocation (times are journald's, epoch seconds)."""

    invocation_id: str | None = None
    readable: bool = False
    problem: str = "not read yet"  # why the journal gives no evidence (one line), when not readable
    entries: int = 0  # entries seen for this invocation
    failed_reads: int = 0  # consecutive reads that failed after earlier ones worked (facts may be stale)
    last_completion_at: float | None = None  # the latest successful inference request completed then
    last_completion: str = ""  # e.g. 'POST "/api/chat" 200 in 1.234567s'
    load_started_at: float | None = None  # a model load began then and has not ended (None: no open load)
    load_activity_at: float | None = None  # the latest non-access-log line since that load began
    load_begun_at: float | None = None  # the latest load start seen (open or ended): the scheduler ran a load then
    runners: dict[int, float] = field(default_factory=dict)  # llama-server port -> when it was started
    runner_models: dict[int, str] = field(default_factory=dict)  # port -> the sha256 of its model's blob, if named
    dropped: int = 0  # lines journald suppressed for this invocation (over its rate limit: a flood)
    dropped_at: float | None = None  # journald said so then

    def completed_since(self, t: float) -> bool:
        """Did a request complete (successfully, with inference) after wall-clock time ``t``?"""
        return self.last_completion_at is not None and self.last_completion_at > t


@dataclass
class _Output:
    stdout: bytes
    stderr: str
    returncode: int | None
    truncated: bool  # MAX_OUTPUT reached: the process was stopped there


Runner = Callable[[list[str], float], Awaitable[_Output]]


async def run_journalctl(args: list[str], timeout: float) -> _Output:
    """journalctl ``args`` with a deadline and capped output; TimeoutError if it takes too long."""
    import asyncio  # here: the journal writer (every restart's audit record) needs no loop

    env = {**os.environ, "SYSTEMD_COLORS": "0", "SYSTEMD_PAGER": "", "SYSTEMD_LESS": "", "LC_ALL": "C.UTF-8"}
    proc = await asyncio.create_subprocess_exec(
        JOURNALCTL,
        *args,
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        env=env,
    )
    assert proc.stdout is not None and proc.stderr is not None
    try:
        async with asyncio.timeout(timeout):
            out = bytearray()
            truncated = False
            while chunk := await proc.stdout.read(64 * 1024):
                out += chunk
                if len(out) >= MAX_OUTPUT:
                    truncated = True
                    break
            err = await proc.stderr.read(4096) if not truncated else b""
            if truncated:
                proc.kill()
            returncode = await proc.wait()
    finally:
        if proc.returncode is None:  # timed out or cancelled: do not leave it behind
            proc.kill()
            await proc.wait()
    return _Output(bytes(out), err.decode("utf-8", "replace"), None if truncated else returncode, truncated)


class JournalReader:
    """Incremental reader of one unit's journal, for its current invocation; see JournalFacts."""

    def __init__(self, unit: str, *, timeout: float, run: Runner = run_journalctl) -> None:
        self.unit = unit
        self.timeout = timeout
        self._run = run
        self.facts = JournalFacts()
        self._cursor: str | None = None

    async def update(self, invocation_id: str | None) -> JournalFacts:
        """Read what is new since the last call (or the newest entries, for a new invocation).

        Never raises for what journalctl does: a problem (no permission, a
        timeout, a missing journalctl) is reported in ``facts.problem``, and
        the verdict then judges on the probes alone.
        """
        import asyncio

        if invocation_id is None or not _HEX32_RE.fullmatch(invocation_id):
            self.facts, self._cursor = JournalFacts(problem="the unit has no current invocation"), None
            return self.facts
        if invocation_id != self.facts.invocation_id:
            self.facts, self._cursor = JournalFacts(invocation_id=invocation_id), None
        deadline = time.monotonic() + self.timeout
        try:
            async with asyncio.timeout(self.timeout):
                if self._cursor is None:
                    await self._seed(invocation_id, deadline)
                else:
                    await self._follow(invocation_id, deadline)
        except TimeoutError:
            self._problem(f"journalctl did not finish within {self.timeout:g}s")
        except OSError as exc:
            self._problem(f"cannot run journalctl: {clean(exc.strerror or exc, 120)}")
        return self.facts

    def _matches(self, invocation_id: str) -> list[str]:
        """The unit's own entries, or ("+") journald's about them: "Suppressed N messages" (trusted fields only
        choose the writer; OBJECT_ names the invocation, and only journald writes as systemd-journald.service)."""
        return [
            f"_SYSTEMD_UNIT={self.unit}",
            f"_SYSTEMD_INVOCATION_ID={invocation_id}",
            "+",
            f"_SYSTEMD_UNIT={JOURNALD}",
            f"OBJECT_SYSTEMD_INVOCATION_ID={invocation_id}",
        ]

    def _drop_matches(self, invocation_id: str) -> list[str]:
        """journald's own notes about the invocation alone (see _matches)."""
        return [f"_SYSTEMD_UNIT={JOURNALD}", f"OBJECT_SYSTEMD_INVOCATION_ID={invocation_id}"]

    async def _query(
        self,
        args: list[str],
        invocation_id: str,
        deadline: float,
        *,
        optional: bool = False,
        matches: list[str] | None = None,
    ) -> list[dict[str, Any]] | None:
        """Entries journalctl gives for ``args`` and the invocation; None (and a problem, unless optional) if none."""
        base = ["--no-pager", "--quiet", "--output=json", "--output-fields=MESSAGE,_SYSTEMD_UNIT"]
        matches = self._matches(invocation_id) if matches is None else matches
        out = await self._run([*base, *args, *matches], max(0.001, deadline - time.monotonic()))
        stderr = out.stderr.strip()
        if optional and (stderr or out.returncode not in (0, None)):
            return None
        if any(hint in stderr for hint in _DENIED_HINTS):
            self._problem(
                "journal not readable by this user (it needs group systemd-journal or adm, or root): "
                + clean(stderr.splitlines()[0], 160)
            )
            return None
        if out.returncode not in (0, None):
            self._problem(
                f"journalctl failed (exit {out.returncode}): {clean(stderr.splitlines()[0] if stderr else '', 160)}"
            )
            return None
        return [e for e in (_entry(line) for line in out.stdout.split(b"\n")[: -1 if out.truncated else None]) if e]

    async def _seed(self, invocation_id: str, deadline: float) -> None:
        """The newest load/runner lines and the newest entries of the invocation."""
        import asyncio

        tail = await self._query(["--reverse", f"--lines={SEED_ENTRIES}"], invocation_id, deadline)
        if tail is None:
            return
        events: list[dict[str, Any]] | None = []
        if tail:
            # Older load/runner lines: journalctl scans back for them, which takes long in a huge journal, so
            # this gets half the time left and may fail (as may a journalctl built without PCRE2) harmlessly.
            grep = ["--reverse", f"--lines={SEED_EVENTS}", f"--grep={_EVENTS_RE}"]
            budget = (deadline - time.monotonic()) / 2
            try:
                async with asyncio.timeout(budget):
                    events = await self._query(grep, invocation_id, time.monotonic() + budget, optional=True)
            except TimeoutError:
                events = None
            # journald's word on a flood, which a flood itself pushes out of the newest entries: an indexed
            # lookup of journald's own notes on this invocation, cheap, and as harmless if it fails.
            budget = max(0.0, (deadline - time.monotonic()) / 2)
            try:
                async with asyncio.timeout(budget):
                    drops = await self._query(
                        ["--reverse", f"--lines={SEED_DROPS}"],
                        invocation_id,
                        time.monotonic() + budget,
                        optional=True,
                        matches=self._drop_matches(invocation_id),
                    )
            except TimeoutError:
                drops = None
            events = [*(events or ()), *(e for e in drops or () if e["unit"] == JOURNALD)]
        if not tail:
            self._problem(
                f"no journal entries for invocation {invocation_id[:12]} of {self.unit} "
                "(not readable by this user? it needs group systemd-journal or adm)"
            )
            return
        seen = {e["cursor"] for e in tail}
        merged = [e for e in events or () if e["cursor"] not in seen] + tail
        self._apply(sorted(merged, key=lambda e: (e["at"], e["seq"])))
        self._cursor = max(tail, key=lambda e: (e["at"], e["seq"]))["cursor"]

    async def _follow(self, invocation_id: str, deadline: float) -> None:
        for _ in range(MAX_BATCHES):
            batch = await self._query([f"--after-cursor={self._cursor}", f"--lines={BATCH}"], invocation_id, deadline)
            if batch is None:
                return
            if batch:
                self._apply(batch)
                self._cursor = batch[-1]["cursor"]
            if len(batch) < BATCH:
                return
        self._cursor = None  # a burst larger than we read in one update: jump to the newest entries
        await self._seed(invocation_id, deadline)

    def _problem(self, text: str) -> None:
        facts = self.facts
        facts.problem = text
        if facts.entries and facts.failed_reads < MAX_FAILED_READS:
            facts.failed_reads += 1  # it worked before: keep what we know, and say it may be stale
        else:
            facts.readable = False
        self._cursor = None  # read afresh next time (a cursor journald no longer knows fails forever)

    def _apply(self, entries: list[dict[str, Any]]) -> None:
        facts = self.facts
        facts.readable, facts.problem, facts.failed_reads = True, "", 0
        for e in entries:
            if e["unit"] == JOURNALD:  # not Ollama's line: journald saying it dropped some of them
                m = _SUPPRESSED_RE.match(e["message"])
                if m:
                    facts.dropped += int(m.group(1))
                    facts.dropped_at = max(facts.dropped_at or 0.0, e["at"])
                continue
            facts.entries += 1
            observe(facts, e["message"], e["at"])


def observe(facts: JournalFacts, message: str, at: float) -> None:
    """Update ``facts`` with one journal message logged at ``at`` (pure; the parser of hostile text)."""
    gin = parse_gin(message)
    if gin is not None:
        status, latency, method, path = gin
        if method == "POST" and path in PROGRESS_PATHS and 200 <= status < 300:
            if facts.last_completion_at is None or at >= facts.last_completion_at:
                facts.last_completion_at = at
                facts.last_completion = clean(f"{method} {path} {status} in {latency}", 120)
        return
    if facts.load_started_at is not None:
        facts.load_activity_at = at  # as Ollama's own stall timer: any output during a load is activity
    msg = slog_message(message)
    if msg is None:
        return
    if msg == "starting llama-server":
        m = _PORT_RE.search(message)
        port = int(m.group(1)) if m else 0
        if 0 < port <= 65535:
            facts.runners[port] = at
            blob = _BLOB_RE.search(message)
            if blob:
                facts.runner_models[port] = blob.group(1)
            else:
                facts.runner_models.pop(port, None)
            if len(facts.runners) > MAX_RUNNERS:
                oldest = min(facts.runners, key=facts.runners.__getitem__)
                del facts.runners[oldest]
                facts.runner_models.pop(oldest, None)
        msg = "loading model via llama-server"
    if msg == "loading model via llama-server":
        if facts.load_started_at is None:
            facts.load_started_at = at
        facts.load_activity_at = at
        facts.load_begun_at = max(facts.load_begun_at or at, at)
    elif msg.startswith("llama-server started in ") or msg == "Load failed":
        facts.load_started_at = facts.load_activity_at = None


def parse_gin(message: str) -> tuple[int, str, str, str] | None:
    """(status, latency, method, path) of a gin access line, or None if it is not one.

    ``[GIN] 2026/08/21 - 12:00:01 | 200 |     1.234567s |       127.0.0.1 | POST     "/api/generate"``:
    five fields split on ``|`` and stripped; the path is Go-quoted and may carry a query.
    """
    if not message.startswith("[GIN] "):
        return None
    parts = [p.strip() for p in message.split("|", 4)]
    if len(parts) != 5 or not (len(parts[1]) == 3 and parts[1].isascii() and parts[1].isdigit()):
        return None
    method, _, quoted = parts[4].partition(" ")
    path = _go_unquote(quoted.strip())
    if path is None or not method.isascii() or not method.isalpha():
        return None
    return int(parts[1]), clean(parts[2], 32), method, path.split("?", 1)[0]


def slog_message(message: str) -> str | None:
    """The ``msg`` of a slog text line (``time=... level=... msg="..." ...``), or None."""
    if not message.startswith("time="):
        return None
    _, sep, rest = message.partition(" msg=")
    if not sep:
        return None
    if rest.startswith('"'):
        end = _quoted_end(rest)
        return None if end < 0 else _go_unquote(rest[: end + 1])
    return rest.split(" ", 1)[0]


def _quoted_end(text: str) -> int:
    """Index of the quote that closes the Go-quoted string at the start of ``text``; -1 if none."""
    escaped = False
    for i, ch in enumerate(text[1:], 1):
        if escaped:
            escaped = False
        elif ch == "\\":
            escaped = True
        elif ch == '"':
            return i
    return -1


def _go_unquote(text: str) -> str | None:
    """A Go-quoted (strconv.Quote) string's value; JSON covers what our messages use."""
    if len(text) < 2 or text[0] != '"' or text[-1] != '"':
        return None
    try:
        value = json.loads(text)
    except ValueError:
        return None
    return value if isinstance(value, str) else None


def _entry(line: bytes) -> dict[str, Any] | None:
    """One ``journalctl -o json`` line: cursor, seqnum, time and message, or None if unusable."""
    record = _json_record(line)
    if record is None:
        return None
    obj, stamp = record
    cursor, message = obj.get("__CURSOR"), obj.get("MESSAGE")
    if not (isinstance(cursor, str) and 0 < len(cursor) <= MAX_CURSOR and cursor.isascii() and cursor.isprintable()):
        return None
    if cursor.startswith("-"):
        return None
    if isinstance(message, list):  # journalctl shows a MESSAGE that is not valid UTF-8 as a byte array
        message = bytes(b for b in message[:MAX_LINE] if isinstance(b, int) and 0 <= b < 256).decode("utf-8", "replace")
    if not isinstance(message, str):
        message = ""
    seq = _seqnum(cursor)
    unit = obj.get("_SYSTEMD_UNIT")
    unit = unit if isinstance(unit, str) else ""
    return {"cursor": cursor, "seq": seq, "at": int(stamp) / 1e6, "message": message[:MAX_LINE], "unit": unit}


def _json_record(line: bytes) -> tuple[dict[str, Any], str] | None:
    """One ``journalctl -o json`` line as an object, and its ``__REALTIME_TIMESTAMP`` (digits); None if unusable."""
    if not line or len(line) > MAX_LINE:
        return None
    try:
        obj = json.loads(line)
    except (ValueError, RecursionError):
        return None
    if not isinstance(obj, dict):
        return None
    stamp = obj.get("__REALTIME_TIMESTAMP")
    if not (isinstance(stamp, str) and stamp.isascii() and stamp.isdigit() and len(stamp) <= 19):
        return None
    return obj, stamp


def _seqnum(cursor: str) -> int:
    for part in cursor.split(";"):
        if part.startswith("i=") and len(part) <= 18:
            try:
                return int(part[2:], 16)
            except ValueError:
                return 0
    return 0


# -- reading our own records back (ollamactl history) ---------------------------
#
# Whatever a sender writes is a claim; what journald adds itself (the trusted fields, starting with
# an underscore: _UID, _PID, _COMM, _SYSTEMD_UNIT, ...) is not.  Every value is hostile text all
# the same: cleaned of control characters and capped, and a field given twice counts as not given.

MAX_RECORDS = 1000  # the newest entries a history query reads
_VERSION_RE = re.compile(r"systemd ([0-9]{1,5})\b")


@dataclass
class Entries:
    """What one journal query gave: entries (field -> cleaned value, oldest first), or why there are none.

    ``readable`` is False when journald would not show this user everything
    (no root, no group systemd-journal or adm: journalctl then shows only the
    user's own entries, if any), or when journalctl failed; ``problem`` says
    which, in one line.
    """

    entries: list[dict[str, str]] = field(default_factory=list)
    readable: bool = True
    problem: str = ""
    truncated: bool = False  # limit or MAX_OUTPUT reached: older entries were left out


async def query(
    matches: list[str],
    fields: tuple[str, ...],
    *,
    since: float | None = None,
    limit: int = MAX_RECORDS,
    timeout: float,
    run: Runner = run_journalctl,
) -> Entries:
    """The newest ``limit`` entries matching ``matches`` (journalctl's syntax) since ``since``, with ``fields``.

    Never raises for what journalctl does: a timeout, a missing journalctl or
    a user who may not read the whole journal gives ``readable=False`` and
    the problem.  JSON output hides journalctl's hint that a user sees only
    their own entries (measured on systemd 252 and 257), so a first run in
    the default output, asking for no entries (``--lines=0``), reads it.
    """
    import asyncio

    args = ["--no-pager", "--output=json", "--reverse", f"--lines={limit}", f"--output-fields={','.join(fields)}"]
    if since is not None:
        args.append(f"--since=@{max(0, math.floor(since))}")
    try:
        async with asyncio.timeout(timeout):
            deadline = time.monotonic() + timeout
            access = await run(["--no-pager", "--lines=0"], timeout)
            problem = _access_problem(access)
            if problem:
                return Entries(readable=False, problem=problem)
            out = await run([*args, *matches], max(0.001, deadline - time.monotonic()))
    except TimeoutError:
        return Entries(readable=False, problem=f"journalctl did not finish within {timeout:g}s")
    except OSError as exc:
        return Entries(readable=False, problem=f"cannot run journalctl: {clean(exc.strerror or exc, 120)}")
    problem = _access_problem(out)
    if problem:
        return Entries(readable=False, problem=problem)
    lines = out.stdout.split(b"\n")[: -1 if out.truncated else None]
    entries = [e for e in (_fields(line, fields) for line in lines) if e is not None]
    entries.reverse()
    return Entries(entries, truncated=out.truncated or len(entries) >= limit)


def _access_problem(out: _Output) -> str:
    """Why journalctl's answer is not the whole journal (one line), or "" if it is."""
    stderr = out.stderr.strip()
    if any(hint in stderr for hint in _DENIED_HINTS):
        return "the journal is not readable by this user (it needs root, or group systemd-journal or adm)"
    if out.returncode not in (0, None):
        first = clean(stderr.splitlines()[0], 160) if stderr else ""
        return f"journalctl failed (exit {out.returncode}): {first}"
    return ""


async def systemd_version(*, timeout: float, run: Runner = run_journalctl) -> int | None:
    """The journal's systemd version (``journalctl --version``), or None if it cannot be told."""
    import asyncio

    try:
        async with asyncio.timeout(timeout):
            out = await run(["--version"], timeout)
    except (TimeoutError, OSError):
        return None
    m = _VERSION_RE.match(out.stdout[:200].decode("ascii", "replace"))
    return int(m.group(1)) if m else None


def is_invocation_id(value: str | None) -> bool:
    """Is ``value`` an invocation ID as journald writes it (32 lowercase hex digits)?"""
    return value is not None and _HEX32_RE.fullmatch(value) is not None


def _fields(line: bytes, wanted: tuple[str, ...]) -> dict[str, str] | None:
    """The ``wanted`` fields of one ``journalctl -o json`` line, cleaned; None if the line is unusable.

    ``__REALTIME_TIMESTAMP`` is always there (microseconds, digits).  A field
    journalctl shows as null (over 4096 bytes), as several values (sent
    twice) or not at all is left out; one shown as bytes (not UTF-8) is
    decoded with replacement.
    """
    record = _json_record(line)
    if record is None:
        return None
    obj, stamp = record
    out = {"__REALTIME_TIMESTAMP": stamp}
    for name in wanted:
        value = obj.get(name)
        if isinstance(value, list) and value and all(isinstance(b, int) and 0 <= b < 256 for b in value):
            value = bytes(value[:MAX_LINE]).decode("utf-8", "replace")
        if isinstance(value, str):
            out[name] = clean(value, _MAX_FIELD)
    return out

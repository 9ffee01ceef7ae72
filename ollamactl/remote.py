"""Running one ollamactl command on other hosts over ssh (issue 10, part 2).

``ollamactl --host [USER@]HOST[:PORT] ... CMD`` runs ``ollamactl CMD ... --json``
on each host through ``ssh``, as ``systemctl -H`` does: the host's own ollamactl
and polkit rule decide, with the identity ssh logs in as.  Nothing is decided
here; this module only carries the question and the answer.

- Each host spec is checked strictly before anything runs (``parse_host``, with
  the grammar ``units.split_host``): it goes into ssh's argv (never a shell), so
  no spec can be read as an ssh option (a leading ``-``) or carry shell syntax,
  whitespace or controls.
- ssh runs in batch mode (never a password or host-key prompt), with a
  connection timeout and ``-T``; host-key checking stays as the user's ssh
  configuration says (an unknown key fails the host, it is not accepted).
- The remote command is our own argv minus ``--host``, plus ``--json``
  (``remote_argv``), each word shell-quoted (ssh joins its arguments into one
  remote shell command).  The CLI reads it back with its own parser before
  anything runs (``cli._remote_command``): no host is asked to go on over ssh.
- Hosts run concurrently under one overall deadline; a host that does not
  answer in time is killed (its whole process group) and reported.
- A remote answer is untrusted: at most MAX_ANSWER_BYTES, JSON nested at most
  MAX_DEPTH deep, one object; it is printed only through ``output.to_json``
  (every non-ASCII or control character escaped) or ``text.clean``.

The merged result: ``{"hosts": {SPEC: {...}, ...}, "ok": bool, "exit_code": N}``
where each host's object is its ollamactl's JSON with ``exit_code`` set to its
exit status, or an error entry made here (``error`` "ssh", "remote-not-installed",
"remote-answer", "timeout").  The exit code is the worst of the hosts': 0 if
all succeeded, else the highest exit code of any host (order-independent).

Standard library plus ollamactl's errors/output/text/units only.
"""

from __future__ import annotations

import asyncio
import json
import math
import os
import re
import shlex
import signal
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from ollamactl.errors import EXIT_OK, EXIT_REMOTE, EXIT_TIMEOUT, OllamactlError, TimedOut, UsageError
from ollamactl.output import say, to_json
from ollamactl.text import clean
from ollamactl.units import split_host

#: Seconds ssh may take to set up the TCP connection (ssh -o ConnectTimeout).
CONNECT_TIMEOUT = 10
#: Seconds the whole run may take, every host included (a restart's default timeout is 90 s).
DEADLINE = 300.0
#: Bytes of one host's stdout (its JSON answer) we read; a longer answer is refused.
MAX_ANSWER_BYTES = 1 << 20
#: Bytes of one host's stderr we keep (for the message of a failed host).
MAX_STDERR_BYTES = 64 << 10
#: Nesting of JSON arrays/objects accepted in an answer (ollamactl's own are 3 deep).
MAX_DEPTH = 32
#: ssh processes running at once.
MAX_PARALLEL = 32
#: Characters of a message taken from a remote host (its ssh's or ollamactl's words).
MESSAGE_LIMIT = 300
#: The program run on each host.
REMOTE_PROGRAM = "ollamactl"
#: ssh exits 255 when ssh itself failed (no connection, authentication, host key).
SSH_FAILED = 255


class RemoteUnreachable(OllamactlError):
    """ssh could not run the command on the host (connection, authentication or host key)."""

    exit_code = EXIT_REMOTE
    kind = "ssh"


class RemoteNotInstalled(OllamactlError):
    """The host has no ollamactl on the PATH of a non-interactive ssh session."""

    exit_code = EXIT_REMOTE
    kind = "remote-not-installed"


class RemoteBadAnswer(OllamactlError):
    """The host's ollamactl did not answer with one JSON object (or too large, too deep)."""

    exit_code = EXIT_REMOTE
    kind = "remote-answer"


@dataclass(frozen=True)
class HostSpec:
    """One ``--host`` value: ``spec`` as given, and its parts."""

    spec: str
    host: str  # without brackets: what ssh takes as destination
    user: str | None = None
    port: int | None = None


def parse_host(spec: str) -> HostSpec:
    """One ``--host`` value checked (``units.split_host``: UsageError, nothing run, if it is not [USER@]HOST[:PORT])."""
    user, host, port = split_host(spec)
    return HostSpec(spec=spec, host=host, user=user, port=port)


def parse_hosts(specs: Sequence[str]) -> list[HostSpec]:
    """Every spec checked (the first bad one raises); duplicates dropped, order kept."""
    seen: dict[str, HostSpec] = {}
    for spec in specs:
        if spec not in seen:
            seen[spec] = parse_host(spec)
    if not seen:
        raise UsageError("--host: no host given")
    return list(seen.values())


def _is_host_option(token: str) -> tuple[bool, bool]:
    """(is --host or an abbreviation of it, or --all-hosts; carries no further value word)."""
    name, eq, _ = token.partition("=")
    if len(name) >= len("--all-") and "--all-hosts".startswith(name):  # a flag (for a config host list)
        return True, True
    return len(name) >= 4 and "--host".startswith(name), bool(eq)


def remote_argv(argv: Sequence[str]) -> list[str]:
    """The words of the remote command: ollamactl, ``argv`` without --host options, and --json.

    argparse accepts ``--host X``, ``--host=X`` and unique abbreviations (``--ho X``); all
    are removed (and ``--all-hosts``, should the CLI take the config's host list), so a
    remote ollamactl never runs ssh itself (the CLI's re-parse makes sure).  A bare ``--`` ends options.
    """
    out: list[str] = []
    words = iter(argv)
    for token in words:
        if token == "--":
            out.append(token)
            out.extend(words)
            break
        is_host, has_value = _is_host_option(token)
        if is_host:
            if not has_value:
                next(words, None)
            continue
        out.append(token)
    if "--json" not in out:
        out.insert(out.index("--") if "--" in out else len(out), "--json")
    return [REMOTE_PROGRAM, *out]


def ssh_argv(host: HostSpec, words: Sequence[str], connect_timeout: int = CONNECT_TIMEOUT) -> list[str]:
    """ssh's argv for one host: batch mode, a connection timeout, no tty, each remote word quoted.

    Host-key checking is left to the user's ssh configuration (an unknown or changed key
    fails the host; BatchMode never asks).  LogLevel=ERROR keeps a server's pre-login banner
    out of the messages.  ``--`` ends ssh's options before the destination.
    """
    argv = [
        "ssh",
        "-T",
        "-o",
        "BatchMode=yes",
        "-o",
        f"ConnectTimeout={max(1, math.ceil(connect_timeout))}",
        "-o",
        "LogLevel=ERROR",
    ]
    if host.user is not None:
        argv += ["-l", host.user]
    if host.port is not None:
        argv += ["-p", str(host.port)]
    return [*argv, "--", host.host, *(shlex.quote(w) for w in words)]


# --------------------------------------------------------------------------- answers


_JSON_STRING = re.compile(r'"(?:[^"\\]|\\.)*"', re.DOTALL)
_BRACKET = re.compile(r"[\[\]{}]")


def json_depth(text: str) -> int:
    """How deep arrays and objects nest in ``text`` (strings skipped); for a bound before parsing."""
    depth = deepest = 0
    for m in _BRACKET.finditer(_JSON_STRING.sub("", text)):
        if m.group() in "[{":
            depth += 1
            deepest = max(deepest, depth)
        else:
            depth -= 1
    return deepest


def _no_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


def parse_answer(data: bytes, spec: str) -> dict[str, Any]:
    """One host's stdout as its JSON object; RemoteBadAnswer if it is not exactly that, within bounds."""
    if len(data) > MAX_ANSWER_BYTES:
        raise RemoteBadAnswer(
            f"{spec}: answer larger than {MAX_ANSWER_BYTES} bytes, not read; run the command on the host itself",
            host=spec,
        )
    try:
        text = data.decode("utf-8")
        if json_depth(text) > MAX_DEPTH:
            raise ValueError(f"nested deeper than {MAX_DEPTH}")
        value = json.loads(text, parse_constant=_no_constant)
    except (UnicodeDecodeError, ValueError, RecursionError) as e:
        first = clean(data[:120].decode("utf-8", "replace"), 120)
        raise RemoteBadAnswer(
            f"{spec}: its ollamactl did not answer with JSON ({clean(e, 100)}; output starts {first!r}); "
            "is it an old version? run `ollamactl --version` there",
            host=spec,
        ) from None
    if not isinstance(value, dict):
        raise RemoteBadAnswer(f"{spec}: its ollamactl answered JSON that is not an object", host=spec)
    return value


def _last_line(stderr: bytes) -> str:
    lines = [ln.strip() for ln in stderr.decode("utf-8", "replace").splitlines() if ln.strip()]
    return clean(lines[-1], MESSAGE_LIMIT) if lines else ""


def classify(spec: HostSpec, rc: int, stdout: bytes, stderr: bytes) -> dict[str, Any]:
    """One host's entry from ssh's exit status and output (an error entry, or its answer)."""
    where = spec.spec
    if rc == SSH_FAILED:
        why = _last_line(stderr) or "ssh exited 255"
        fix = "check that `ssh -o BatchMode=yes HOST true` works: key in the agent, host key known, sshd up"
        if "host key" in why.lower():
            fix = "the host key is unknown or changed: check it and accept it once with `ssh HOST`"
        return RemoteUnreachable(f"{where}: ssh failed: {why}; {fix}", host=where).to_dict()
    if rc in (126, 127):
        return RemoteNotInstalled(
            f"{where}: no runnable {REMOTE_PROGRAM} there ({_last_line(stderr) or f'exit {rc}'}); "
            "install the ollamactl package on that host",
            host=where,
        ).to_dict()
    if rc < 0:  # killed by a signal here (not by our deadline: that is reported before)
        return RemoteUnreachable(f"{where}: ssh was killed by signal {-rc}", host=where).to_dict()
    try:
        answer = parse_answer(stdout, where)
    except RemoteBadAnswer as err:
        return err.to_dict()
    answer["exit_code"] = rc  # the remote ollamactl's exit status is what counts
    return answer


def worst(codes: Sequence[int]) -> int:
    """The run's exit code: 0 if every host succeeded, else the highest of the hosts' codes."""
    return max(codes, default=EXIT_OK)


def merge(entries: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """The one JSON object of a run: every host's entry, ok, and the worst exit code."""
    code = worst([_code(e) for e in entries.values()])
    return {"hosts": entries, "ok": code == EXIT_OK, "exit_code": code}


def _code(entry: dict[str, Any]) -> int:
    code = entry.get("exit_code")
    return code if isinstance(code, int) and not isinstance(code, bool) and 0 <= code <= 255 else EXIT_REMOTE


# --------------------------------------------------------------------------- running


async def _read_bounded(stream: asyncio.StreamReader, limit: int, overflow: Any = None) -> bytes:
    """Up to limit+1 bytes (one more than allowed tells "too large").

    Past the limit ``overflow()`` is called (it kills ssh: a host that floods is not
    read to the deadline) and the rest is drained unread.
    """
    buf = bytearray()
    while True:
        chunk = await stream.read(65536)
        if not chunk:
            return bytes(buf)
        if len(buf) <= limit:
            buf += chunk[: limit + 1 - len(buf)]
            if len(buf) > limit and overflow is not None:
                overflow()


def _kill(proc: asyncio.subprocess.Process) -> None:
    try:
        os.killpg(proc.pid, signal.SIGKILL)  # ssh and anything it started (ProxyCommand)
    except ProcessLookupError:
        pass


async def _one(spec: HostSpec, words: Sequence[str], connect_timeout: int, gate: asyncio.Semaphore) -> dict[str, Any]:
    async with gate:
        try:
            proc = await asyncio.create_subprocess_exec(
                *ssh_argv(spec, words, connect_timeout),
                stdin=asyncio.subprocess.DEVNULL,
                stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.PIPE,
                start_new_session=True,  # a Ctrl-C here does not reach ssh; we kill its group
            )
        except OSError as e:
            return RemoteUnreachable(
                f"{spec.spec}: cannot run ssh ({clean(e, 120)}); install openssh-client", host=spec.spec
            ).to_dict()
        try:
            assert proc.stdout is not None and proc.stderr is not None
            out, err = await asyncio.gather(
                _read_bounded(proc.stdout, MAX_ANSWER_BYTES, lambda: _kill(proc)),
                _read_bounded(proc.stderr, MAX_STDERR_BYTES),
            )
            rc = await proc.wait()
            if len(out) > MAX_ANSWER_BYTES:
                return RemoteBadAnswer(
                    f"{spec.spec}: answer larger than {MAX_ANSWER_BYTES} bytes, not read (ssh killed); "
                    "run the command on the host itself",
                    host=spec.spec,
                ).to_dict()
        finally:
            if proc.returncode is None:  # cancelled by the deadline (or Ctrl-C)
                _kill(proc)
                await proc.wait()
        return classify(spec, rc, out, err)


async def _run_all(
    hosts: Sequence[HostSpec], words: Sequence[str], connect_timeout: int, deadline: float
) -> dict[str, dict[str, Any]]:
    gate = asyncio.Semaphore(MAX_PARALLEL)
    tasks = {h.spec: asyncio.ensure_future(_one(h, words, connect_timeout, gate)) for h in hosts}
    done, pending = await asyncio.wait(tasks.values(), timeout=deadline)
    for t in pending:
        t.cancel()
    if pending:
        await asyncio.wait(pending)  # each kills its ssh in its finally
    entries: dict[str, dict[str, Any]] = {}
    for spec, t in tasks.items():
        if t in done:
            entries[spec] = t.result()
        else:
            entries[spec] = TimedOut(
                f"{spec}: no answer within {deadline:g}s (ssh killed); check the host, or run the command there",
                host=spec,
            ).to_dict()
            entries[spec]["exit_code"] = EXIT_TIMEOUT
    return entries


def run_hosts(
    hosts: Sequence[str],
    words: Sequence[str],
    *,
    connect_timeout: int = CONNECT_TIMEOUT,
    deadline: float = DEADLINE,
) -> dict[str, Any]:
    """Run the remote command ``words`` (from ``remote_argv``) on each host; the merged result (see the module doc).

    Every host is checked before any ssh runs; the CLI has checked ``words``.
    """
    specs = parse_hosts(hosts)
    entries = asyncio.run(_run_all(specs, words, connect_timeout, deadline))
    return merge(entries)


# --------------------------------------------------------------------------- printing


def summary(entry: dict[str, Any]) -> str:
    """One line for a host in the table, from its (untrusted) entry; cleaned, bounded."""

    def field(name: str) -> str:
        value = entry.get(name)
        return clean(value, 80) if isinstance(value, str | int | float) and not isinstance(value, bool) else ""

    if entry.get("ok") is False or field("error"):
        return clean(f"{field('error') or 'error'}: {entry.get('message', '')}", MESSAGE_LIMIT)
    if field("action"):
        return " ".join(x for x in (field("action"), field("unit")) if x)
    if "healthy" in entry:
        state = "healthy" if entry.get("healthy") is True else "NOT healthy"
        details = "/".join(x for x in (field("active_state"), field("sub_state")) if x)
        return " ".join(x for x in (field("unit"), state, f"({details})" if details else "") if x)
    if field("outcome"):
        return " ".join(x for x in (field("unit"), field("outcome")) if x)
    return "ok" if entry.get("ok") is not False else "error"


def table(result: dict[str, Any]) -> str:
    """The text output: one row per host (HOST, EXIT, RESULT), then the worst exit code."""
    rows = [("HOST", "EXIT", "RESULT")]
    for spec, entry in result["hosts"].items():
        rows.append((clean(spec, 80), str(_code(entry)), summary(entry)))
    w0 = max(len(r[0]) for r in rows)
    w1 = max(len(r[1]) for r in rows)
    lines = [f"{r[0].ljust(w0)}  {r[1].rjust(w1)}  {r[2]}" for r in rows]
    n_bad = sum(1 for e in result["hosts"].values() if _code(e) != EXIT_OK)
    lines.append(f"{len(rows) - 1} host(s), {n_bad} failed; exit code {result['exit_code']}")
    return "\n".join(lines)


def run_on_hosts(
    hosts: Sequence[str],
    words: Sequence[str],
    as_json: bool,
    *,
    verbose: bool = False,
    connect_timeout: int = CONNECT_TIMEOUT,
    deadline: float = DEADLINE,
) -> int:
    """Run the remote command ``words`` on each host; print the merged result; the worst exit code."""
    if verbose:
        say(f"running on each host: {shlex.join(words)}", file=sys.stderr)
    result = run_hosts(hosts, words, connect_timeout=connect_timeout, deadline=deadline)
    if as_json:
        print(to_json(result))
    else:
        say(table(result))
    return int(result["exit_code"])

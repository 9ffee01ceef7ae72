"""Which listening ports are Ollama's own llama-server runners (issue 14 §2).

Why: a runner's /slots is the verdict's strongest evidence, so the port it is
read from must be Ollama's.  Any local user can listen on a port a runner
left (runners get a new port at every load) or on Ollama's port at another
loopback address.  A port counts only on evidence only Ollama can give:

- the journal's ``starting llama-server`` line (written by the unit's own
  process) named it, and it is the newest runner of its model, and, when
  /api/ps answers, that model is still loaded (by its blob's sha256);
- where the kernel shows real socket owners (not inside a user namespace,
  where every other uid reads as the overflow uid: the watchdog runs without
  PrivateUsers= for this), it is listened on, on 127.0.0.1, by the user that
  owns Ollama's port (this alone rules out a stranger on a crashed runner's
  port before Ollama reloads it: the model is still listed then);
- without the journal, the kernel's list is all there is: the loopback
  listeners of the owner of Ollama's port at Ollama's own address.

Anything else is ignored, and the evidence line says which port and why.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import TYPE_CHECKING

from ollamactl import sockets
from ollamactl.probe import OK, Endpoint, PsResult

if TYPE_CHECKING:
    from ollamactl.journal import JournalFacts

OVERFLOW_UID = 65534  # how the kernel shows a uid not mapped into the reader's user namespace
_WILDCARDS = ("0.0.0.0", "::")
MAX_IGNORED = 4  # reasons kept for the evidence line


@dataclass(frozen=True)
class Runners:
    """The ports to trust, and what was left out (one short reason each)."""

    ports: tuple[int, ...]
    ignored: tuple[str, ...] = ()


def runner_candidates(
    facts: JournalFacts, endpoint: Endpoint, found: list[tuple[str, int, int]] | None = None
) -> list[int]:
    """Every port worth asking now (probing is harmless; which answers count is ``own_runners``' decision)."""
    if facts.readable or facts.entries:
        return sorted(facts.runners)
    return api_owner_ports(endpoint, found)


def own_runners(
    ports: list[int],
    facts: JournalFacts,
    endpoint: Endpoint,
    ps: PsResult | None,
    found: list[tuple[str, int, int]] | None = None,
) -> Runners:
    """Of ``ports`` (from ``runner_candidates``), those that are Ollama's runners now, by the rules above."""
    if not (facts.readable or facts.entries):
        return Runners(tuple(ports))  # from the kernel's list, already owner-checked
    keep, ignored = list(ports), []
    newest: dict[str, int] = {}
    for port in keep:
        model = facts.runner_models.get(port)
        if model and facts.runners.get(port, 0) >= facts.runners.get(newest.get(model, port), 0):
            newest[model] = port
    loaded = {m.digest for m in ps.models} if ps is not None and ps.status == OK else None
    if loaded is not None and "" in loaded:
        loaded = None  # a model listed without its digest: the list cannot rule a runner out
    for port in list(keep):
        model = facts.runner_models.get(port)
        if not model:
            continue
        if newest[model] != port:
            keep.remove(port)
            ignored.append(f"runner :{port} ignored: its model's newer runner is :{newest[model]}")
        elif loaded is not None and model not in loaded:
            keep.remove(port)
            started = time.strftime("%H:%M:%S", time.localtime(facts.runners.get(port, 0)))
            ignored.append(f"runner :{port} (started {started}) ignored: its model is no longer loaded (/api/ps)")
    socks = sockets.listeners() if found is None else found
    owner = _api_owner(endpoint, socks)
    if owner is not None and owner != OVERFLOW_UID:
        mine = {port for ip, port, uid in socks if uid == owner and ip == "127.0.0.1"}
        for port in list(keep):
            if port not in mine:
                keep.remove(port)
                ignored.append(f"runner :{port} ignored: not listened on by Ollama's user (uid {owner}) on 127.0.0.1")
    return Runners(tuple(keep), tuple(ignored[:MAX_IGNORED]))


def api_owner_ports(endpoint: Endpoint, found: list[tuple[str, int, int]] | None = None) -> list[int]:
    """The loopback ports of the owner of Ollama's own socket (its address, not any address with its port)."""
    socks = sockets.listeners() if found is None else found
    owner = _api_owner(endpoint, socks)
    if owner is None:
        return []
    ports = {port for ip, port, uid in socks if uid == owner and ip == "127.0.0.1" and port != endpoint.port}
    return sorted(ports)[: sockets.MAX_PORTS]


def _api_owner(endpoint: Endpoint, socks: list[tuple[str, int, int]]) -> int | None:
    """The uid listening on Ollama's address and port (a wildcard listener serves it too); None if unknown.

    Only that address counts: a listener on 127.0.0.2 or ::1 with Ollama's port is somebody else's.
    """
    host = endpoint.host.strip("[]")
    at_port = [(ip, uid) for ip, port, uid in socks if port == endpoint.port]
    for wanted in ((host,), _WILDCARDS, ("127.0.0.1",) if host in ("localhost", *_WILDCARDS) else ()):
        owners = {uid for ip, uid in at_port if ip in wanted}
        if len(owners) == 1:
            return owners.pop()
    return None

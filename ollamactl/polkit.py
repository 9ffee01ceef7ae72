"""The polkit adapter: every D-Bus conversation with polkitd lives here.

``doctor`` asks polkitd two things: its version (which says whether it runs
JavaScript rules at all) and its own verdict on a process
(``CheckAuthorization`` with flags 0: never interactive, no side effects).
The calls go over a system-bus connection's ``send`` (``SystemdBus.send``, so
doctor needs one connection for systemd and polkitd), each under this
adapter's own deadline.  Every D-Bus error name is mapped to one of our typed
errors using the name table in systemd.py, and every string that comes back
is cleaned (``text.clean``) before it can reach a terminal.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from ollamactl.errors import (
    OllamactlError,
    PermissionDenied,
    PolkitNotTrusted,
    PolkitUnavailable,
    TimedOut,
)
from ollamactl.systemd import DENIED, NO_OWNER, NO_REPLY, POLKIT_NOT_AUTHORIZED, SystemdBus
from ollamactl.text import clean

POLKIT = "org.freedesktop.PolicyKit1"
AUTHORITY_PATH = "/org/freedesktop/PolicyKit1/Authority"
AUTHORITY = "org.freedesktop.PolicyKit1.Authority"
PROPS = "org.freedesktop.DBus.Properties"
PEER = "polkitd"
#: CheckAuthorization's flags: 0, never AllowUserInteraction (no password prompt, no side effects).
NO_INTERACTION = 0
_VERSION_LIMIT = 64  # polkitd's BackendVersion, e.g. "126" or "0.105"


#: What the adapter talks through: ``SystemdBus.send`` (tests pass an object with the same ``send``).
Transport = SystemdBus


@dataclass(frozen=True)
class Authorization:
    """polkit's verdict on one process for one action."""

    authorized: bool
    challenge: bool  # polkit would have asked for a password (ollamactl never lets it)


def process_start_time(pid: int | str = "self") -> int:
    """A process's start time in clock ticks since boot, as polkit's unix-process subject wants it.

    Raises OSError (the process is gone, or /proc cannot be read) or ValueError/IndexError (not a stat line).
    """
    with open(f"/proc/{pid}/stat") as fh:
        data = fh.read()
    return int(data[data.rfind(")") + 2 :].split()[19])


class Polkit:
    """polkitd's Authority over a bus connection; each call ends within ``timeout`` seconds.

    Raises PolkitUnavailable (polkitd is not on the bus), PolkitNotTrusted
    (polkitd answers that only for root), PermissionDenied (the bus policy
    refused), TimedOut, BusUnavailable (the bus went away) or OllamactlError
    (any other refusal, or an answer that is not what polkitd sends).
    """

    def __init__(self, transport: Transport, *, timeout: float) -> None:
        self._transport = transport
        self.timeout = timeout

    async def version(self) -> str:
        """polkitd's version (``BackendVersion``), cleaned, e.g. "126"."""
        body = await self._call("the version query", PROPS, "Get", "ss", [AUTHORITY, "BackendVersion"])
        value = getattr(body[0], "value", body[0]) if len(body) == 1 else None
        if not isinstance(value, str):
            raise OllamactlError(f"polkitd answered the version query with {clean(repr(body), 120)}")
        return clean(value, _VERSION_LIMIT)

    async def check_authorization(
        self, action: str, *, pid: int, start_time: int, uid: int, details: dict[str, str]
    ) -> Authorization:
        """Is process ``pid`` (started at ``start_time``, owned by ``uid``) authorized for ``action``?

        ``details`` are what the caller of the action would pass (systemd: unit
        and verb); polkitd accepts them only from trusted callers.
        """
        from dbus_next import Variant  # only here: building the subject needs typed variants

        subject = [
            "unix-process",
            {"pid": Variant("u", pid), "start-time": Variant("t", start_time), "uid": Variant("i", uid)},
        ]
        body = await self._call(
            "CheckAuthorization",
            AUTHORITY,
            "CheckAuthorization",
            "(sa{sv})sa{ss}us",
            [subject, action, details, NO_INTERACTION, ""],
        )
        result = body[0] if len(body) == 1 else None
        if not isinstance(result, (list, tuple)) or len(result) < 2:
            raise OllamactlError(f"polkitd answered CheckAuthorization with {clean(repr(body), 120)}")
        return Authorization(authorized=bool(result[0]), challenge=bool(result[1]))

    async def _call(self, what: str, interface: str, member: str, signature: str, body: list[Any]) -> list[Any]:
        reply = await self._transport.send(
            POLKIT, AUTHORITY_PATH, interface, member, signature, body, timeout=self.timeout, peer=PEER
        )
        if reply.error_name is not None:
            raise map_error(reply.error_name, reply.error_text, what)
        return reply.body


def map_error(name: str, text: str, what: str) -> OllamactlError:
    """The typed error for polkitd's (or the bus's) D-Bus error ``name`` in answer to ``what``."""
    if name in NO_OWNER:
        return PolkitUnavailable("polkitd is not on the system bus", bus_error=name)
    if name in NO_REPLY:
        return TimedOut(f"polkitd did not answer {what}: {text}", bus_error=name)
    if name == POLKIT_NOT_AUTHORIZED:
        return PolkitNotTrusted(f"polkitd answers {what} only for trusted callers: {text}", bus_error=name)
    if name in DENIED:
        return PermissionDenied(f"the system bus refused {what}: {text}", bus_error=name)
    return OllamactlError(f"polkitd refused {what}: {text} ({name})", bus_error=name)

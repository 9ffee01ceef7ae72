"""Listening TCP sockets, from the kernel's /proc/self/net/tcp and tcp6.

Why: the deep probe asks each llama-server runner for its /slots, and a
runner's answer counts only if its port is listened on by Ollama's user
(ollamactl/runners.py).  The kernel lists every listening socket of our network
namespace with its owner's uid to anyone.  /proc/self/net, not /proc/net: the
watchdog's ProcSubset=pid hides the latter.  (Inside a user namespace foreign
uids all read as the overflow uid, so owners cannot be told apart there.)
"""

from __future__ import annotations

import socket
import struct

PROC_NET = ("/proc/self/net/tcp", "/proc/self/net/tcp6")
MAX_BYTES = 8 << 20  # ~50,000 sockets; a host with more still gets a bounded read
MAX_PORTS = 16  # runner candidates we return (one per loaded model)
_LISTEN = "0A"


def listeners(paths: tuple[str, ...] = PROC_NET) -> list[tuple[str, int, int]]:
    """(address, port, uid) of every listening TCP socket the kernel shows us; [] if it shows none."""
    out = []
    for path in paths:
        try:
            with open(path, "rb") as fh:
                text = fh.read(MAX_BYTES).decode("ascii", "replace")
        except OSError:
            continue
        for line in text.splitlines()[1:]:
            parsed = _parse(line)
            if parsed is not None:
                out.append(parsed)
    return out


def _parse(line: str) -> tuple[str, int, int] | None:
    fields = line.split()
    if len(fields) < 8 or fields[3] != _LISTEN:
        return None
    addr, _, port_hex = fields[1].partition(":")
    try:
        port, uid = int(port_hex, 16), int(fields[7])
        if len(addr) == 8:
            ip = socket.inet_ntop(socket.AF_INET, struct.pack("=I", int(addr, 16)))
        elif len(addr) == 32:
            words = [struct.pack("=I", int(addr[i : i + 8], 16)) for i in range(0, 32, 8)]
            ip = socket.inet_ntop(socket.AF_INET6, b"".join(words))
        else:
            return None
    except (ValueError, OSError, struct.error):
        return None
    return ip, port, uid

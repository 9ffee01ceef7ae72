#!/usr/bin/python3
"""A hostile HTTP server that squats Ollama's port, for ollamactl's attack tests.

Any local user can bind 127.0.0.1:11434 while ollama.service is stopped; this
server is what such a user would run to attack whoever probes it (root's
``ollamactl status`` / ``probe`` / ``doctor`` / ``restart``, the watchdog).

Usage: hostile_server.py --mode-file FILE --ready-file FILE [--host H] [--port P] [--max-bytes N]

The mode is re-read from --mode-file for every connection, so one server
serves every case.  Modes (each answers every request the same way):

  benign    a well-formed {"version": "0.12.3"} (the baseline for comparisons)
  escapes   a version string full of terminal escapes: window title (OSC 0),
            clipboard write (OSC 52), clear screen (CSI 2J), colours
  chunked   "Transfer-Encoding: chunked" with a chunk size of 7fffffffffff,
            then as many bytes as the client reads (up to --max-bytes)
  headers   an endless stream of distinct ~8 KiB headers (up to --max-bytes)
  nested    a 100000-deep JSON array as the body, with a correct Content-Length

Once listening it writes {"pid": ..., "port": ...} to --ready-file.  Standard
library only; ends on SIGTERM.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import socketserver
import sys

ESCAPES = "\x1b]0;pwned\x07\x1b]52;c;cHduZWQ=\x07\x1b[2J\x1b[31m0.12.3\x1b[0m\r\x1b[K"
NEST_DEPTH = 100_000
BLOCK = b"A" * (1 << 20)


def _json_response(body: bytes) -> bytes:
    head = (
        f"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: {len(body)}\r\nConnection: close\r\n\r\n"
    )
    return head.encode() + body


class Handler(socketserver.BaseRequestHandler):
    server: Server

    def handle(self) -> None:
        sock: socket.socket = self.request
        sock.settimeout(30)
        try:
            self._read_request(sock)
            mode = self.server.mode()
            if mode == "escapes":
                body = json.dumps({"version": ESCAPES, "done": True, "response": ESCAPES}, ensure_ascii=False)
                sock.sendall(_json_response(body.encode()))
            elif mode == "nested":
                sock.sendall(_json_response(b"[" * NEST_DEPTH))
            elif mode == "chunked":
                sock.sendall(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n")
                sock.sendall(b"7fffffffffff\r\n")
                self._stream(sock, lambda i: BLOCK)
            elif mode == "headers":
                sock.sendall(b"HTTP/1.1 200 OK\r\n")
                pad = b"h" * 8000
                self._stream(sock, lambda i: b"X-Pad-%d: %s\r\n" % (i, pad))
            else:
                sock.sendall(_json_response(b'{"version":"0.12.3"}'))
        except OSError:
            pass  # the client gave up: that is the point

    def _read_request(self, sock: socket.socket) -> None:
        data = b""
        while b"\r\n\r\n" not in data and len(data) < 65536:
            chunk = sock.recv(4096)
            if not chunk:
                return
            data += chunk
        head, _, rest = data.partition(b"\r\n\r\n")
        for line in head.split(b"\r\n"):
            name, _, value = line.partition(b":")
            if name.strip().lower() == b"content-length" and value.strip().isdigit():
                need = int(value.strip()) - len(rest)
                while need > 0:
                    chunk = sock.recv(min(need, 65536))
                    if not chunk:
                        return
                    need -= len(chunk)

    def _stream(self, sock: socket.socket, piece) -> None:
        sent, i = 0, 0
        while sent < self.server.max_bytes:
            data = piece(i)
            sock.sendall(data)
            sent += len(data)
            i += 1


class Server(socketserver.ThreadingTCPServer):
    allow_reuse_address = True
    daemon_threads = True

    def __init__(self, addr: tuple[str, int], mode_file: str, max_bytes: int) -> None:
        super().__init__(addr, Handler)
        self.mode_file = mode_file
        self.max_bytes = max_bytes

    def mode(self) -> str:
        try:
            with open(self.mode_file) as fh:
                return fh.read().strip()
        except OSError:
            return "benign"


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--port", type=int, default=11434)
    ap.add_argument("--mode-file", required=True)
    ap.add_argument("--ready-file", required=True)
    ap.add_argument("--max-bytes", type=int, default=256 << 20)
    args = ap.parse_args()
    server = Server((args.host, args.port), args.mode_file, args.max_bytes)
    tmp = args.ready_file + ".tmp"
    with open(tmp, "w") as fh:
        json.dump({"pid": os.getpid(), "port": server.server_address[1]}, fh)
    os.replace(tmp, args.ready_file)
    try:
        server.serve_forever()
    finally:
        server.server_close()
    return 0


if __name__ == "__main__":
    sys.exit(main())

#!/usr/bin/python3
"""Freeze one thread of another process, for as long as this helper lives: a faithful #15950 wedge.

    freeze_thread.py TID

llama-server runs its inference loop on its main thread (thread id = process id) and serves HTTP
from other threads.  Stopping only that thread (``PTRACE_SEIZE`` then ``PTRACE_INTERRUPT``) gives
the reported symptom on the real server: ``/health`` answers, ``/slots`` and every completion hang,
the process is otherwise alive.  The thread stays stopped while this process lives; on SIGTERM,
SIGINT or stdin closing it detaches and exits, and the thread resumes where it was.  If this
process is killed, the kernel detaches it all the same: nothing is ever left stopped.

The stand-in Ollama starts it (its mode ``stuck-inference`` on a real runner) and kills it when
the mode clears or the runner goes; it needs the right to ptrace the target (same user, no Yama
restriction, or CAP_SYS_PTRACE).  Prints ``frozen TID`` once the thread is in its ptrace stop.
Standard library only.
"""

from __future__ import annotations

import ctypes
import os
import select
import signal
import sys

PTRACE_DETACH = 17
PTRACE_SEIZE = 0x4206
PTRACE_INTERRUPT = 0x4207
WALL = 0x40000000  # __WALL: wait for any kind of child, threads included

_libc = ctypes.CDLL(None, use_errno=True)
_libc.ptrace.restype = ctypes.c_long
_libc.ptrace.argtypes = (ctypes.c_long, ctypes.c_long, ctypes.c_void_p, ctypes.c_void_p)


def _ptrace(request: int, tid: int) -> None:
    if _libc.ptrace(request, tid, None, None) == -1:
        err = ctypes.get_errno()
        raise OSError(err, f"ptrace({request:#x}, {tid}): {os.strerror(err)}")


def main(argv: list[str]) -> int:
    if len(argv) != 2 or not argv[1].isdigit():
        print(f"usage: {argv[0]} TID", file=sys.stderr)
        return 2
    tid = int(argv[1])
    stop = False

    def on_signal(_signum: int, _frame: object) -> None:
        nonlocal stop
        stop = True

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    try:
        _ptrace(PTRACE_SEIZE, tid)
        _ptrace(PTRACE_INTERRUPT, tid)
        os.waitpid(tid, WALL)  # the thread is in its ptrace stop once this returns
    except OSError as e:
        print(f"freeze_thread: cannot freeze {tid}: {e}", file=sys.stderr, flush=True)
        return 1
    print(f"frozen {tid}", flush=True)
    while not stop:
        try:
            ready, _, _ = select.select([sys.stdin], [], [], 0.5)
            pid, status = os.waitpid(tid, os.WNOHANG | WALL)
        except InterruptedError:
            continue
        except ChildProcessError:
            return 0  # the thread is gone and reaped
        if pid == tid and (os.WIFEXITED(status) or os.WIFSIGNALED(status)):
            return 0  # it died (killed while frozen): nothing left to hold, and its exit is reported now
        if ready and not os.read(sys.stdin.fileno(), 4096):
            break  # the stand-in is gone (its end of the pipe closed)
    try:
        _ptrace(PTRACE_DETACH, tid)
    except OSError:
        pass  # the thread exited meanwhile, or is not stopped: the exit detaches it anyway
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))

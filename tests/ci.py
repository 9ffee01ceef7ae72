"""The whole test suite, as `make test` runs it: the do-no-harm module beside everything else.

    python3 -m tests.ci [--timeout MINUTES] [pytest args for the main run ...]

Why two processes: tests/e2e/test_harm.py holds load for the minutes issue 8 asks for (a 60 s
saturated load, a 3-minute stream, 60 s model loads, a 60 s admin stop, on each release), and
it spends them waiting, not computing.  Run one after the other on three releases, the suite
would not fit CI's hour; run beside the rest (each process boots its own containers), it does.
The main run prints to the terminal as usual; the harm run goes to build/ci-harm.log, printed
whole once both have ended, so no line of either is lost or interleaved.  The exit status is
the first failure's (pytest's 5, "no tests ran", counts as one).
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
HARM = "tests/e2e/test_harm.py"
#: Run beside the rest too: like the harm cases they mostly wait (attacks held for deep_confirm and more).
BESIDE = (HARM, "tests/e2e/test_attacks_evidence.py")  # test_load_stuck.py (~4 min) evens out the main run
LOG = REPO / "build" / "ci-harm.log"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--timeout", type=float, default=80, help="minutes before both runs are stopped (80)")
    args, rest = parser.parse_known_args(argv)
    deadline = time.monotonic() + args.timeout * 60
    pytest = [sys.executable, "-m", "pytest", "-p", "no:cacheprovider"]
    LOG.parent.mkdir(parents=True, exist_ok=True)
    t0 = time.monotonic()
    with open(LOG, "w") as log:
        harm = subprocess.Popen(
            [*pytest, "-ra", "--durations=15", *BESIDE], cwd=REPO, stdout=log, stderr=subprocess.STDOUT
        )
        print(f"ci: {' '.join(BESIDE)} run beside the rest (pid {harm.pid}, log {LOG.relative_to(REPO)})", flush=True)
        ignore = [arg for path in BESIDE for arg in ("--ignore", path)]
        main_run = subprocess.Popen([*pytest, "-ra", "--durations=15", *ignore, *rest], cwd=REPO)
        codes = {"main": _wait(main_run, deadline), "harm": None}
        if harm.poll() is None:
            print(f"\nci: waiting for {HARM} (log {LOG.relative_to(REPO)})", flush=True)
        codes["harm"] = _wait(harm, deadline)
    print(f"\n{'=' * 30} {HARM} (ran beside the rest) {'=' * 30}", flush=True)
    sys.stdout.write(LOG.read_text(errors="replace"))
    minutes = (time.monotonic() - t0) / 60
    print(f"\nci: main run exit {codes['main']}, harm run exit {codes['harm']}; {minutes:.1f} min", flush=True)
    return next((c for c in codes.values() if c), 0)


def _wait(proc: subprocess.Popen[bytes], deadline: float) -> int:
    """The process's exit status; past the deadline it is stopped (SIGTERM, then SIGKILL) and counts as failed."""
    try:
        return proc.wait(timeout=max(1.0, deadline - time.monotonic()))
    except subprocess.TimeoutExpired:
        print(f"ci: pid {proc.pid} ran past the deadline; stopping it", file=sys.stderr, flush=True)
        proc.terminate()
        try:
            proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        return 124


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    sys.exit(main())

"""``make demo``: a non-root user restarts a wedged (stand-in) Ollama in a throwaway container.

Boots a Debian container with real systemd, D-Bus and polkitd, installs
ollamactl as an admin would, wedges the stand-in Ollama the way real Ollama
wedges (version answers, generate hangs), shows ``ollamactl probe --deep``
telling that wedge apart, and lets alice (group ollamactl) restart it.  bob
(not in the group) is refused, and alice cannot touch another unit.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import time
from pathlib import Path

from tests import testbed

REPO = Path(__file__).resolve().parents[1]
STARTUP_GRACE_S = 10.0  # watch_startup_grace's default
BOLD, DIM, RESET = ("\033[1m", "\033[2m", "\033[0m") if sys.stdout.isatty() else ("", "", "")

GENERATE = (
    "import json,urllib.request\n"
    "req=urllib.request.Request('http://127.0.0.1:11434/api/generate',"
    "data=json.dumps({'model':'standin','prompt':'hi','stream':False,'options':{'num_predict':3}}).encode())\n"
    "try:\n"
    "    r=json.load(urllib.request.urlopen(req,timeout=3)); print('generate answered:', repr(r['response']))\n"
    "except Exception as e:\n"
    "    print('generate did not answer within 3 s:', type(e).__name__)\n"
)


def step(text: str) -> None:
    print(f"\n{BOLD}== {text}{RESET}", flush=True)


def show(c: testbed.Container, argv: list[str], user: str | None = None) -> subprocess.CompletedProcess[str]:
    who = user or "root"
    shown = " ".join(argv) if argv[0] != "python3" else "(an app's POST /api/generate, 3 s timeout)"
    print(f"{DIM}{who}$ {shown}{RESET}", flush=True)
    r = c.run(argv, user=user, timeout=120)
    for line in (r.stdout + r.stderr).rstrip().splitlines():
        print("   " + line)
    print(f"{DIM}   [exit {r.returncode}]{RESET}", flush=True)
    return r


def find_deb(given: Path | None) -> Path:
    """The .deb to install: the one given (make demo passes dist/'s), else a fresh (cached) build."""
    if given is not None:
        return given
    from tests import debbuild

    return debbuild.build().deb


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--suite", default="bookworm", choices=testbed.SUITES)
    parser.add_argument("--deb", type=Path, help="the .deb to install (default: build one, as make deb does)")
    args = parser.parse_args()
    failures = []
    deb = find_deb(args.deb)
    step(f"booting a throwaway Debian {args.suite} container (systemd, dbus, polkitd, stand-in Ollama)")
    print(f"   and installing {deb.name} with apt-get, as an admin would")
    t0 = time.monotonic()
    with testbed.boot(args.suite, deb=deb, log=lambda m: print(f"{DIM}   {m}{RESET}")) as c:
        ready = time.monotonic()
        print(f"   ready in {ready - t0:.1f}s")
        step("who is who")
        show(c, ["id", "alice"])
        show(c, ["id", "bob"])
        show(c, ["ollamactl", "status"], user="alice")

        step("an app uses Ollama: the model loads and answers")
        show(c, ["python3", "-c", GENERATE], user="alice")
        if show(c, ["ollamactl", "probe", "--deep", "-v"], user="alice").returncode != 0:
            failures.append("probe --deep of a healthy Ollama")

        # The container has just booted; a probe calls any unit younger than watch_startup_grace (10 s)
        # "starting".  A real Ollama has been up for longer when it wedges.
        time.sleep(max(0.0, STARTUP_GRACE_S + 0.5 - (time.monotonic() - ready)))
        step("Ollama wedges: /api/version still answers, generate hangs")
        # SIGUSR1 is a stuck inference loop in the stand-in (ollama #15950), for the life of its
        # process, as a real wedge lasts until the process is restarted.
        c.sh("kill -USR1 $(systemctl show -p MainPID --value ollama.service)", check=True)
        show(c, ["python3", "-c", GENERATE], user="alice")
        step("ollamactl probe --deep tells it apart: the runner's /slots stays silent for deep_confirm (8 s)")
        if show(c, ["ollamactl", "probe", "--deep", "-v"], user="alice").returncode != 12:
            failures.append("probe --deep did not say deep-wedged (exit 12)")
        step("alice cannot kill it herself: the process belongs to user ollama")
        show(c, ["pkill", "-f", "ollama serve"], user="alice")

        step("alice (group ollamactl) restarts it, no sudo")
        if show(c, ["ollamactl", "restart", "--reason", "generate hangs"], user="alice").returncode != 0:
            failures.append("alice's restart")
        show(c, ["python3", "-c", GENERATE], user="alice")

        step("bob (not in the group) is refused, and told how to fix it")
        if show(c, ["ollamactl", "restart"], user="bob").returncode != 3:
            failures.append("bob was not refused")
        if show(c, ["ollamactl", "doctor"], user="bob").returncode == 0:
            failures.append("doctor found nothing wrong for bob")

        step("alice may restart ollama.service only: polkit refuses her anything else")
        if show(c, ["ollamactl", "--unit", "other.service", "restart"], user="alice").returncode != 3:
            failures.append("alice restarted another unit")
        if show(c, ["systemctl", "stop", "ollama.service"], user="alice").returncode == 0:
            failures.append("alice could stop ollama.service")
        show(c, ["ollamactl", "status"], user="alice")

        step("what the admin granted, in words")
        show(c, ["ollamactl", "policy", "show"])
    step("result")
    print("   demo OK" if not failures else f"   demo FAILED: {', '.join(failures)}")
    return 1 if failures else 0


if __name__ == "__main__":
    raise SystemExit(main())

"""Issue 14: evidence a stranger can shape must not decide a restart, or withhold one.

On each release, with the watchdog as shipped (plus ``model``) and the stand-in
following OLLAMA.md, a non-member (bob: no ollamactl rights, only what any local
user has) attacks the verdict's inputs:

- empty generates every 2 s during a deep wedge: Ollama answers each with 200
  (done_reason "load") without the inference loop and logs it as a completed
  request; the watchdog still recovers within its documented bound;
- a listener on a runner's old port, answering /health and never /slots, on a
  healthy server: no restart, and a member's ``probe --deep`` says healthy;
- the same squatter on 127.0.0.2 with Ollama's own port: members still find the
  runner;
- a flood of 404s (thousands of journal lines, over journald's rate limit)
  during a model load: no restart, and the flood shows in the evidence.

SECURITY.md has a row for each, naming the test here.
"""

from __future__ import annotations

import json
import re
import time

import pytest

from bench import harm_bed as hc
from tests.e2e.conftest import TIMINGS, Bed

STRANGER = "bob"  # a local user outside group ollamactl


@pytest.fixture
def harm(healthy: Bed):
    h = hc.HarmBed(healthy.c, report=TIMINGS.append)
    h.install()
    try:
        yield h
    finally:
        h.restore()


def test_a_strangers_empty_generates_do_not_hold_off_recovery(harm: hc.HarmBed):
    """Before issue 14 each 200 reset the deep streak: no restart at all while they lasted."""
    w = hc.wedge(harm, "stuck-inference", loaded=False, forge_as=STRANGER)
    out = w.out
    detail = f"{w.restarts}; {json.dumps(out)[:1500]}\n{harm.watchdog_log(0, 40)}"
    forged = json.loads(out["forger"]["stdout"] or "{}")
    assert forged.get("ok", 0) >= 3, detail  # the attack ran: its empty generates were answered 200
    assert out["restarted"] and w.restarts.count == 1, detail
    # the documented bound for a silent runner: deep_confirm (8 s) of silence, a sample, the restart
    assert out["detect"] <= 15.0, detail
    assert out["recover"] is not None and out["generate_after"]["ok"], detail
    assert "does not show this runner working" in w.evidence or "no request completed" in w.evidence, w.evidence
    harm.report(
        "attack: empty generates every 2 s during a deep wedge",
        f"{forged['ok']} answered 200; detect {out['detect']:.1f}s recover {out['recover']:.1f}s",
    )


#: A stranger's listener: /health answers 200 as a runner's does, /slots never answers.
SQUATTER = r"""
import sys, time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
class H(BaseHTTPRequestHandler):
    def do_GET(self):
        if self.path.startswith("/slots"):
            time.sleep(3600)
        body = b'{"status":"ok"}'
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)
    def log_message(self, *a):
        pass
ThreadingHTTPServer.daemon_threads = True
ThreadingHTTPServer((sys.argv[1], int(sys.argv[2])), H).serve_forever()
"""
_PORT = re.compile(r"--port[ =]([0-9]+)")


def _squat(h: hc.HarmBed, name: str, host: str, port: int) -> None:
    """``STRANGER`` listens on host:port (a transient unit running as that user), until _unsquat."""
    h.c.run(
        ["systemd-run", "--collect", f"--unit={name}", f"--uid={STRANGER}", "python3", "-c", SQUATTER, host, str(port)],
        check=True,
    )
    for _ in range(100):
        if h.c.run(["sh", "-c", f"ss -Hltn 'sport = :{port}' | grep -q '{host}:{port}'"]).returncode == 0:
            return
        time.sleep(0.1)
    raise AssertionError(f"{STRANGER} could not listen on {host}:{port}: {h.c.run(['journalctl', '-u', name]).stdout}")


def _unsquat(h: hc.HarmBed, name: str) -> None:
    h.c.run(["systemctl", "stop", name])


def _runner_ports(h: hc.HarmBed, since: float) -> list[int]:
    """Ollama's runner ports started since ``since``, oldest first, from its own journal lines."""
    out = []
    for e in h.journal(since, unit=hc.UNIT):
        msg = e.get("MESSAGE")
        if isinstance(msg, str) and "starting llama-server" in msg and (m := _PORT.search(msg)):
            out.append(int(m.group(1)))
    return out


def _probe_deep(bed: Bed) -> tuple[int, dict]:
    return bed.json("probe", "--deep", user="alice")


def test_a_squatter_on_a_runners_old_port_is_not_ollamas_runner(harm: hc.HarmBed, healthy: Bed):
    """Unload the model, listen on the port its runner had (/health 200, /slots silent), let anyone reload it
    on a new port: the watchdog restarts nothing, a member's probe --deep says healthy."""
    t0 = time.time() - 1
    harm.configure()
    harm.warm()
    (old,) = _runner_ports(harm, t0)[-1:]
    unload = f'{{"model": "{harm.model}", "keep_alive": 0}}'
    post = "import sys, urllib.request as u; u.urlopen('http://127.0.0.1:11434/api/generate', sys.argv[1].encode(), 30)"
    healthy.c.run(["python3", "-c", post, unload], user=STRANGER, check=True)
    for _ in range(100):  # the runner exits and its port is free
        if healthy.c.run(["sh", "-c", f"ss -Hltn 'sport = :{old}' | grep -q ."]).returncode != 0:
            break
        time.sleep(0.1)
    _squat(harm, "squat-old", "127.0.0.1", old)
    try:
        harm.warm()  # anyone's request loads the model again, on a new port
        new = _runner_ports(harm, t0)[-1]
        assert new != old
        harm.settle()
        since, inv, nr = harm.mark()
        time.sleep(25)  # deep_confirm (8 s) three times over
        rs = harm.restarts(since, inv, nr)
        code, rep = _probe_deep(healthy)
        log = harm.watchdog_log(since - 1, 30)
    finally:
        _unsquat(harm, "squat-old")
    assert rs.count == 0 and not {k: v for k, v in rs.verdicts.items() if k == "deep-wedged"}, f"{rs}\n{log}"
    assert code == 0 and rep["outcome"] == "healthy", rep
    assert f":{old}" not in rep["evidence"] or "ignored" in rep["evidence"], rep["evidence"]
    harm.report("attack: a squatter on a runner's old port", f"restarts 0; member's probe --deep: {rep['outcome']}")


def test_a_squatter_on_another_loopback_address_does_not_hide_the_runner(harm: hc.HarmBed, healthy: Bed):
    """A listener on 127.0.0.2 with Ollama's port used to make Ollama's port look shared: no runner found."""
    harm.configure()
    harm.warm()
    _squat(harm, "squat-api", "127.0.0.2", 11434)
    try:
        code, rep = _probe_deep(healthy)
    finally:
        _unsquat(harm, "squat-api")
    assert code == 0 and "/slots answered" in rep["evidence"], rep
    harm.report(
        "attack: a squatter on 127.0.0.2:11434", f"a member's probe --deep still finds the runner: {rep['outcome']}"
    )


#: A stranger's flood: GETs of a path that does not exist (404, one gin line each) for ``seconds``.
FLOODER = r"""
import http.client, sys, threading, time
end = time.monotonic() + float(sys.argv[1])
def flood():
    conn = None
    while time.monotonic() < end:
        try:
            conn = conn or http.client.HTTPConnection("127.0.0.1", 11434, timeout=5)
            conn.request("GET", "/no-such-page")
            conn.getresponse().read()
        except (OSError, http.client.HTTPException):
            conn = None
            time.sleep(0.01)
threads = [threading.Thread(target=flood) for _ in range(16)]
for t in threads:
    t.start()
for t in threads:
    t.join()
"""
FLOOD_DROPIN = "/etc/systemd/system/ollama.service.d/zz-flood-test.conf"
#: journald's limit for the unit, lowered from Debian's 10000 lines per 30 s so a short flood exceeds it
#: (the mechanism, and what it drops, are the same at any limit).  journald multiplies the burst by
#: (log2(free bytes) - 16) / 4 (burst_modulate in journald-rate-limit.c: 4 to 6 times here); with 300, a
#: busy CI machine's stand-in once answered too few 404s to pass that before the load's end (sid).  50
#: leaves the load's own few start lines in and is passed within the flood's first second.
RATE_LIMIT = "[Service]\nLogRateLimitIntervalSec=15s\nLogRateLimitBurst=50\n"


def test_a_flood_that_drops_the_load_end_line_causes_no_restart(harm: hc.HarmBed):
    """A model load starts, then a stranger floods Ollama with 404s over journald's rate limit, so the load's
    "llama-server started in" line is dropped: the journal shows the load open for ever.  Before issue 14 the
    verdict said "loading" from then on (measured: 49 s after a 6 s load), which hides any real wedge, and with
    no other output the load would look stuck after load_timeout (5 s here) and be restarted.  Now the load ends
    when its runner answers /health 200: healthy, no restart, and the flood is named in the evidence."""
    c = harm.c
    c.write_file(FLOOD_DROPIN, RATE_LIMIT)
    try:
        config = f'model = "{harm.model}"\nload_timeout = 5\n'
        harm.configure({"STANDIN_LOAD_SECONDS": "6"}, config=config)  # nothing loaded yet
        harm.settle()
        since, inv, nr = harm.mark()
        loader = c.run(["systemd-run", "--collect", "--unit=flood-load", "python3", "/root/harm_driver.py",
                        "generate", "--model", harm.model, "--timeout", "60"], check=True)  # fmt: skip
        time.sleep(1.5)  # the load's start lines are in; its end comes ~5 s into the flood
        c.run(
            ["systemd-run", "--collect", "--unit=flood-404", f"--uid={STRANGER}", "python3", "-c", FLOODER, "12"],
            check=True,
        )
        time.sleep(12 + 35)  # the flood, then load_timeout + Ollama's own 15 s grace + the confirmations, twice over
        rs = harm.restarts(since, inv, nr)
        entries = harm.journal(since, unit=hc.UNIT)
        log = harm.watchdog_log(since - 1, 40)
        probe = c.run(["ollamactl", "probe", "--deep", "--json"])  # root reads the journal, as the watchdog does
    finally:
        c.run(["systemctl", "stop", "flood-404", "flood-load"])
        c.run(["rm", "-f", FLOOD_DROPIN])
        c.run(["systemctl", "daemon-reload"])
    msgs = [e.get("MESSAGE") for e in entries if isinstance(e.get("MESSAGE"), str)]
    assert loader.returncode == 0
    # the attack worked: journald dropped lines, among them the load's end
    assert any(m.startswith("Suppressed ") for m in msgs), msgs[-20:]
    assert any("starting llama-server" in m for m in msgs), msgs[:20]
    assert not any("llama-server started in" in m for m in msgs), "the load-end line got through: no attack"
    assert rs.count == 0, f"{rs}\n{log}"
    report = json.loads(probe.stdout)
    assert report["outcome"] == "healthy" and "journald dropped" in report["evidence"], probe.stdout
    harm.report("attack: a 404 flood drops the load-end line", f"restarts 0 ({rs.verdicts})")


def test_a_squatter_on_a_crashed_runners_port_is_not_ollamas_runner(harm: hc.HarmBed):
    """The runner dies; until Ollama's next request for its model reloads it, /api/ps still lists the model
    and the journal still names the port.  A stranger who takes that port (/health 200, /slots silent) is
    ruled out only by the socket's owner: the watchdog must see real uids (no PrivateUsers=)."""
    t0 = time.time() - 1
    harm.configure()
    harm.warm()
    port = _runner_ports(harm, t0)[-1]
    harm.settle()
    since, inv, nr = harm.mark()
    harm.set_mode("kill-runner=once")
    for _ in range(100):  # the runner is dead and its port free; nothing has asked for the model since
        if harm.c.run(["sh", "-c", f"ss -Hltn 'sport = :{port}' | grep -q ."]).returncode != 0:
            break
        time.sleep(0.1)
    _squat(harm, "squat-dead", "127.0.0.1", port)
    try:
        time.sleep(25)  # deep_confirm (8 s) three times over
        rs = harm.restarts(since, inv, nr)
        log = harm.watchdog_log(since - 1, 30)
        probe = harm.c.run(["ollamactl", "probe", "--deep", "--json"])  # as root, reading the journal too
    finally:
        _unsquat(harm, "squat-dead")
    assert rs.count == 0 and not {k: v for k, v in rs.verdicts.items() if k == "deep-wedged"}, f"{rs}\n{log}"
    report = json.loads(probe.stdout)
    assert report["outcome"] == "healthy", probe.stdout
    assert f"runner :{port} ignored: not listened on by Ollama's user" in report["evidence"], probe.stdout
    harm.report("attack: a squatter on a crashed runner's port", f"restarts 0 ({rs.verdicts})")

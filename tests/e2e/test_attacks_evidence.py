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

"""Do no harm (issue 8): the watchdog, as shipped plus a model, never restarts a busy, loading or stopped
Ollama, and still recovers every faithful wedge, idle and under load.

On each release (the ``bed`` fixture), with the stand-in's scheduler and the
watchdog enabled with every key at its default plus ``model``: a saturated
server, one long streamed generation, slow model loads under load and an
admin's ``systemctl stop`` see no restart at all (counted by InvocationIDs,
NRestarts and the watchdog's journal) and no failed client request; the deep
probes load nothing, take no slot and leave keep-alive alone; each wedge the
stand-in models is recovered (new InvocationID, API answering, a generate
working), with the time from the wedge to the API answering again in the
"recovery timings" summary.  A scheduler stuck on an eviction (#17408) leaves
no evidence the verdict can use: that case checks no restart and no harm, and
says "not detected" (bench/harm_bed.py UNDETECTABLE has the reason).

The cases live in bench/harm_bed.py, shared with bench/bench_watch.py, which
runs them longer; the CI lengths are in tests/e2e/harm_cases.py (saturated
load 30 s, the stream 45 s, each model load 30 s, the stop 30 s: each outlasts
the watchdog's longest window, 10 s of startup grace or 8 s of deep_confirm,
at least three times; bench: 120 / 180 / 60 / 60 s).  Cases run one after
another: they share one ollama.service.
"""

from __future__ import annotations

import pytest

from bench import harm_bed as hc
from tests.e2e import harm_cases as ci
from tests.e2e.conftest import TIMINGS, Bed

STOPPED = 14  # exit code: probe outcome stopped; restart refused on a stopped unit


@pytest.fixture
def harm(healthy: Bed):
    """The bed with the harm driver installed; afterwards the watchdog off and Ollama as it was."""
    h = hc.HarmBed(healthy.c, report=TIMINGS.append)
    h.install()
    try:
        yield h
    finally:
        h.restore()


def _no_restart(h: hc.HarmBed, r: hc.CaseResult) -> str:
    """The failure text for a case that must not restart: the counts and the watchdog's own words."""
    return f"{r.name}: {r.restarts}; states {r.hold['states']}; loads {r.loads()}\n" + h.watchdog_log(0, 40)


def _alarms(r: hc.Restarts) -> dict[str, int]:
    """Inference judged stuck, even unconfirmed: here it never is (its /slots answer), so none is allowed.

    A transient "wedged" (/api/version slower than the probe timeout on a loaded 2-core host) is only
    reported: it is confirmed only with no request completing, which the counts above would show.
    """
    return {k: v for k, v in r.verdicts.items() if k == "deep-wedged"}


def _verdicts(r: hc.Restarts) -> str:
    return ", ".join(f"{k} x{v}" for k, v in sorted(r.verdicts.items())) or "none logged"


def test_saturated_load_is_not_restarted(harm: hc.HarmBed):
    r = hc.saturated_load(harm, ci.SATURATED_SECONDS)
    assert r.restarts.count == 0, _no_restart(harm, r)
    assert not _alarms(r.restarts), _no_restart(harm, r)
    (load,) = r.loads()
    assert load["requests"] > 0 and load["failed"] == 0, load
    assert set(r.hold["states"]) == {"active/running"}, r.hold["states"]
    harm.report(
        f"saturated load ({2 * hc.SATURATED_PARALLEL} clients, NUM_PARALLEL={hc.SATURATED_PARALLEL},"
        f" {ci.SATURATED_SECONDS:g} s)",
        f"restarts {r.restarts.count}, requests {load['requests']} ok {load['ok']} failed {load['failed']},"
        f" p50 {load['p50']} s max {load['max']} s; watchdog verdicts: {_verdicts(r.restarts)}",
    )


def test_one_long_stream_is_not_restarted(harm: hc.HarmBed):
    r = hc.long_stream(harm, ci.STREAM_SECONDS)
    assert r.restarts.count == 0, _no_restart(harm, r)
    assert not _alarms(r.restarts), _no_restart(harm, r)
    (load,) = r.loads()
    assert (load["requests"], load["ok"], load["failed"]) == (1, 1, 0), load
    assert load["max"] >= ci.STREAM_SECONDS * 0.9, load  # it really took the slot that long
    harm.report(
        f"one streamed generation of {ci.STREAM_SECONDS:g} s (the only slot)",
        f"restarts {r.restarts.count}, the stream completed in {load['max']} s;"
        f" watchdog verdicts: {_verdicts(r.restarts)}",
    )


def test_slow_model_loads_under_load_are_not_restarted(harm: hc.HarmBed):
    r = hc.slow_loads(harm, ci.LOAD_SECONDS)
    assert r.restarts.count == 0, _no_restart(harm, r)
    assert not _alarms(r.restarts), _no_restart(harm, r)
    first, second = r.loads()
    assert first["requests"] > 0 and first["failed"] == 0, first
    assert first["max"] >= ci.LOAD_SECONDS * 0.9, first  # the clients' first requests waited out the load
    assert (second["requests"], second["failed"]) == (1, 0), second
    assert second["max"] >= ci.LOAD_SECONDS * 0.9, second
    harm.report(
        f"two model loads of {ci.LOAD_SECONDS:g} s under load ({hc.LOAD_CLIENTS} clients; standin2 queued)",
        f"restarts {r.restarts.count}, clients: requests {first['requests']} failed {first['failed']}"
        f" (first waited {first['max']} s), standin2 answered after {second['max']} s;"
        f" watchdog verdicts: {_verdicts(r.restarts)}; its GET /api/ps: {r.extra['ps_requests']},"
        f" {r.extra['ps_blocked']} held >= 2 s by a load (longest {r.extra['ps_blocked_max']:.0f} s)",
    )


def test_deep_probes_do_not_load_queue_or_touch_keep_alive(harm: hc.HarmBed):
    q = hc.quiet_probes(harm)
    assert q.ps_unloaded == ({}, {}), q  # the configured model is not loaded by the probes
    assert list(q.ps_loaded[0]) == [hc.MODEL] and q.ps_loaded[0] == q.ps_loaded[1], q  # expires_at unmoved
    slot_takers = {k: v for k, v in q.requests.items() if k.split()[-1] in ("/api/generate", "/api/chat", "/api/embed")}
    assert slot_takers == {"POST /api/generate": 1}, q  # ours; the probes sent none
    assert q.loads == 1, q  # ours
    assert not _alarms(hc.Restarts([], 0, [], q.verdicts)), q
    harm.report(
        f"deep probes with {hc.MODEL} configured, {2 * hc.QUIET_SECONDS:g} s",
        f"loads 0 (ours 1), generate/chat/embed 0 (ours 1), expires_at unmoved; requests seen {q.requests}",
    )


def test_an_admin_stop_is_respected(harm: hc.HarmBed):
    r = hc.admin_stop(harm, ci.STOP_SECONDS)
    detail = f"{r.restarts}; states {r.hold['states']}\n{harm.watchdog_log(0, 40)}"
    assert set(r.hold["states"]) == {"inactive/dead"}, detail
    assert r.restarts.count == 0, detail
    assert not _alarms(r.restarts), detail
    assert r.restart_rc == STOPPED, r.restart_out
    assert r.state_after == "inactive", r.restart_out
    assert (r.probe["rc"], r.probe.get("outcome")) == (STOPPED, "stopped"), r.probe
    assert r.stopped_logged, detail
    harm.report(
        f"systemctl stop with the watchdog running ({ci.STOP_SECONDS:g} s)",
        f"stayed {r.state_after}, starts {r.restarts.count}; alice's restart exit {r.restart_rc};"
        f" probe {r.probe.get('outcome')}",
    )


@pytest.mark.parametrize("loaded", [False, True], ids=["idle", "loaded"])
@pytest.mark.parametrize("kind", list(hc.WEDGES))
def test_wedge_is_recovered(harm: hc.HarmBed, kind: str, loaded: bool):
    w = hc.wedge(harm, kind, loaded)
    out, load = w.out, w.out["load"]
    detail = f"{w.restarts}; {out}\n{harm.watchdog_log(0, 40)}"
    if kind in hc.UNDETECTABLE:
        # no evidence of no progress: no restart, and no harm to the loaded model's users
        assert not out["restarted"] and w.restarts.count == 0, detail
        assert out["api_answers"] and out["generate_loaded_model"]["ok"], detail
        assert not out["trigger"]["answered"], detail  # the wedge was real: the other model's load hangs
        if load:
            assert load["killed"] == 0 and load["refused"] == 0 and load["ok"] > 0, load
        harm.report(
            f"wedge {w.label}",
            f"not detected in {hc.UNDETECTED_WINDOW:g} s (restarts 0; the loaded model kept answering"
            + (f", {load['ok']} requests ok, 0 failed" if load else "")
            + f"): {hc.UNDETECTABLE[kind]}",
        )
        return
    assert out["restarted"], detail
    assert out["recover"] is not None and out["generate_after"]["ok"], detail
    assert w.restarts.count == 1, detail  # exactly one restart: the new process is healthy
    if load:
        assert load["before_failed"] == 0 and load["before_ok"] > 0, load
        assert load["after_ok"] > 0, load  # the clients are served again
    harm.report(
        f"wedge {w.label}",
        f"detect {out['detect']:.1f}s recover {out['recover']:.1f}s"
        + (f" requests killed {load['killed']} (connections refused while down {load['refused']})" if load else "")
        + (f"; evidence: {w.evidence}" if w.evidence else ""),
    )

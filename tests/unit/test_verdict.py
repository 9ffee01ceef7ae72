"""The verdict on simulated evidence: every outcome, and restarts only on evidence of no progress.

Each scenario runs the shipped defaults on a virtual clock (tests/unit/world.py);
the times asserted are what the watchdog would see (the e2e suite measures the
real thing).  ``run`` applies a restart the moment a verdict calls for one.
"""

from __future__ import annotations

import pytest

from ollamactl import probe, verdict
from ollamactl.config import load_config
from ollamactl.verdict import (
    BUSY,
    DEEP_WEDGED,
    DOWN,
    FAILED,
    HEALTHY,
    LOADING,
    STARTING,
    STOPPED,
    WEDGED,
    Judge,
    Limits,
)
from tests.unit.world import MODEL, PORT, World

DEFAULTS = Limits.from_config(load_config(environ={}, config_file="/dev/null"))


def run(world: World, seconds: float, *, judge: Judge | None = None, deep: bool = True, events=None):
    """Sample every period for ``seconds``; returns [(time, verdict)]."""
    judge = judge or Judge(DEFAULTS)
    out = []
    end = world.now + seconds
    while world.now < end:
        if events is not None:
            events(world)
        v = judge.observe(world.sample(deep))
        out.append((world.now, v))
        if v.restart:
            world.restart()
            judge.reset()
        world.advance()
    return out


def restarts(out):
    return [t for t, v in out if v.restart]


def outcomes(out):
    return {v.outcome for _, v in out}


def test_the_shipped_limits():
    assert DEFAULTS == Limits(threshold=3, deep_confirm=8.0, load_timeout=300.0, startup_grace=10.0)


# -- the unit: an admin's stop and a failure are never restarted ------------------------------------


def test_stopped_is_never_restarted_and_says_how_to_start():
    w = World(active_state="inactive", result="success")
    out = run(w, 120)
    assert restarts(out) == [] and outcomes(out) == {STOPPED}
    v = out[-1][1]
    assert v.exit_code == 14 and "sudo systemctl start ollama.service" in v.evidence and not v.restart


@pytest.mark.parametrize(("state", "result"), [("inactive", "success"), ("inactive", "timeout"), ("failed", "signal")])
def test_down_with_a_job_pending_is_a_restart_under_way_not_an_admins_stop_or_a_failure(state, result):
    """systemd's restart job leaves the unit down, job pending, between stop and start (after a SIGKILL with
    Result=timeout); PID 1 answers D-Bus before it runs the start, so a busy bus sees this for a while."""
    out = run(World(active_state=state, result=result, job_id=7), 30)
    assert restarts(out) == [] and outcomes(out) == {STARTING}
    assert "job pending" in out[-1][1].evidence


@pytest.mark.parametrize(
    ("state", "result"), [("failed", "exit-code"), ("failed", "start-limit-hit"), ("inactive", "signal")]
)
def test_failed_is_never_restarted_and_gives_result_and_fix(state, result):
    out = run(World(active_state=state, result=result), 60)
    assert restarts(out) == [] and outcomes(out) == {FAILED}
    v = out[-1][1]
    assert v.exit_code == 17 and f"Result={result}" in v.evidence
    assert "sudo systemctl reset-failed ollama.service && sudo systemctl start ollama.service" in v.evidence
    assert "journalctl -u ollama.service -n 50" in v.evidence


@pytest.mark.parametrize("state", ["activating", "deactivating", "reloading"])
def test_transitions_are_starting(state):
    out = run(World(active_state=state, mode="silent"), 30)
    assert restarts(out) == [] and outcomes(out) == {STARTING}


def test_failures_within_the_startup_grace_do_not_count():
    w = World(mode="silent")
    w.started_at = w.now - 1
    out = run(w, 8)
    assert restarts(out) == [] and outcomes(out) == {STARTING}


# -- the whole server silent ------------------------------------------------------------------------


def test_whole_server_silent_is_restarted_within_the_target():
    w = World()
    wedge_at = w.now + 5.5  # mid-period, as it would happen
    out = run(w, 30, events=lambda w: setattr(w, "mode", "silent") if w.now >= wedge_at and not w.restarts else None)
    (t,) = restarts(out)
    v = next(v for tt, v in out if tt == t)
    assert v.outcome == WEDGED and v.confirmed and "3rd time" in v.evidence and "no request completed" in v.evidence
    # the restart is asked for 3 probe timeouts after the first silent probe; with ~0.5 s to restart, <= 5 s
    assert t + w.probe_timeout - wedge_at <= 4.0, t - wedge_at


def test_a_completion_during_a_liveness_streak_means_progress():
    """/api/version slow under extreme load, but requests complete: busy, never wedged."""
    w = World(mode="silent")

    def complete(w):
        w.completions.append(w.now + 0.3)  # one request completes during every sample

    out = run(w, 120, events=complete)
    assert restarts(out) == [] and outcomes(out) == {BUSY}
    assert "a request completed at" in out[-1][1].evidence


def test_one_completion_resets_the_streak_but_does_not_stop_a_later_one():
    w = World(mode="silent")
    out = run(w, 20, events=lambda w: w.completions.append(w.now + 0.3) if len(w.completions) < 2 else None)
    assert len(restarts(out)) == 1
    assert [v.outcome for _, v in out[:2]] == [BUSY, BUSY] and out[2][1].outcome == WEDGED


def test_refused_while_active_is_down_and_restarted():
    out = run(World(mode="refused"), 10)
    (t,) = restarts(out)
    assert next(v for tt, v in out if tt == t).outcome == DOWN


def test_without_the_journal_a_silent_server_is_still_restarted():
    w = World(mode="silent", journal_readable=False)
    out = run(w, 10)
    assert len(restarts(out)) == 1 and "no journal evidence" in out[0][1].evidence


# -- inference: busy, streaming, stuck ----------------------------------------------------------------


def test_busy_server_under_saturation_is_never_restarted():
    """Slots answering with n_decoded rising, requests completing now and then, probes sometimes slow."""
    w = World(mode="busy")

    def load(w):
        if int(w.now) % 7 == 0:
            w.completions.append(w.now + 0.5)

    out = run(w, 300, events=load)
    assert restarts(out) == [] and outcomes(out) <= {HEALTHY, BUSY}
    assert "n_decoded" in out[-1][1].evidence and "1 of 1 slots busy" in out[-1][1].evidence


def test_one_three_minute_stream_without_any_completion_is_never_restarted():
    """The only slot taken, tokens flowing, nothing completes for 3 minutes: not a wedge."""
    out = run(World(mode="stream"), 200)
    assert restarts(out) == [] and outcomes(out) == {HEALTHY}


def test_a_slow_slots_answer_alone_is_never_a_wedge():
    """/slots silent for a few seconds now and then (a long prompt batch), answering in between."""
    w = World(mode="busy")
    out = run(w, 300, events=lambda w: setattr(w, "mode", "stuck" if int(w.now) % 12 < 5 else "busy"))
    assert restarts(out) == [] and DEEP_WEDGED in outcomes(out)
    assert all(not v.confirmed for _, v in out)


def test_stuck_inference_loop_is_restarted_within_the_target():
    w = World()
    wedge_at = w.now + 20.5
    out = run(w, 60, events=lambda w: setattr(w, "mode", "stuck") if w.now >= wedge_at and not w.restarts else None)
    (t,) = restarts(out)
    v = next(v for tt, v in out if tt == t)
    assert v.outcome == DEEP_WEDGED and f"GET /slots on runner :{PORT} no answer" in v.evidence
    assert "/health answers" in v.evidence and "/api/version answers" in v.evidence
    assert "no request completed since" in v.evidence and "standin:latest" in v.evidence
    # deep_confirm (8 s) of silence, one more sample, then ~0.5 s to restart: within 15 s
    done = t + w.deep_timeout
    assert DEFAULTS.deep_confirm <= done - wedge_at <= 11.0, done - wedge_at


def test_a_busy_slot_that_stops_moving_is_restarted_within_the_target():
    """The real llama-server answers /slots while its inference loop is frozen inside a decode (#15950 on
    Debian's build 11669): is_processing true, n_decoded flat, the unit idle.  Tokens were flowing before."""
    w = World(mode="stream")
    wedge_at = w.now + 20.5
    out = run(w, 90, events=lambda w: setattr(w, "mode", "stalled") if w.now >= wedge_at and not w.restarts else None)
    (t,) = restarts(out)
    v = next(v for tt, v in out if tt == t)
    assert (
        v.outcome == DEEP_WEDGED
        and f"runner :{PORT} /slots answers but its 1 busy slot(s) made no progress" in v.evidence
    )
    # the counters were last seen moving at the sample before the wedge; STALL_CONFIRM (a GPU batch may leave
    # the CPUs idle for a while) from then
    assert verdict.STALL_CONFIRM - 1 <= t - wedge_at <= verdict.STALL_CONFIRM + 2, t - wedge_at


def test_a_long_prompt_batch_with_the_unit_computing_is_never_restarted():
    """Counters flat for a whole batch (13.7 s for 2048 tokens of a 100 MB model on 2 cores, measured), the
    unit computing on 2 CPUs, then they move again: busy, never a wedge."""
    w = World(mode="stream", cpus=2.0)
    out = run(w, 300, events=lambda w: setattr(w, "mode", "stalled" if int(w.now) % 20 < 14 else "stream"))
    assert restarts(out) == [] and DEEP_WEDGED not in outcomes(out)  # not even pending: no alarm at all
    assert any("a long batch" in v.evidence for _, v in out)


def test_slow_tokens_with_the_unit_idle_are_no_alarm():
    """A slow stream (a token every few seconds, a jittery host) leaves the counters flat between tokens, with
    the CPUs idle as seen through a GPU: up to deep_confirm of that is not even a pending alarm."""
    gap = DEFAULTS.deep_confirm - 1
    w = World(mode="stream", cpus=0.0)
    out = run(w, 300, events=lambda w: setattr(w, "mode", "stalled" if int(w.now) % (gap + 1) < gap else "stream"))
    assert restarts(out) == [] and DEEP_WEDGED not in outcomes(out)
    assert any("one slow token" in v.evidence for _, v in out)


@pytest.mark.parametrize("cpus", [1.0, 0.6])
def test_flat_counters_on_one_computing_thread_are_busy(cpus):
    """llama-server with -t 1 computing one long batch uses one CPU: that is work, not a frozen loop."""
    out = run(World(mode="stalled", cpus=cpus), 120)
    assert restarts(out) == [] and out[-1][1].outcome == BUSY


def test_flat_counters_without_the_units_cpu_time_are_never_confirmed():
    """Without CPUUsageNSec a long batch and a frozen loop look alike: pending, never a restart."""
    out = run(World(mode="stalled", cpu_known=False), 120)
    assert restarts(out) == [] and out[-1][1].outcome == DEEP_WEDGED and not out[-1][1].confirmed
    assert "CPU time is unknown" in out[-1][1].evidence


def test_a_stalled_streak_never_carries_over_into_a_silent_one():
    """Flat counters on one computing thread (busy), then one /slots timeout: a new streak, not the old one's
    count and span (which would confirm a wedge on a single slow answer)."""
    judge, w = Judge(DEFAULTS), World(mode="stalled", cpus=1.0)
    out = run(w, 25, judge=judge) + run(w, 1, judge=judge, events=lambda w: setattr(w, "mode", "stuck"))
    assert restarts(out) == [] and not any(v.confirmed for _, v in out)


def test_a_slot_that_goes_from_idle_to_busy_with_the_same_counters_has_just_moved():
    """Idle for minutes, then busy showing the same counters (no task id, or a reused port): flat since the
    slot became busy, not since it was first seen idle."""
    judge, w = Judge(DEFAULTS), World(mode="ok", cpus=0.0)
    out = run(w, 120, judge=judge)
    w.mode = "stalled"
    out = run(w, 5, judge=judge)
    assert restarts(out) == [] and not any(v.confirmed for _, v in out)


def test_the_progress_of_runners_that_are_gone_is_forgotten():
    """Every reload gets a new port: a watchdog running for weeks must not keep every port it ever saw."""
    judge, w = Judge(DEFAULTS), World(mode="busy")
    for port in range(50):
        w.runners = {40000 + port: w.now}
        run(w, 2, judge=judge)
    assert {port for port, _ in judge._progress} == {40049}


def test_a_new_task_in_the_slot_is_progress():
    """n_decoded starts again from 0 for each task: a new id_task with the same count is progress, not flat."""
    w = World(mode="stalled")

    def next_task(w):
        w.task += 1  # each request is tiny: the same n_decoded every time, a new task every sample

    out = run(w, 60, events=next_task)
    assert restarts(out) == [] and outcomes(out) == {HEALTHY}


@pytest.mark.parametrize("mode", ["stuck", "stalled"])
def test_completion_lines_do_not_hold_off_a_stuck_runner(mode):
    """Issue 14 §1: anyone's empty generate every 2 s completes with 200 (done_reason "load") without the
    inference loop, and logs a gin line like any other; a stuck runner is restarted within its bound anyway."""
    w = World(mode="stream")
    wedge_at = w.now + 20.5

    def events(w):
        if w.now >= wedge_at and not w.restarts:
            w.mode = mode
        if int(w.now) % 2 == 0:
            w.completions.append(w.now + 0.5)

    out = run(w, 90, events=events)
    (t,) = restarts(out)
    bound = DEFAULTS.deep_confirm if mode == "stuck" else verdict.STALL_CONFIRM
    assert t - wedge_at <= bound + 3, t - wedge_at
    v = next(v for tt, v in out if tt == t)
    assert "which does not show this runner working" in v.evidence


def test_a_silent_runner_computing_on_several_cpus_is_busy():
    """A long prompt batch on a CPU-only host: /slots waits for it, the unit burns CPUs."""
    w = World(mode="stuck", cpus=6.0)
    out = run(w, 120)
    assert restarts(out) == [] and out[-1][1].outcome == BUSY and "computing" in out[-1][1].evidence


def test_the_first_silent_sample_while_the_unit_computes_raises_no_alarm():
    """A model loading beside a busy one starves a runner's /slots for a moment on 2 cores: with the unit
    computing over the last period, not even a pending deep-wedged verdict is logged."""
    judge, w = Judge(DEFAULTS), World(mode="busy", cpus=2.0)
    out = run(w, 10, judge=judge) + run(w, 3, judge=judge, events=lambda w: setattr(w, "mode", "stuck"))
    assert DEEP_WEDGED not in outcomes(out) and restarts(out) == []
    assert BUSY in outcomes(out[10:])


def test_a_runner_stuck_on_one_cpu_spinning_is_still_stuck():
    w = World(mode="stuck", cpus=1.0)
    assert len(restarts(run(w, 30))) == 1


def test_without_the_journal_the_slots_signal_alone_decides():
    w = World(mode="stuck", journal_readable=False)
    out = run(w, 30)
    assert len(restarts(out)) == 1 and "no journal evidence" in out[0][1].evidence


def test_a_port_that_never_answered_like_a_runner_is_not_evidence():
    """Neither /health nor /slots answers (a stale or forged port): no deep streak."""
    w = World(mode="stuck", health_answers=False)
    out = run(w, 60)
    assert restarts(out) == [] and outcomes(out) == {HEALTHY}


def test_a_proven_runner_that_goes_wholly_silent_counts():
    w = World()
    out = run(w, 5) + run(w, 30, events=lambda w: (setattr(w, "mode", "stuck"), setattr(w, "health_answers", False)))
    assert len(restarts(out)) == 0  # separate judges: the second never saw it answer
    judge = Judge(DEFAULTS)
    w = World()
    out = run(w, 5, judge=judge)
    w.mode, w.health_answers = "stuck", False
    out = run(w, 30, judge=judge)
    assert len(restarts(out)) == 1 and "/health does not answer either" in out[0][1].evidence


def test_no_model_loaded_means_nothing_to_deep_probe():
    w = World(mode="stuck", models=[])
    out = run(w, 30)
    assert restarts(out) == [] and outcomes(out) == {HEALTHY}
    assert "no model loaded: nothing to deep-probe" in out[-1][1].evidence


def test_liveness_only_samples_keep_a_deep_streak():
    judge, w = Judge(DEFAULTS), World(mode="stuck")
    judge.observe(w.sample(True))
    w.advance()
    assert judge.observe(w.sample(False)).outcome == HEALTHY and judge.deep_pending


# -- loads ------------------------------------------------------------------------------------------


def test_a_load_whose_end_line_was_lost_ends_when_its_runner_answers():
    """Issue 14 §4: a flood of 404s pushed Ollama over journald's rate limit and "llama-server started in" was
    dropped; the journal shows the load open for ever.  Its runner answers /health 200: loaded, not stuck."""
    w = World(mode="loading", runners={PORT: 0})
    w.runners[PORT + 1] = w.now
    w.load_started = w.load_activity = w.now  # never closed: the line was suppressed
    out = run(w, 20)
    w.mode = "ok"  # the load finished; only the journal does not say so
    out += run(w, DEFAULTS.load_timeout + 60)
    assert restarts(out) == [] and out[-1][1].outcome == HEALTHY, out[-1][1].evidence


def test_a_flood_shows_in_the_evidence():
    w = World(mode="ok")
    original = w.journal

    def flooded():
        facts = original()
        facts.dropped, facts.dropped_at = 8123, w.now - 5
        return facts

    w.journal = flooded
    out = run(w, 3)
    assert "journald dropped 8123 of Ollama's lines (rate limit)" in out[-1][1].evidence


def test_loading_is_never_restarted_within_load_timeout():
    w = World(mode="loading", runners={PORT: 0, PORT + 1: 0})
    w.runners[PORT + 1] = w.now
    w.load_started = w.load_activity = w.now
    out = run(w, 300)
    assert restarts(out) == [] and outcomes(out) == {LOADING}
    assert "a model load is in progress since" in out[-1][1].evidence and out[-1][1].exit_code == 16


def test_a_load_with_signs_of_life_may_take_longer_than_load_timeout():
    w = World(mode="loading")
    w.load_started = w.now

    def progress(w):
        w.load_activity = w.now  # llama-server's output while it loads, as Ollama's own stall timer sees it

    out = run(w, 600, events=progress)
    assert restarts(out) == [] and outcomes(out) == {LOADING}


def test_a_load_stuck_past_load_timeout_is_deep_wedged():
    w = World(mode="loading")
    began = w.load_started = w.load_activity = w.now
    out = run(w, 400)
    (t,) = restarts(out)
    limit = DEFAULTS.load_timeout + verdict.LOAD_GRACE
    assert limit <= t + 1 - began <= limit + 5
    v = next(v for tt, v in out if tt == t)
    assert v.outcome == DEEP_WEDGED and "shows no sign of life" in v.evidence


def test_without_the_journal_a_blocked_api_ps_is_taken_for_a_load():
    w = World(mode="loading", journal_readable=False)
    out = run(w, 200)
    assert restarts(out) == [] and outcomes(out) == {LOADING} and "(first seen then)" in out[-1][1].evidence
    w = World(mode="loading", journal_readable=False, runners={})
    assert "GET /api/ps blocks" in run(w, 5)[-1][1].evidence


def test_api_ps_blocked_outside_a_load_with_runners_answering_is_busy_not_wedged():
    w = World(mode="busy")
    out = run(w, 10, events=lambda w: w.took(1.0))
    assert restarts(out) == []


# -- every outcome has its exit code -------------------------------------------------------------------


def test_every_outcome_has_its_exit_code():
    assert verdict.EXIT_CODES == {
        "healthy": 0,
        "down": 10,
        "wedged": 11,
        "deep-wedged": 12,
        "starting": 13,
        "stopped": 14,
        "busy": 15,
        "loading": 16,
        "failed": 17,
        "load-stuck": 19,
    }
    assert set(verdict.OUTCOMES) == set(verdict.EXIT_CODES)
    assert verdict.RESTARTABLE == {DOWN, WEDGED, DEEP_WEDGED, verdict.LOAD_STUCK}


def test_nothing_is_confirmed_while_the_journal_read_fails():
    """A completion may be in the part of the journal we could not read: wait for the next read."""
    w = World(mode="silent")
    original = w.journal

    def flaky():
        facts = original()
        facts.failed_reads, facts.problem = (
            (1, "journalctl did not finish within 5s") if len(w.restarts) == 0 else (0, "")
        )
        return facts

    w.journal = flaky
    out = run(w, 10)
    assert restarts(out) == [] and "as far as the journal was read" in out[-1][1].evidence


# -- a load that never starts (#17408): only the one who waits on it can tell ------------------------------


def run_waiting(world: World, wait: verdict.LoadWait, seconds: float, judge: Judge | None = None):
    """``run`` with the caller's LoadWait in every sample, as the guard and probe --load give it."""
    judge = judge or Judge(DEFAULTS)
    out = []
    end = world.now + seconds
    while world.now < end:
        s = world.sample(True)
        s.wait = wait
        out.append((world.now, judge.observe(s)))
        world.advance()
    return out


def deadlock(**changes) -> tuple[World, verdict.LoadWait]:
    """#17408: the loaded model's runner idle, the other model asked for and never loaded, nothing logged."""
    w = World(mode="ok", **changes)
    return w, verdict.LoadWait("other", w.now)


def test_a_load_that_never_starts_while_every_runner_idles_is_load_stuck_after_load_stuck_after():
    w, wait = deadlock()
    out = run_waiting(w, wait, DEFAULTS.load_stuck_after + 5)
    first = next(t for t, v in out if v.outcome == verdict.LOAD_STUCK)
    assert DEFAULTS.load_stuck_after <= first - wait.since + 1 <= DEFAULTS.load_stuck_after + 1.5
    v = out[-1][1]
    assert v.restart and v.exit_code == 19 and "ollama #17408" in v.evidence and "other" in v.evidence
    assert all(v.outcome == HEALTHY for t, v in out if t < first)


@pytest.mark.parametrize(
    "flip",
    [
        "the model is loaded",
        "a load began since",
        "a runner is busy",
        "a runner is unseen",
        "api/ps blocks",
        "api/ps gives no list",
    ],
)
def test_each_piece_of_evidence_on_its_own_keeps_it_from_load_stuck(flip):
    w, wait = deadlock()
    if flip == "the model is loaded":
        w.models = [MODEL, "other:latest"]
        w.runners[PORT + 1] = w.now - 100
    elif flip == "a load began since":
        w.load_begun = wait.since + 5
    elif flip == "a runner is busy":  # the load waits for it to finish, as Ollama's scheduler does by design
        w.mode = "stream"
    elif flip == "a runner is unseen":  # two models loaded, one runner found: the other may be the busy one
        w.models = [MODEL, "second:latest"]
    elif flip == "api/ps blocks":
        w.mode = "loading"
    elif flip == "api/ps gives no list":  # then "not loaded" is not known
        w.ps = lambda: probe.PsResult(probe.BAD, 0.01, detail="GET /api/ps answered HTTP 500 without a model list")
    out = run_waiting(w, wait, DEFAULTS.load_stuck_after + 30)
    assert verdict.LOAD_STUCK not in outcomes(out) and not any(v.restart for _, v in out)
    if flip == "a runner is busy":
        assert out[-1][1].outcome == BUSY and "the load waits for busy runner(s)" in out[-1][1].evidence


def test_without_the_journal_no_runner_loading_stands_in_for_no_load_started():
    w, wait = deadlock(journal_readable=False)
    out = run_waiting(w, wait, DEFAULTS.load_stuck_after + 5)
    assert out[-1][1].outcome == verdict.LOAD_STUCK and "journal is not readable" in out[-1][1].evidence


def test_without_a_load_wait_the_deadlock_is_healthy_as_it_looks():
    """The watchdog has no request of its own and never sends one: #17408 is not its to see."""
    w, _ = deadlock()
    out = run(w, DEFAULTS.load_stuck_after + 30)
    assert outcomes(out) == {HEALTHY} and restarts(out) == []

"""The real inference engine (issue 13): Debian unstable's llama-server as the runner, wedged as users report it.

Where the release packages llama.cpp (``testbed.SUITE_PACKAGES``: Debian unstable), the test root carries
the real ``llama-server`` and two GGUF models the bed makes with python3-gguf (tests/standin/make_gguf.py:
``tiny``, 0.5 MB, thousands of tokens a second; ``big``, 100 MB, slow on a CPU).  The stand-in Ollama runs
them in llama-server as Ollama >= 0.30 does (its flags, its port, its slog lines, its needsReload Ping).

- The probe's claims, asked of the real server directly (no unit, no stand-in): tests/e2e/real_runner_driver.py.
- How long /slots is legitimately silent, and how long its counters legitimately stand still, under a long
  prompt: the figures the verdict's ``deep_confirm`` and its CPU rule rest on.
- The stand-in serving the real models: tags, show, ps with their real sizes, generate and chat, the port
  in the journal is the real listener's, owned by the unit's user, in the unit's cgroup.
- Do-no-harm and recovery with the shipped watchdog (bench/harm_bed.py, runner "llama-server"): a saturated
  server, a 3-minute stream, a long prompt in 2048-token batches under load, a model load under load, an
  admin's stop: no restart, no failed request; the runner's main thread frozen (ptrace), the runner
  SIGSTOPped, the runner SIGKILLed, each idle and under load.
"""

from __future__ import annotations

import json
import re

import pytest

from bench import harm_bed as hc
from ollamactl import verdict
from tests import testbed
from tests.e2e import harm_cases as ci
from tests.e2e.conftest import REPO, TIMINGS, Bed

REAL_SUITES = [s for s in testbed.SUITES if testbed.has_real_runner(s)]
DRIVER = "/root/real_runner_driver.py"
GGUF = testbed.GGUF_DIR


@pytest.fixture(scope="module", params=REAL_SUITES)
def real(request, deb) -> Bed:
    """A container of a release that packages llama.cpp, with the .deb and the claims driver installed."""
    c = testbed.boot(request.param, deb=deb)
    request.addfinalizer(c.stop)
    c.write_file(DRIVER, (REPO / "tests/e2e/real_runner_driver.py").read_text(), mode=0o755)
    return Bed(c)


@pytest.fixture
def harm(real: Bed):
    h = hc.real_bed(real.c, report=TIMINGS.append)
    h.install()
    try:
        yield h
    finally:
        h.restore()


def _driver(real: Bed, *args: str, timeout: float = 300) -> dict:
    r = real.c.run(["python3", DRIVER, *args], timeout=timeout)
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-3000:]
    return json.loads(r.stdout.strip().splitlines()[-1])


# -- the probe's claims, on the real server ------------------------------------------------------------------


def test_the_probes_claims_hold_on_the_real_llama_server(real: Bed):
    out = _driver(real, "claims", "--model", f"{GGUF}/big.gguf")
    seen = out["load"]["seen"]
    assert "503" in seen and seen[-1] == "200", out["load"]  # /health: 503 "Loading model" during the load, then 200
    assert out["idle"]["slots"] == out["idle"]["health"] == "ok" and out["idle"]["busy"] == [], out["idle"]
    a, b = out["busy"]
    assert a["busy"] == b["busy"] == [0] and b["n_decoded"][0] > a["n_decoded"][0], out["busy"]  # rising
    # the main thread frozen idle: /health answers, /slots does not (the main loop answers it)
    assert out["idle_frozen"]["health"] == "ok" and out["idle_frozen"]["slots"] == "timeout", out["idle_frozen"]
    # frozen under a stream: no token; /health answers; /slots, which this build answers from another thread
    # while the main one is inside a decode, either answers with the counters standing still or does not answer
    assert out["freeze_helper"].startswith("frozen") and out["frozen_thread_state"] == "t", out
    assert out["frozen_stream_progress"] == 0, out
    frozen = out["frozen"]
    assert frozen["health"] == "ok", frozen
    assert frozen["slots"] == "timeout" or (
        frozen["busy"] == [0] and out["frozen_again"]["n_decoded"] == frozen["n_decoded"]
    ), out
    assert out["released_stream_progress"] > 0, out  # the helper gone, the thread resumes where it was
    assert out["sigstop"]["slots"] == out["sigstop"]["health"] == "timeout", out["sigstop"]
    assert out["sigcont"]["slots"] == "ok", out["sigcont"]
    assert out["killed"]["slots"] == out["killed"]["health"] == "refused", out["killed"]
    TIMINGS.append(
        f"{real.suite:9} real llama-server: /health {' -> '.join(seen)} (ready in {out['load']['ready_s']} s);"
        f" n_decoded {a['n_decoded'][0]} -> {b['n_decoded'][0]} in 0.5 s; main thread frozen: idle /slots"
        f" {out['idle_frozen']['slots']}, busy /slots {frozen['slots']} (n_decoded {frozen['n_decoded'][:1]} then"
        f" {out['frozen_again']['n_decoded'][:1]}), 0 tokens; SIGSTOP: both timeout; SIGKILL: both refused"
    )


@pytest.mark.parametrize("batch", [512, 2048])
def test_the_longest_legitimate_silence_under_a_long_prompt(real: Bed, batch: int):
    """A 6000-token prompt on the big model, one more stream beside it: /slots answers throughout; its counters
    stand still for one batch at a time while the unit computes (the verdict's CPU rule covers that)."""
    out = _driver(real, "silence", "--model", f"{GGUF}/big.gguf", "--prompt-tokens", "6000", "--batch", str(batch))
    assert not out["error"] and out["samples"] > 10, out
    assert out["longest_slots_seconds"] < 1.0, out  # within the probes' own timeout (1 s), so never "silent"
    assert out["longest_flat_seconds"] > 0.5, out  # the measurement saw batches
    assert out["cpus_while_flat"] >= verdict.CPU_IDLE, out  # so the verdict calls those stretches busy
    TIMINGS.append(
        f"{real.suite:9} real llama-server, 6000-token prompt in batches of {batch} on big (with a stream beside):"
        f" prompt {out['prompt_seconds']} s, /slots slowest answer {out['longest_slots_seconds']} s, counters flat"
        f" for at most {out['longest_flat_seconds']} s, unit CPUs while flat {out['cpus_while_flat']}"
    )


# -- the stand-in serves the real models -------------------------------------------------------------------------


def test_the_stand_in_runs_the_bed_models_in_llama_server(real: Bed):
    c = real.c
    code = r"""
import json, urllib.request
def call(path, body=None):
    data = None if body is None else json.dumps(body).encode()
    with urllib.request.urlopen(urllib.request.Request("http://127.0.0.1:11434" + path, data=data), timeout=120) as r:
        return r.read().decode()
opts = {"num_predict": 30}
out = {"tags": json.loads(call("/api/tags")), "show": json.loads(call("/api/show", {"model": "tiny"}))}
out["gen"] = json.loads(call("/api/generate", {"model": "tiny", "prompt": "the", "stream": False, "options": opts}))
msgs = [{"role": "user", "content": "hi"}]
out["chat"] = [json.loads(ln) for ln in call("/api/chat", {"model": "tiny", "messages": msgs}).splitlines()]
out["ps"] = json.loads(call("/api/ps"))
print(json.dumps(out))
"""
    r = c.run(["python3", "-c", code], timeout=180)
    assert r.returncode == 0, r.stderr[-3000:]
    out = json.loads(r.stdout)
    sizes = {m["name"]: m["size"] for m in out["tags"]["models"]}
    on_disk = {
        n: int(c.run(["stat", "-c", "%s", f"{GGUF}/{n.split(':')[0]}.gguf"], check=True).stdout)
        for n in ("tiny:latest", "big:latest")
    }
    assert {k: sizes.get(k) for k in on_disk} == on_disk, sizes  # the real files' sizes
    assert out["show"]["details"]["quantization_level"] == "F32", out["show"]
    assert out["gen"]["done"] and out["gen"]["eval_count"] == 30 and out["gen"]["done_reason"] == "length", out["gen"]
    assert out["chat"][-1]["done"] and len(out["chat"]) >= 2, out["chat"]
    [ps] = out["ps"]["models"]
    assert ps["name"] == "tiny:latest" and ps["size"] == on_disk["tiny:latest"], ps
    # the runner Ollama logged is the real llama-server, listening where the line says, as the unit's user
    log = c.run(["journalctl", "-u", "ollama.service", "-o", "cat", "--no-pager"], check=True).stdout
    cmd = re.findall(r'msg="starting llama-server" cmd="([^"]*)"', log)[-1]
    assert cmd.startswith("/usr/bin/llama-server --model " + f"{GGUF}/tiny.gguf"), cmd
    port = int(re.search(r"--port (\d+)", cmd).group(1))
    uid = c.run(["id", "-u", "ollama"], check=True).stdout.strip()
    tcp = c.run(["cat", "/proc/net/tcp"], check=True).stdout.splitlines()[1:]
    listeners = {(int(f[1].split(":")[1], 16), f[7]) for f in (ln.split() for ln in tcp) if f[3] == "0A"}
    assert (port, uid) in listeners, (port, uid, listeners)
    pid = c.sh(f"pgrep -f -- '--port {port} '", check=True).stdout.split()[0]
    cgroup = c.run(["cat", f"/proc/{pid}/cgroup"], check=True).stdout
    assert cgroup.strip().endswith("/ollama.service"), cgroup
    code, probe = real.json("probe", "--deep")
    assert code == 0 and f"runner :{port} /slots answered" in probe["evidence"], probe


# -- do no harm, with the shipped watchdog --------------------------------------------------------------------------


def _no_restart(h: hc.HarmBed, r: hc.CaseResult) -> str:
    return f"{r.name}: {r.restarts}; states {r.hold['states']}; loads {r.loads()}\n" + h.watchdog_log(0, 40)


def _deep_alarms(r: hc.Restarts) -> dict[str, int]:
    return {k: v for k, v in r.verdicts.items() if k == "deep-wedged"}


def test_real_saturated_load_is_not_restarted(harm: hc.HarmBed):
    r = hc.saturated_load(harm, ci.SATURATED_SECONDS)
    (load,) = r.loads()
    assert r.restarts.count == 0 and not _deep_alarms(r.restarts), _no_restart(harm, r)
    assert load["requests"] > 0 and load["failed"] == 0, load
    harm.report(
        f"saturated load ({2 * hc.SATURATED_PARALLEL} clients, NUM_PARALLEL={hc.SATURATED_PARALLEL}, tiny,"
        f" {ci.SATURATED_SECONDS:g} s)",
        f"restarts {r.restarts.count}, requests {load['requests']} ok {load['ok']} failed {load['failed']},"
        f" p50 {load['p50']} s max {load['max']} s",
    )


def test_real_three_minute_stream_is_not_restarted(harm: hc.HarmBed):
    r = hc.real_stream(harm, ci.STREAM_SECONDS)
    (load,) = r.loads()
    assert r.restarts.count == 0 and not _deep_alarms(r.restarts), _no_restart(harm, r)
    assert (load["requests"], load["ok"], load["failed"]) == (1, 1, 0), load
    assert load["max"] >= ci.STREAM_SECONDS * 0.5, load  # it held the slot for minutes (speed varies with load)
    harm.report(
        f"one stream on big, {r.extra['tokens']} tokens at {r.extra['rate']} tokens/s",
        f"restarts {r.restarts.count}, the stream completed in {load['max']} s",
    )


def test_real_long_prompt_under_load_is_not_restarted(harm: hc.HarmBed):
    r = hc.real_long_prompt(harm)
    clients, long = r.loads()
    assert r.restarts.count == 0 and not _deep_alarms(r.restarts), _no_restart(harm, r)
    assert clients["failed"] == 0 and clients["requests"] > 0, clients
    assert (long["requests"], long["ok"]) == (1, 1), long
    harm.report(
        f"a {hc.REAL_PROMPT_CHARS}-token prompt in batches of {hc.REAL_BATCH} on big, 2 clients beside it",
        f"restarts {r.restarts.count}, the prompt answered in {long['max']} s, clients ok {clients['ok']}"
        f" failed {clients['failed']}; watchdog verdicts: {dict(sorted(r.restarts.verdicts.items()))}",
    )


def test_real_model_load_under_load_is_not_restarted(harm: hc.HarmBed):
    r = hc.real_model_load(harm)
    clients, loader = r.loads()
    assert r.restarts.count == 0 and not _deep_alarms(r.restarts), _no_restart(harm, r)
    assert clients["failed"] == 0 and (loader["requests"], loader["ok"]) == (1, 1), r.loads()
    harm.report(
        "big loaded while 2 clients use tiny",
        f"restarts {r.restarts.count}, big answered in {loader['max']} s, clients ok {clients['ok']} failed 0",
    )


def test_real_admin_stop_is_respected(harm: hc.HarmBed):
    r = hc.admin_stop(harm, ci.STOP_SECONDS)
    journal = harm.c.run(["journalctl", "-u", "ollama.service", "--no-pager", "-n", "40"]).stdout
    assert set(r.hold["states"]) == {"inactive/dead"} and r.restarts.count == 0, f"{r.restarts} {r.hold}\n{journal}"
    assert r.state_after == "inactive" and r.probe.get("outcome") == "stopped", r.probe
    harm.report(f"systemctl stop with the watchdog running ({ci.STOP_SECONDS:g} s)", f"stayed {r.state_after}")


@pytest.mark.parametrize("loaded", [False, True], ids=["idle", "loaded"])
@pytest.mark.parametrize("kind", list(hc.RUNNER_WEDGES))
def test_real_runner_wedge(harm: hc.HarmBed, kind: str, loaded: bool):
    w = hc.wedge(harm, kind, loaded)
    out, load = w.out, w.out["load"]
    detail = f"{w.restarts}; {out}\n{harm.watchdog_log(0, 40)}"
    if kind in hc.SELF_HEALING:
        # the runner is gone: Ollama reloads it on the next request; a restart would add nothing but harm
        assert not out["restarted"] and w.restarts.count == 0, detail
        assert out["api_answers"] and out["generate_loaded_model"]["ok"], detail
        log = harm.c.run(["journalctl", "-u", "ollama.service", "-o", "cat", "--no-pager", "--since=-3min"]).stdout
        assert "kill-runner: SIGKILL to runner" in log, log[-3000:]  # the fault really happened
        assert "llama-server process no longer running" in log, log[-3000:]  # and Ollama's Ping found it
        ports = re.findall(r'msg="starting llama-server" cmd="[^"]* --port (\d+) ', log)
        assert len(ports) >= 2 and ports[-1] != ports[-2], ports  # reloaded on a new port
        if load:
            assert load["killed"] >= 1 and load["during_ok"] + load["after_ok"] > 0, load
        harm.report(
            f"wedge {w.label}",
            f"no restart (wanted): the next request reloaded the runner in {out['generate_loaded_model']['seconds']} s"
            + (f"; requests killed {load['killed']}, ok after {load['during_ok']}" if load else ""),
        )
        return
    assert out["restarted"] and out["recover"] is not None and out["generate_after"]["ok"], detail
    assert w.restarts.count == 1, detail
    if load:
        assert load["before_failed"] == 0 and load["before_ok"] > 0 and load["after_ok"] > 0, load
    harm.report(
        f"wedge {w.label}",
        f"detect {out['detect']:.1f}s recover {out['recover']:.1f}s"
        + (f" requests killed {load['killed']}" if load else "")
        + (f"; evidence: {w.evidence}" if w.evidence else ""),
    )

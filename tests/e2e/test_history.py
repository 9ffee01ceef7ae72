"""``ollamactl history`` end to end, as root, as a member and as a non-member.

A night in miniature on each release: the packaged watchdog restarts a wedged
Ollama, alice (group ollamactl) restarts it by hand, bob (no group) tries to.
Then root reads who, why, the verdict and its evidence, the time to recover
and the replaced invocation from the journal, and the journalctl command it
prints shows what that Ollama logged before it died; alice, who may not read
the journal, gets the shared history marked unverified and the note of what an
admin would see; bob gets a refusal with exit 3 and the way in.
"""

from __future__ import annotations

import shlex
import time

from tests.e2e.conftest import CONFIG_FILE, UNIT, Bed
from tests.e2e.test_recovery import report
from tests.e2e.test_watch import WATCHDOG, settle, watched  # noqa: F401  (watched: a fixture)

PERMISSION = 3
BACKOFF_S = 10.0  # the shipped restart_backoff
HISTORY_BOUND_S = 5.0  # one history run (two journalctl runs and the table); stated, on a busy 2-core host


def uid(bed: Bed, user: str) -> int:
    return int(bed.c.run(["id", "-u", user], check=True).stdout)


def name(entry: dict) -> str:
    """The user a history entry names (without the service or the login after it)."""
    return entry["who"].split(" (")[0]


def history(bed: Bed, *args: str, user: str = "root") -> tuple[int, dict]:
    return bed.json("history", *args, user=user)


def test_history_as_root_as_a_member_and_as_a_non_member(healthy: Bed, watched):  # noqa: F811
    t0 = time.time()  # the containers share the host's clock
    watched()  # the packaged watchdog, shipped defaults
    settle(healthy, 10)
    wedged = healthy.prop("InvocationID")
    healthy.c.sh(f"kill -USR2 $(systemctl show -p MainPID --value {UNIT})", check=True)  # a whole-server wedge
    end = time.monotonic() + 60
    while True:  # the watchdog's restart, then its word that Ollama is healthy again
        rc, h = history(healthy, "--since", str(t0))
        assert rc == 0, h
        theirs = [e for e in h["entries"] if e["sender_unit"] == WATCHDOG]
        if theirs and theirs[-1]["recovery_seconds"] is not None:
            break
        assert time.monotonic() < end, h
        time.sleep(1)
    # alice is bound by the shared budget, which now holds the watchdog's restart: at least restart_backoff
    # (10 s) after it, or she is refused (exit 8), which history would show too
    time.sleep(max(0.0, theirs[-1]["at"] + BACKOFF_S + 1 - time.time()))
    r = healthy.ollamactl("restart", "--reason", "alice saw it hang", user="alice")
    assert r.returncode == 0, r.stderr
    r = healthy.ollamactl("restart", "--reason", "bob too", user="bob")
    assert r.returncode == PERMISSION, r.stderr

    # root: every decision, from the journal, who from journald's trusted fields
    t = time.monotonic()
    rc, h = history(healthy, "--since", str(t0))
    took = time.monotonic() - t
    assert rc == 0 and h["source"] == "journal" and h["note"] == "" and not h["truncated"], h
    watchdog, alice, bob = h["entries"]
    assert watchdog["who"] == "ollamactl (ollamactl-watchdog.service)" and watchdog["verified"], watchdog
    assert watchdog["uid"] == uid(healthy, "ollamactl") and watchdog["outcome"] == "queued"
    assert watchdog["verdict"] == "wedged" and watchdog["evidence"].startswith("GET /api/version"), watchdog
    assert watchdog["reason"] == f"watch: wedged: {watchdog['evidence']}"
    assert 0 < watchdog["recovery_seconds"] < 30 and "healthy probe" in watchdog["recovery_note"]
    assert watchdog["old_invocation_id"] == wedged
    if healthy.suite == "bookworm":  # systemd 252: no --invocation; the matches it stands for
        assert watchdog["log_command"].startswith(f"journalctl _SYSTEMD_INVOCATION_ID={wedged} + "), watchdog
    else:
        assert watchdog["log_command"] == f"journalctl --invocation={wedged}", watchdog
    before = healthy.c.run([*shlex.split(watchdog["log_command"]), "--no-pager"], check=True).stdout
    assert "silent: request read, never answering" in before, before[-2000:]  # the wedged Ollama's own words
    # (the testbed's commands enter the container from outside its cgroups: what journald makes of their
    # _SYSTEMD_UNIT is the testbed's business, so only the user is compared)
    assert (name(alice), alice["uid"], alice["outcome"], alice["reason"]) == (
        "alice", uid(healthy, "alice"), "restarted", "alice saw it hang"
    )  # fmt: skip
    assert alice["verified"] and alice["recovery_seconds"] > 0 and alice["log_command"], alice
    assert alice["old_invocation_id"] not in (None, wedged)  # the process the watchdog started
    assert (name(bob), bob["outcome"], bob["recovery_note"], bob["log_command"]) == (
        "bob", "permission-denied", "nothing was restarted", None
    )  # fmt: skip
    text = healthy.ollamactl("history", "--since", str(t0), user="root")
    assert text.returncode == 0 and text.stdout.split("\n")[0].split() == [
        "TIME", "UNIT", "WHO", "OUTCOME", "RECOVERED", "WHY"
    ], text.stdout  # fmt: skip
    assert f"  what Ollama logged before: {watchdog['log_command']}" in text.stdout.splitlines()

    # alice (member, no journal): the shared history, marked unverified, and what an admin would see
    rc, m = history(healthy, "--since", str(t0), user="alice")
    assert rc == 0 and m["source"] == "shared-history", m
    assert [(e["who"], e["outcome"], e["reason"], e["verified"]) for e in m["entries"]] == [
        ("ollamactl (shared history, unverified)", "restarted", watchdog["reason"], False),
        ("alice (shared history, unverified)", "restarted", "alice saw it hang", False),
    ], m
    assert "not readable by this user" in m["note"] and "sudo ollamactl history" in m["note"], m
    text = healthy.ollamactl("history", user="alice").stdout
    assert "(shared history, unverified)" in text and "\nnote: " in text, text

    # bob (neither): a refusal, one line, exit 3, with the way in
    r = healthy.ollamactl("history", user="bob")
    assert r.returncode == PERMISSION and r.stdout == "", r
    assert r.stderr.startswith("ollamactl: cannot read the restart history: ") and r.stderr.count("\n") == 1, r.stderr
    assert "sudo usermod -aG ollamactl bob" in r.stderr and "sudo ollamactl history" in r.stderr
    rc, err = history(healthy, user="bob")
    assert (rc, err["error"], err["exit_code"]) == (PERMISSION, "permission-denied", PERMISSION), err

    # --unit and instance names, as elsewhere
    rc, other = history(healthy, "--unit", "other.service", "--since", str(t0))
    assert rc == 0 and other["entries"] == [] and other["unit"] == "other.service", other
    healthy.c.write_file(CONFIG_FILE, f'[instances.main]\nunit = "{UNIT}"\n')  # the fixture puts the config back
    rc, named = history(healthy, "--unit", "main", "--since", str(t0))
    assert rc == 0 and named["unit"] == UNIT and [e["instance"] for e in named["entries"]] == ["main"] * 3, named
    assert named["entries"] == [{**e, "instance": "main"} for e in h["entries"]]  # the same decisions
    assert took < HISTORY_BOUND_S, took
    report(healthy, "history as root", f"{len(h['entries'])} decisions in {took:.2f}s",
           f"watchdog recovery {watchdog['recovery_seconds']:.1f}s")  # fmt: skip

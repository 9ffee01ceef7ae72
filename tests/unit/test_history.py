"""ollamactl history: restart decisions from the journal (trusted who) or the shared history (unverified).

journalctl is injected (FakeJournalctl answers as journalctl would, and is
told what it was asked); the shared history is a real runtime directory, read
as root, as a member and as a non-member in forked children.
"""

from __future__ import annotations

import asyncio
import json
import os
import pwd
import time

import pytest

from ollamactl import cli, journal
from ollamactl.config import load_config
from ollamactl.errors import PermissionDenied
from ollamactl.history import log_command, read_history
from ollamactl.journal import _Output
from ollamactl.runtime import Restart, RuntimeDir, State
from tests.unit.test_runtime_attacks import group, in_child, make_rundir

OLD = "0123456789abcdef" * 2
NEW = "fedcba9876543210" * 2
BOOT = "b" * 32
WATCHDOG_PID = "4242"
DENIED = (
    "Hint: You are currently not seeing messages from other users and the system.\n"
    "      Users in groups 'adm', 'systemd-journal' can see all messages.\n"
)
NO_FILES = "No journal files were opened due to insufficient permissions.\n"


def record(at: float, **fields: str) -> dict:
    """One journal entry: journald's own fields (a watchdog's by default), then what the sender wrote."""
    base = {
        "__REALTIME_TIMESTAMP": str(int(at * 1e6)),
        "_BOOT_ID": BOOT,
        "_UID": "998",
        "_PID": WATCHDOG_PID,
        "_COMM": "ollamactl",
        "_SYSTEMD_UNIT": "ollamactl-watchdog.service",
        "SYSLOG_IDENTIFIER": "ollamactl",
        "OLLAMACTL_UNIT": "ollama.service",
    }
    base.update(fields)
    return base


def watchdog_restart(at: float = 1000.0, **fields: str) -> dict:
    ours = dict(
        OLLAMACTL_EVENT="restart",
        OLLAMACTL_OUTCOME="queued",
        OLLAMACTL_REASON="watch: deep-wedged: runner 127.0.0.1:40123 /slots silent for 8.0s",
        OLLAMACTL_VERDICT="deep-wedged",
        OLLAMACTL_EVIDENCE="runner 127.0.0.1:40123 /slots silent for 8.0s",
        OLLAMACTL_UID="998",
        OLLAMACTL_OLD_INVOCATION=OLD,
    )
    return record(at, **{**ours, **fields})


def recovered(at: float = 1004.1, seconds: str = "4.1", **fields: str) -> dict:
    return record(
        at, OLLAMACTL_EVENT="recovered", OLLAMACTL_OLD_INVOCATION=OLD, OLLAMACTL_RECOVERY_SECONDS=seconds, **fields
    )


class FakeJournalctl:
    """Answers history's queries from a list of entries as journalctl would; remembers each call."""

    def __init__(self, entries, *, stderr="", returncode=0, version=252):
        self.entries = list(entries)
        self.stderr, self.returncode, self.version = stderr, returncode, version
        self.calls: list[list[str]] = []

    async def __call__(self, args, timeout):
        self.calls.append(list(args))
        if args == ["--version"]:
            return _Output(f"systemd {self.version} ({self.version}.1-1)\n+PAM +AUDIT\n".encode(), "", 0, False)
        if "--output=json" not in args:  # the access check: its hint is the only one (JSON output has none)
            assert args == ["--no-pager", "--lines=0"], args
            return _Output(b"-- No entries --\n", self.stderr, self.returncode, False)
        matches: dict[str, set[str]] = {}
        for a in args:
            if not a.startswith("-") and "=" in a:
                key, value = a.split("=", 1)
                matches.setdefault(key, set()).add(value)  # same field: OR; different fields: AND
        since = next((int(a.split("@")[1]) for a in args if a.startswith("--since=@")), None)
        fields = next(a.split("=", 1)[1].split(",") for a in args if a.startswith("--output-fields="))
        lines = int(next(a for a in args if a.startswith("--lines=")).split("=")[1])
        rows = [
            e
            for e in self.entries
            if all(e.get(k) in v for k, v in matches.items())
            and (since is None or int(e["__REALTIME_TIMESTAMP"]) >= since * 1_000_000)
        ]
        rows = rows[-lines:][::-1] if "--reverse" in args else rows[:lines]
        keep = {"__REALTIME_TIMESTAMP", "__CURSOR", "__MONOTONIC_TIMESTAMP", "_BOOT_ID", *fields}
        out = b"".join(json.dumps({k: v for k, v in e.items() if k in keep}).encode() + b"\n" for e in rows)
        return _Output(out if self.returncode == 0 else b"", "", self.returncode, False)


@pytest.fixture
def cfg(tmp_path):
    """A config with two instances, as [instances.NAME] tables give them."""
    path = tmp_path / "config.toml"
    path.write_text(
        '[instances.gpu0]\nunit = "ollama@11434.service"\n[instances.gpu1]\nunit = "ollama@11435.service"\n'
    )
    return load_config({"runtime_dir": str(tmp_path / "run")}, config_file=path, environ={})


def _known(uid):
    try:
        pwd.getpwuid(uid)
    except KeyError:
        return False
    return True


def history(cfg, fake, **kw):
    return asyncio.run(read_history(cfg, run=fake, **kw))


# -- from the journal --------------------------------------------------------------------------------------


def test_the_watchdogs_restart_says_who_why_how_long_and_which_invocation_it_replaced(cfg):
    fake = FakeJournalctl([watchdog_restart(), recovered()])
    h = history(cfg, fake, every_unit=True)
    assert h.source == "journal" and h.note == "" and not h.truncated
    (e,) = h.entries
    assert (
        e.who.endswith("(ollamactl-watchdog.service)") and e.verified and e.sender_unit == "ollamactl-watchdog.service"
    )
    assert (e.uid, e.pid, e.comm, e.outcome) == (998, 4242, "ollamactl", "queued")
    assert (e.verdict, e.evidence) == ("deep-wedged", "runner 127.0.0.1:40123 /slots silent for 8.0s")
    assert e.recovery_seconds == 4.1 and "healthy probe" in e.recovery_note
    assert e.old_invocation_id == OLD and e.at == 1000.0
    # Debian 12's systemd 252 has no --invocation: the matches it stands for, spelled out
    assert e.log_command == log_command(OLD, 252)
    assert e.log_command == (
        f"journalctl _SYSTEMD_INVOCATION_ID={OLD} + OBJECT_SYSTEMD_INVOCATION_ID={OLD} + INVOCATION_ID={OLD}"
    )
    access, query, version = fake.calls
    assert access == ["--no-pager", "--lines=0"]  # not --quiet: its hint tells a partial view from an empty one
    assert {"SYSLOG_IDENTIFIER=ollamactl", "OLLAMACTL_EVENT=restart", "OLLAMACTL_EVENT=recovered"} <= set(query)
    assert not any(a.startswith("OLLAMACTL_UNIT=") for a in query)  # every unit
    assert version == ["--version"]


def test_on_systemd_257_the_command_is_journalctls_own_invocation_option(cfg):
    h = history(cfg, FakeJournalctl([watchdog_restart()], version=257), every_unit=True)
    assert h.entries[0].log_command == f"journalctl --invocation={OLD}"


def test_a_waited_restart_times_itself_and_decisions_that_restarted_nothing_say_so(cfg):
    alice = record(
        2000.0, _UID="1000", _PID="77", _COMM="ollamactl", _SYSTEMD_UNIT="session-3.scope", _AUDIT_LOGINUID="1000",
        OLLAMACTL_EVENT="restart", OLLAMACTL_OUTCOME="restarted", OLLAMACTL_REASON="model hung",
        OLLAMACTL_OLD_INVOCATION=OLD, OLLAMACTL_NEW_INVOCATION=NEW, OLLAMACTL_JOB_SECONDS="1.5",
        OLLAMACTL_READY_SECONDS="0.25", OLLAMACTL_UID="1000",
    )  # fmt: skip
    skipped = record(2001.0, _UID="0", _PID="78", _SYSTEMD_UNIT="session-4.scope", _AUDIT_LOGINUID="1000",
                     OLLAMACTL_EVENT="restart", OLLAMACTL_OUTCOME="skipped")  # fmt: skip
    over = record(2002.0, _UID="0", _PID="79", OLLAMACTL_EVENT="restart", OLLAMACTL_OUTCOME="budget-exhausted")
    nowait = record(2003.0, _UID="0", _PID="80", OLLAMACTL_EVENT="restart", OLLAMACTL_OUTCOME="queued",
                    OLLAMACTL_OLD_INVOCATION=NEW)  # fmt: skip
    h = history(cfg, FakeJournalctl([alice, skipped, over, nowait]), every_unit=True)
    a, s, b, n = h.entries
    assert a.recovery_seconds == 1.75 and "API answered" in a.recovery_note and a.new_invocation_id == NEW
    assert a.reason == "model hung" and a.verdict is None and a.log_command is not None
    assert [(x.outcome, x.recovery_seconds, x.recovery_note, x.log_command) for x in (s, b)] == [
        ("skipped", None, "nothing was restarted", None),
        ("budget-exhausted", None, "nothing was restarted", None),
    ]
    assert n.recovery_seconds is None and n.recovery_note.startswith("not recorded")  # said, not invented
    assert a.who == pwd.getpwuid(1000).pw_name if _known(1000) else "uid 1000"
    assert s.who == f"root (logged in as {a.who})"  # sudo from alice's login: journald's _AUDIT_LOGINUID


def test_a_forged_record_shows_its_real_sender_and_hostile_text_is_cleaned(cfg):
    bob = pwd.getpwnam("nobody").pw_uid
    forged = watchdog_restart(
        3000.0, _UID=str(bob), _PID="666", _COMM="python3", _SYSTEMD_UNIT="session-9.scope",
        OLLAMACTL_UID="0", OLLAMACTL_REASON="\x1b]0;owned\x07 by root", OLLAMACTL_EVIDENCE="\u202eevil",
    )  # fmt: skip
    forged["OLLAMACTL_OLD_INVOCATION"] = "0123;rm -rf /"  # no ID: no command made of it
    forged["OLLAMACTL_VERDICT"] = ["wedged", "healthy"]  # a field sent twice counts as not sent
    fake_recovery = recovered(3001.0, seconds="0.1", _PID="667")  # another process's word: not linked
    h = history(cfg, FakeJournalctl([forged, fake_recovery]), every_unit=True)
    (e,) = h.entries
    assert e.who == "nobody (claims to be root)" and e.uid == bob and e.claimed_uid == 0
    assert e.reason == "\\x1b]0;owned\\x07 by root" and e.evidence == "\\u202eevil"
    assert e.old_invocation_id is None and e.log_command is None and e.verdict is None
    assert e.recovery_seconds is None


def test_unit_and_instance_names_and_since_work_as_elsewhere(tmp_path, cfg):
    gpu0 = dict(OLLAMACTL_UNIT="ollama@11434.service")
    fake = FakeJournalctl([watchdog_restart(1000.0, **gpu0), watchdog_restart(1000.7, **gpu0)])
    named = load_config({"unit": "gpu0"}, config_file=tmp_path / "config.toml", environ={})
    h = history(named, fake, since=1000.5)
    assert "OLLAMACTL_UNIT=ollama@11434.service" in fake.calls[1] and "--since=@1000" in fake.calls[1]
    (e,) = h.entries  # journalctl's --since is whole seconds: the rest is ours
    assert (e.at, e.instance, e.unit, h.unit, h.since) == (1000.7, "gpu0", "ollama@11434.service", h.unit, 1000.5)
    assert h.unit == "ollama@11434.service"


def test_a_journal_with_more_records_than_read_says_so(cfg, monkeypatch):
    monkeypatch.setattr(journal, "MAX_RECORDS", 3)
    fake = FakeJournalctl([watchdog_restart(1000.0 + i) for i in range(5)])
    h = asyncio.run(read_history(cfg, run=fake, every_unit=True))
    assert h.truncated and "--since" in h.note and [e.at for e in h.entries] == [1002.0, 1003.0, 1004.0]


# -- without the journal: the shared history, as a member; nothing, as a non-member ---------------------


def shared(path, restarts):
    rd = RuntimeDir(path, group().gr_name)
    rd.write_state(State(restarts))
    return load_config({"runtime_dir": str(path), "group": group().gr_name}, config_file=os.devnull, environ={})


def read_as(cfg, stderr, returncode=0):
    h = asyncio.run(read_history(cfg, run=FakeJournalctl([watchdog_restart()], stderr=stderr, returncode=returncode)))
    return h.to_dict()


@pytest.mark.parametrize(("stderr", "rc"), [(DENIED, 0), (NO_FILES, 1)])
def test_a_member_without_the_journal_gets_the_shared_history_marked_unverified_and_what_an_admin_sees(stderr, rc):
    member = (65534, [group().gr_gid])
    with make_rundir() as path:
        cfg = shared(path, [Restart(at=time.time() - 5, unit="ollama.service", uid=0, pid=9, reason="\x1b[2Jhung")])
        status, h = in_child(read_as, cfg, stderr, rc, as_user=member)
    assert status == "ok", h
    assert h["source"] == "shared-history" and len(h["entries"]) == 1
    e = h["entries"][0]
    assert e["who"] == "root (shared history, unverified)" and not e["verified"] and e["uid"] == 0
    assert e["reason"] == "\\x1b[2Jhung" and e["outcome"] == "restarted" and e["recovery_seconds"] is None
    assert "not readable by this user" in h["note"] and "sudo ollamactl history" in h["note"]
    assert all(w in h["note"] for w in ("skipped", "evidence", "time to recover", "journalctl"))


def test_a_non_member_without_the_journal_is_refused_with_exit_3_and_the_way_in():
    stranger = (65534, [65534])
    with make_rundir() as path:
        cfg = shared(path, [Restart(at=time.time(), unit="ollama.service", uid=0, pid=9)])
        status, err = in_child(read_as, cfg, DENIED, as_user=stranger)
    assert status == "raised" and err.startswith("PermissionDenied: cannot read the restart history"), err
    assert "sudo ollamactl history" in err and "usermod -aG" in err
    assert PermissionDenied.exit_code == 3


def test_a_journal_that_cannot_be_run_falls_back_to_the_shared_history_and_says_why(cfg, tmp_path):
    async def missing(args, timeout):
        raise FileNotFoundError(2, "No such file or directory")

    with make_rundir() as path:
        cfg = shared(path, [])
        h = asyncio.run(read_history(cfg, run=missing))
    assert h.source == "shared-history" and h.entries == ()
    assert h.note.startswith("cannot run journalctl: No such file or directory")


# -- the command line --------------------------------------------------------------------------------------


def test_the_text_table_and_json(cfg, monkeypatch, capsys):
    fake = FakeJournalctl([watchdog_restart(), recovered()])
    monkeypatch.setattr(journal, "run_journalctl", fake)
    monkeypatch.setattr(cli, "_config", lambda args, isolate=False: cfg)
    assert cli.main(["history"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0].split() == ["TIME", "UNIT", "WHO", "OUTCOME", "RECOVERED", "WHY"]
    assert "ollama.service" in out[1] and "queued" in out[1] and "4.1s" in out[1]
    assert out[1].endswith("deep-wedged: runner 127.0.0.1:40123 /slots silent for 8.0s")
    assert out[2] == f"  what Ollama logged before: {log_command(OLD, 252)}"
    assert len(out) == 3  # the watchdog's reason says what the verdict says: not twice
    assert cli.main(["history", "--json"]) == 0
    obj = json.loads(capsys.readouterr().out)
    assert obj["source"] == "journal" and obj["entries"][0]["old_invocation_id"] == OLD


def test_text_of_the_shared_history_and_of_nothing():
    text = cli._history_text(
        {
            "source": "shared-history",
            "unit": None,
            "note": "the journal is not readable by this user: ...",
            "entries": [
                dict(
                    at=0.0,
                    unit="ollama.service",
                    instance=None,
                    outcome="restarted",
                    reason="hung",
                    verdict=None,
                    evidence=None,
                    who="alice (shared history, unverified)",
                    recovery_seconds=None,
                    log_command=None,
                )  # fmt: skip
            ],
        }
    )
    lines = text.splitlines()
    assert "alice (shared history, unverified)" in lines[1] and lines[1].endswith("  hung") and " ? " in lines[1]
    assert lines[2].startswith("?: no time to recover was recorded") and lines[3].startswith("note: the journal")
    empty = cli._history_text({"source": "journal", "unit": "ollama.service", "note": "", "entries": []})
    assert empty == "no restart decisions recorded in the journal about ollama.service"


def test_the_man_page_and_completion_have_history_and_each_entrys_fields():
    from ollamactl.models import HistoryEntry, fields_doc
    from tests.unit.test_policy import _gen_files

    gen = _gen_files()
    man = gen.man_page()
    assert '.SS "ollamactl history"' in man and "Each object in entries has these fields (HistoryEntry):" in man
    assert all(f"\\fB{name}\\fR (" in man for name, _, _ in fields_doc(HistoryEntry))
    assert " history " in gen.bash_completion()

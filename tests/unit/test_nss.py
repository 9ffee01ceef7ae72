"""Group membership as polkit sees it (ollamactl/nss.py), against an in-memory NSS.

nss.py is the one place ollamactl asks NSS about groups: restart's denial hint
(systemd.DenialContext), doctor's group check and ``policy show``'s members.
"""

from __future__ import annotations

import grp
import os
import pwd
from types import SimpleNamespace

import pytest

from ollamactl import doctor, nss

GROUPS = {"ollamactl": (990, ["alice"]), "ops": (991, []), "staff": (50, [])}
USERS = {"alice": (1000, 1000), "bob": (1001, 1001), "carol": (1002, 991)}  # carol: ops is her primary group


@pytest.fixture
def fake_nss(monkeypatch):
    def getgrnam(name):
        if name not in GROUPS:
            raise KeyError(name)
        gid, mem = GROUPS[name]
        return SimpleNamespace(gr_name=name, gr_gid=gid, gr_mem=mem)

    def entry(name):
        uid, gid = USERS[name]
        return SimpleNamespace(pw_name=name, pw_uid=uid, pw_gid=gid)

    def getpwnam(name):
        if not isinstance(name, str):
            raise TypeError("getpwnam() argument must be str")  # as the real one
        if name not in USERS:
            raise KeyError(name)
        return entry(name)

    def getpwuid(uid):
        for name, (u, _) in USERS.items():
            if u == uid:
                return entry(name)
        raise KeyError(uid)

    def getgrouplist(user, primary):
        return [primary] + [gid for gid, mem in GROUPS.values() if user in mem]

    monkeypatch.setattr(grp, "getgrnam", getgrnam)
    monkeypatch.setattr(pwd, "getpwnam", getpwnam)
    monkeypatch.setattr(pwd, "getpwuid", getpwuid)
    monkeypatch.setattr(pwd, "getpwall", lambda: [entry(n) for n in USERS])
    monkeypatch.setattr(os, "getgrouplist", getgrouplist)


def test_membership_supplementary_primary_and_not(fake_nss):
    assert nss.membership("alice", "ollamactl") == "member"  # listed in the group
    assert nss.membership("carol", "ops") == "member"  # her primary group
    assert nss.membership("bob", "ollamactl") == "not-member"
    assert nss.in_group("alice", "ollamactl") and not nss.in_group("bob", "ollamactl")


def test_membership_of_unknown_groups_and_users(fake_nss):
    assert nss.membership("alice", "nosuch") == "no-such-group"
    assert nss.membership("mallory", "ollamactl") == "no-such-user"
    assert nss.membership(None, "ollamactl") == "no-such-user"
    assert nss.membership("alice", "ollamactl", uid=4242) == "no-such-user"  # a uid NSS does not know
    assert not nss.in_group(None, "ollamactl") and not nss.in_group("alice", "nosuch")


def test_membership_takes_the_primary_group_of_the_uid_when_given(fake_nss):
    """doctor checks a uid: its passwd entry's primary group counts, as polkit would see it."""
    assert nss.membership("1002", "ops", uid=1002) == "member"
    assert nss.membership("1002", "ops") == "no-such-user"


def test_members_lists_listed_and_primary_members(fake_nss):
    assert nss.members("ops") == ["carol"]
    assert nss.members("ollamactl") == ["alice"]
    assert nss.members("staff") == []
    assert nss.members("nosuch") is None


def test_uid_and_gid_lookups(fake_nss):
    assert nss.uid_of("bob") == 1001 and nss.uid_of("mallory") is None
    assert nss.group_id("ops") == 991 and nss.group_id("nosuch") is None


def test_doctors_group_check_says_each_case(fake_nss):
    assert doctor._group_check("alice", 1000, "ollamactl").detail == "alice is in group ollamactl (NSS)"
    bob = doctor._group_check("bob", 1001, "ollamactl")
    assert bob.ok is False and bob.fix == "sudo usermod -aG ollamactl bob"
    assert bob.detail == "bob is not in group ollamactl (NSS); a new member needs no re-login"
    missing = doctor._group_check("alice", 1000, "nosuch")
    assert missing.ok is False and missing.detail == "group nosuch does not exist"
    root = doctor._group_check("root", 0, "ops")
    assert root.ok is True and root.detail == "you are root, which needs no group (group ops exists)"
    ghost = doctor._group_check("4242", 4242, "ops")
    assert ghost.ok is False and ghost.detail == "uid 4242 has no passwd entry, so polkit cannot see its groups"


def test_policy_show_lists_members_through_nss(fake_nss, monkeypatch, capsys, tmp_path):
    import json

    from ollamactl import policy
    from ollamactl.cli import main

    (tmp_path / "50-x.rules").write_text(policy.render(policy.make_grant("ops")))
    (tmp_path / "51-y.rules").write_text(policy.render(policy.make_grant("nosuch")))
    real_scan = policy.scan
    monkeypatch.setattr(policy, "scan", lambda dirs=None: real_scan([tmp_path]))
    assert main(["policy", "show", "--json"]) == 0
    rules = json.loads(capsys.readouterr().out)["rules"]
    assert [(r["group"], r["group_members"]) for r in rules] == [("ops", ["carol"]), ("nosuch", None)]

"""Users and groups as polkit sees them: looked up through NSS, not the process's groups.

polkit's ``subject.isInGroup()`` asks NSS for the user's groups, so a user
added to a group counts at once, without logging in again; we do the same.
Every group look-up of ollamactl (restart's denial hints, doctor, ``policy
show``) goes through here.
"""

from __future__ import annotations

import grp
import os
import pwd
from typing import Literal

#: What ``membership`` found.
Membership = Literal["member", "not-member", "no-such-group", "no-such-user"]


def current_user() -> str | None:
    """The calling user's name, or None if NSS does not know the uid."""
    try:
        return pwd.getpwuid(os.getuid()).pw_name
    except KeyError:
        return None


def user_name(uid: int) -> str | None:
    """The name NSS gives ``uid``, or None if it knows none."""
    try:
        return pwd.getpwuid(uid).pw_name
    except (KeyError, OverflowError):
        return None


def uid_of(user: str) -> int | None:
    """``user``'s uid, or None if NSS has no such user."""
    try:
        return pwd.getpwnam(user).pw_uid
    except KeyError:
        return None


def group_id(group: str) -> int | None:
    """``group``'s gid, or None if NSS has no such group."""
    try:
        return grp.getgrnam(group).gr_gid
    except KeyError:
        return None


def membership(user: str | None, group: str, *, uid: int | None = None) -> Membership:
    """Is ``user`` in ``group`` (primary or supplementary), as polkit would see it?

    The primary group comes from the passwd entry of ``uid`` when given, else
    of ``user``.  "no-such-user": that passwd entry does not exist (or user is None).
    """
    gid = group_id(group)
    if gid is None:
        return "no-such-group"
    if user is None:
        return "no-such-user"
    try:
        primary = (pwd.getpwnam(user) if uid is None else pwd.getpwuid(uid)).pw_gid
    except KeyError:
        return "no-such-user"
    return "member" if gid in os.getgrouplist(user, primary) else "not-member"


def in_group(user: str | None, group: str) -> bool:
    """Is ``user`` a member of ``group`` (primary or supplementary) according to NSS?"""
    return membership(user, group) == "member"


def members(group: str) -> list[str] | None:
    """Every user in ``group``: listed in it, or with it as primary group; sorted.  None if no such group."""
    try:
        g = grp.getgrnam(group)
    except KeyError:
        return None
    primary = [p.pw_name for p in pwd.getpwall() if p.pw_gid == g.gr_gid]
    return sorted(set(g.gr_mem) | set(primary))

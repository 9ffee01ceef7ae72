"""Users and groups as polkit sees them: looked up through NSS, not the process's groups.

polkit's ``subject.isInGroup()`` asks NSS for the user's groups, so a user
added to a group counts at once, without logging in again; we do the same.
"""

from __future__ import annotations

import grp
import os
import pwd


def current_user() -> str | None:
    """The calling user's name, or None if NSS does not know the uid."""
    try:
        return pwd.getpwuid(os.getuid()).pw_name
    except KeyError:
        return None


def in_group(user: str | None, group: str) -> bool:
    """Is ``user`` a member of ``group`` (primary or supplementary) according to NSS?"""
    if user is None:
        return False
    try:
        gid = grp.getgrnam(group).gr_gid
        primary = pwd.getpwnam(user).pw_gid
    except KeyError:
        return False
    return gid in os.getgrouplist(user, primary)

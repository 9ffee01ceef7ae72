"""Name grammars: systemd unit names, group names and grantable verbs, checked before use.

Unit names mirror ``unit_name_is_valid()`` in systemd's src/basic/unit-name.c so
a typo is reported by us, naming the field, instead of as a D-Bus InvalidArgs.
Both grammars are matched against the whole string (``re.fullmatch``, or a
character-set test), so a trailing newline can never slip through into a
polkit rule.
"""

from __future__ import annotations

import re
import string

UNIT_TYPES = frozenset("service socket device mount automount swap target path timer slice scope".split())
_VALID_CHARS = frozenset(string.ascii_letters + string.digits + ":-_.\\@")
UNIT_NAME_MAX = 255  # systemd's UNIT_NAME_MAX (256) counts the NUL
#: Group names as useradd/groupadd accept them (and as we write them into polkit rules).
#: Use with ``fullmatch``: ``re.match`` with ``$`` would accept a trailing newline.
GROUP_NAME_RE = re.compile(r"[a-z_][a-z0-9_-]{0,31}")
GROUP_NAME_RULES = "lower-case letters, digits, '_' and '-', starting with a letter or '_', at most 32 characters"
#: The verbs (polkit's "verb" detail from systemd) a polkit rule of ours may grant; stop, kill, reload,
#: set-property and the rest are never offered.  Here, not in policy.py, so that the CLI's argument
#: parser can offer them without importing policy.py.
GRANTABLE_VERBS = ("restart", "try-restart", "start", "reload-or-restart")


def check_group_name(name: object) -> str | None:
    """Return why ``name`` is not a group name we accept, or None if it is."""
    if not isinstance(name, str) or GROUP_NAME_RE.fullmatch(name) is None:
        return f"is not a valid group name ({GROUP_NAME_RULES})"
    return None


def check_unit_name(name: str) -> str | None:
    """Return why ``name`` is not a startable unit name, or None if it is."""
    if not name:
        return "must not be empty"
    if len(name) > UNIT_NAME_MAX:
        return f"must be at most {UNIT_NAME_MAX} characters"
    bad = sorted({c for c in name if c not in _VALID_CHARS})
    if bad:
        shown = "".join(bad)
        return f"has characters systemd does not allow in unit names: {shown!r}"
    stem, dot, suffix = name.rpartition(".")
    if not dot or not stem:
        return "must end in a unit type such as .service"
    if suffix not in UNIT_TYPES:
        return f"unknown unit type .{suffix} (one of: {', '.join(sorted(UNIT_TYPES))})"
    prefix, at, instance = stem.partition("@")
    if at and not prefix:
        return "must not start with '@'"
    if at and not instance:
        return "is a template (name@.type); give an instance, e.g. name@foo.type"
    return None


def mangle_unit_name(name: str) -> str:
    """Append .service when no unit type is given, as ``systemctl`` does."""
    _, dot, suffix = name.rpartition(".")
    if name and not (dot and suffix in UNIT_TYPES):
        return name + ".service"
    return name


def unit_object_path(name: str) -> str:
    """The unit's D-Bus object path (systemd's bus_label_escape)."""
    out = []
    for i, ch in enumerate(name):
        if ch.isascii() and (ch.isalpha() or (i > 0 and ch.isdigit())):
            out.append(ch)
        else:
            out.append(f"_{ord(ch):02x}")
    return "/org/freedesktop/systemd1/unit/" + ("".join(out) or "_")

"""Name grammars: systemd unit names, group names, grantable verbs and ssh host specs, checked before use.

Unit names mirror ``unit_name_is_valid()`` in systemd's src/basic/unit-name.c so
a typo is reported by us, naming the field, instead of as a D-Bus InvalidArgs.
Every grammar is matched against the whole string (``re.fullmatch``, or a
character-set test), so a trailing newline can never slip through into a
polkit rule or an ssh command line.
"""

from __future__ import annotations

import re
import string

from ollamactl.errors import UsageError
from ollamactl.text import clean

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
#: The instance names a template grant (``--unit 'ollama@.service'``) covers: 1 to 64 ASCII letters,
#: digits, '_', ':' and '-', the first a letter, digit or '_'.  Stricter than systemd on purpose:
#: no '.', so neither %i nor %I (where systemd unescapes '-' to '/') can ever spell '..'; no '\',
#: so no \xNN escapes (what %I shows is what was typed, bar '-'); no '@', so "x@y" is not an
#: instance.  Plain character classes and a bounded quantifier only: the same text means the same in
#: ECMAScript 5 (polkitd's duktape or mozjs, as ``/^...$/``) and Python's ``re.fullmatch``.
INSTANCE_PATTERN = "[A-Za-z0-9_][A-Za-z0-9_:-]{0,63}"
INSTANCE_RE = re.compile(INSTANCE_PATTERN)
INSTANCE_RULES = "1 to 64 of A-Z a-z 0-9 _ : - (not starting with ':' or '-'; no '.', '\\' or '@')"


def check_group_name(name: object) -> str | None:
    """Return why ``name`` is not a group name we accept, or None if it is."""
    if not isinstance(name, str) or GROUP_NAME_RE.fullmatch(name) is None:
        return f"is not a valid group name ({GROUP_NAME_RULES})"
    return None


def check_unit_name(name: str, *, template_ok: bool = False) -> str | None:
    """Return why ``name`` is not a startable unit name, or None if it is.

    With ``template_ok``, a template (``name@.type``) is accepted too (a grant may name one).
    """
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
    if at and not instance and not template_ok:
        return "is a template (name@.type); give an instance, e.g. name@foo.type"
    return None


def is_template(name: str) -> bool:
    """Is ``name`` a template, ``prefix@.type`` (as systemd's UNIT_NAME_TEMPLATE)?"""
    stem, dot, _ = name.rpartition(".")
    prefix, at, instance = stem.partition("@")
    return bool(dot and prefix and at and not instance)


def template_instance(template: str, unit: str) -> str | None:
    """The instance if ``unit`` is ``prefix@INSTANCE.type`` of ``template`` with INSTANCE in our grammar, else None.

    The polkit rule of a template grant (policy.render) does exactly this in JavaScript:
    same prefix, same suffix, and INSTANCE_PATTERN on what lies between.
    """
    if not is_template(template) or not isinstance(unit, str):
        return None
    head, _, suffix = template.partition("@")  # head: "ollama", suffix: ".service"
    prefix = head + "@"
    if len(unit) <= len(prefix) + len(suffix) or not unit.startswith(prefix) or not unit.endswith(suffix):
        return None
    instance = unit[len(prefix) : len(unit) - len(suffix)]
    return instance if INSTANCE_RE.fullmatch(instance) else None


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


# --------------------------------------------------------------------------- ssh host specs

#: What a ``--host`` value (or a word of the config's ``hosts``) may be.
HOST_SPEC_FORM = "[USER@]HOST[:PORT], IPv6 as [ADDR] or [ADDR]:PORT"
HOST_SPEC_MAX = 300
# Patterns for re.fullmatch, compiled on first use (re caches them): not on every CLI run.
_HOST_USER = r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,31}"
_HOST_LABEL = r"[A-Za-z0-9_](?:[A-Za-z0-9_-]{0,61}[A-Za-z0-9_])?"
_HOST_NAME = rf"{_HOST_LABEL}(?:\.{_HOST_LABEL})*\.?"
_HOST_PORT = r"[1-9][0-9]{0,4}"
_HOST_SCOPE = r"[A-Za-z0-9_.-]{1,32}"


def _bad_host(spec: str, why: str) -> UsageError:
    return UsageError(f"bad --host {clean(spec, 80)!r}: {why}; expected {HOST_SPEC_FORM}", host=clean(spec, 80))


def _ipv6(text: str) -> str | None:
    """``text`` if it is an IPv6 address (optionally with a %scope), else None."""
    import ipaddress  # only IPv6 specs need it

    addr, _, scope = text.partition("%")
    if "%" in text and not re.fullmatch(_HOST_SCOPE, scope):
        return None
    try:
        ipaddress.IPv6Address(addr)
    except ValueError:
        return None
    return text


def split_host(spec: str) -> tuple[str | None, str, int | None]:
    """(user, host, port) of one ``--host`` value; UsageError (exit 2) if it is not [USER@]HOST[:PORT].

    The spec goes into ssh's argv as its destination, so the grammar is strict: no spec
    can be read as an ssh option (a leading ``-``) or carry shell syntax, whitespace or
    controls.  HOST is a DNS name or ssh_config alias (letters, digits, ``-``, ``_``,
    dots; no label starts or ends with ``-``), an IPv4 address, or an IPv6 address in
    brackets (bare when no port follows); the host returned has no brackets.  USER is a
    login name (letters, digits, ``_.-``, not starting with ``-``).  PORT is 1-65535.
    """
    if not isinstance(spec, str) or not spec:
        raise _bad_host(str(spec), "empty")
    if len(spec) > HOST_SPEC_MAX:
        raise _bad_host(spec, "too long")
    if spec.startswith("-"):
        raise _bad_host(spec, "starts with '-' (ssh would read it as an option)")
    if not spec.isascii() or not spec.isprintable() or any(c.isspace() for c in spec):
        raise _bad_host(spec, "whitespace or control characters")
    user: str | None = None
    rest = spec
    if "@" in spec:
        user, _, rest = spec.partition("@")
        if not re.fullmatch(_HOST_USER, user):
            raise _bad_host(spec, "bad user name")
    port_text: str | None = None
    if rest.startswith("["):
        addr, sep, tail = rest[1:].partition("]")
        if not sep or _ipv6(addr) is None:
            raise _bad_host(spec, "bad IPv6 address in brackets")
        host = addr
        if tail:
            if not tail.startswith(":"):
                raise _bad_host(spec, "text after ']' that is not :PORT")
            port_text = tail[1:]
    elif rest.count(":") > 1:
        if _ipv6(rest) is None:
            raise _bad_host(spec, "bad IPv6 address")
        host = rest
    else:
        host, sep, port_text_ = rest.partition(":")
        port_text = port_text_ if sep else None
        if not re.fullmatch(_HOST_NAME, host) or len(host) > 253:
            raise _bad_host(spec, "bad host name")
    port: int | None = None
    if port_text is not None:
        if not re.fullmatch(_HOST_PORT, port_text) or int(port_text) > 65535:
            raise _bad_host(spec, "port must be 1-65535")
        port = int(port_text)
    return user, host, port

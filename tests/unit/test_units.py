"""Name grammars: unit names (the same verdicts systemd's unit_name_is_valid() gives), groups, ssh host specs."""

import pytest

from ollamactl.errors import UsageError
from ollamactl.units import (
    GROUP_NAME_RE,
    INSTANCE_PATTERN,
    check_group_name,
    check_unit_name,
    is_template,
    mangle_unit_name,
    split_host,
    template_instance,
    unit_object_path,
)

#: (unit polkit sees, instance of ollama@.service in our grammar or None).  Shared with
#: tests/unit/test_policy.py, which runs the rendered JavaScript on the same table.
TEMPLATE_TABLE = [
    ("ollama@11501.service", "11501"),
    ("ollama@gpu0.service", "gpu0"),
    ("ollama@_x.service", "_x"),
    ("ollama@a:b-c_D9.service", "a:b-c_D9"),
    ("ollama@" + "a" * 64 + ".service", "a" * 64),
    ("ollama@.service", None),  # the template itself
    ("ollama@a\\x2db.service", None),  # a literal backslash: systemd's escapes are refused
    ("ollama@x\\x2e\\x2e.service", None),
    ("ollama@../x.service", None),
    ("ollama@..service", None),
    ("ollama@x.y.service", None),
    ("ollama@x.service.d", None),
    ("ollama@x.service.service", None),
    ("ollama@x@y.service", None),  # systemd's instance "x@y"
    ("ollama@@x.service", None),
    ("ollama@-x.service", None),  # %I would be "/x"
    ("ollama@:x.service", None),
    ("ollama@x/y.service", None),
    ("ollama@x y.service", None),
    ("ollama@x\n.service", None),
    ("ollama@x.service\n", None),
    ("ollama@1\n", None),
    ("ollama@1.service\x00", None),
    ("ollama@" + "a" * 65 + ".service", None),
    ("ollama@gp\u00fc.service", None),  # unicode letters are not [A-Za-z]
    ("ollama@\u0661.service", None),  # an Arabic-Indic digit is not [0-9]
    ("ollama@\uff11.service", None),  # a fullwidth digit
    ("ollamax@1.service", None),
    ("xollama@1.service", None),
    ("Ollama@1.service", None),
    ("other@1.service", None),
    ("ollama@1.socket", None),
    ("ollama@1.Service", None),
    ("ollama.service", None),
    ("ollama@1", None),
    ("", None),
]


@pytest.mark.parametrize(
    "name",
    ["ollama.service", "ollama@gpu0.service", "a-b_c:d\\x2d.service", "dbus.socket", "x.timer", "a" * 247 + ".service"],
)
def test_valid_names(name):
    assert check_unit_name(name) is None


@pytest.mark.parametrize(
    ("name", "why"),
    [
        ("", "empty"),
        ("ollama", "unit type"),
        (".service", "unit type"),
        ("ollama.servic", "unknown unit type"),
        ("oll ama.service", "characters"),
        ("ollama;rm.service", "characters"),
        ("ollama*.service", "characters"),
        ("@foo.service", "start with '@'"),
        ("ollama@.service", "template"),
        ("a" * 250 + ".service", "at most 255"),
    ],
)
def test_invalid_names_say_why(name, why):
    assert why in (check_unit_name(name) or "")


@pytest.mark.parametrize(
    ("given", "mangled"),
    [
        ("ollama", "ollama.service"),
        ("ollama.service", "ollama.service"),
        ("a.b", "a.b.service"),
        ("x.socket", "x.socket"),
    ],
)
def test_mangle_appends_service_like_systemctl(given, mangled):
    assert mangle_unit_name(given) == mangled


@pytest.mark.parametrize(
    ("name", "path"),
    [
        ("ollama.service", "/org/freedesktop/systemd1/unit/ollama_2eservice"),
        ("dbus-broker.service", "/org/freedesktop/systemd1/unit/dbus_2dbroker_2eservice"),
        ("1x.service", "/org/freedesktop/systemd1/unit/_31x_2eservice"),
        ("a1@b.service", "/org/freedesktop/systemd1/unit/a1_40b_2eservice"),
    ],
)
def test_object_path_matches_systemd_escaping(name, path):
    assert unit_object_path(name) == path


@pytest.mark.parametrize(
    "name", ["ollama.service\n", "ollama\n.service", "ollama.service\r", "\nollama.service", "ollama.service\x00"]
)
def test_names_with_newlines_or_controls_are_refused(name):
    assert "characters" in (check_unit_name(name) or "")


@pytest.mark.parametrize("group", ["ollamactl", "_x", "a-b_c9", "a" * 32])
def test_valid_group_names(group):
    assert check_group_name(group) is None and GROUP_NAME_RE.fullmatch(group)


@pytest.mark.parametrize("group", ["", "Ops", "1ops", "a b", "a" * 33, "ops\n", "ops\r\n", "\tops", None, 7])
def test_invalid_group_names_say_why(group):
    assert "not a valid group name" in (check_group_name(group) or "")


@pytest.mark.parametrize(("unit", "instance"), TEMPLATE_TABLE)
def test_template_instances_follow_the_strict_grammar(unit, instance):
    assert template_instance("ollama@.service", unit) == instance


def test_only_a_template_has_instances():
    assert template_instance("ollama.service", "ollama.service") is None
    assert template_instance("ollama@x.service", "ollama@x.service") is None
    assert template_instance("ollama@.socket", "ollama@1.socket") == "1"
    assert template_instance("ollama@.socket", "ollama@1.service") is None
    assert template_instance("my.llm@.service", "my.llm@gpu1.service") == "gpu1"
    assert template_instance("my.llm@.service", "myxllm@gpu1.service") is None  # '.' is not a wildcard
    assert [is_template(n) for n in ("ollama@.service", "ollama@x.service", "ollama.service", "@.service")] == [
        True,
        False,
        False,
        False,
    ]


def test_the_instance_grammar_means_the_same_in_ecmascript_5():
    """Plain ASCII classes and one bounded quantifier: no \\w, \\d, \\s, '.', lookarounds or flags."""
    import re

    assert re.fullmatch(r"(\[[A-Za-z0-9_:-]+\](\{\d+,\d+\})?)+", INSTANCE_PATTERN), INSTANCE_PATTERN


def test_check_unit_name_accepts_a_template_only_when_asked():
    assert "template" in (check_unit_name("ollama@.service") or "")
    assert check_unit_name("ollama@.service", template_ok=True) is None
    assert check_unit_name("@.service", template_ok=True) is not None


# --------------------------------------------------------------------------- ssh host specs (--host, hosts)

#: (spec, user, host, port); test_remote.py checks its HostSpec on the same table.
HOSTS_GOOD = [
    ("h1", None, "h1", None),
    ("alice@h1", "alice", "h1", None),
    ("alice@h1:2222", "alice", "h1", 2222),
    ("gpu-01.lab.example.org", None, "gpu-01.lab.example.org", None),
    ("my_alias", None, "my_alias", None),
    ("10.0.0.2:22", None, "10.0.0.2", 22),
    ("[::1]:22", None, "::1", 22),
    ("[::1]", None, "::1", None),
    ("bob@[fe80::1%eth0]:65535", "bob", "fe80::1%eth0", 65535),
    ("fe80::2", None, "fe80::2", None),
    ("a.b-c_d@h", "a.b-c_d", "h", None),
]


@pytest.mark.parametrize(("spec", "user", "host", "port"), HOSTS_GOOD)
def test_host_specs_accepted(spec, user, host, port):
    assert split_host(spec) == (user, host, port)


HOSTS_BAD = [
    "",
    "-oProxyCommand=x",  # an ssh option
    "-p22",
    "alice@-oProxyCommand=x",  # an option after the user
    "-alice@h",
    "h;rm",  # shell syntax
    "h;rm -rf /",
    "h|x",
    "h&x",
    "$(id)",
    "`id`",
    "h>x",
    "h h",  # whitespace
    "h\tx",
    "h\nx",
    "h\x1b[2J",  # controls
    "h\x00",
    "hôte",  # non-ASCII
    "alice@",
    "@h",
    "a@b@c",
    "h:",
    "h:0",
    "h:65536",
    "h:+22",
    "h:22x",
    "h:-1",
    "[::1",
    "[::1]x",
    "[::1]:",
    "[nothost]:22",
    "::1:22:zz",
    "-h",
    "h-.x",
    ".h",
    "h..x",
    "a" * 64 + ".x",  # a label too long
    "x" * 301,
    "ali ce@h",
    "alice'@h",
    "h'",
    'h"',
    "h\\x",
    "h/x",
    "h,x",
    "[fe80::1%eth0;x]",
]


@pytest.mark.parametrize("spec", HOSTS_BAD)
def test_host_specs_refused(spec):
    with pytest.raises(UsageError) as e:
        split_host(spec)
    assert e.value.exit_code == 2
    assert "expected [USER@]HOST[:PORT]" in str(e.value)
    assert "\n" not in str(e.value) and "\x1b" not in str(e.value)

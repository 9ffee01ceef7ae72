"""Unit-name grammar: the same verdicts systemd's unit_name_is_valid() gives."""

import pytest

from ollamactl.units import GROUP_NAME_RE, check_group_name, check_unit_name, mangle_unit_name, unit_object_path


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

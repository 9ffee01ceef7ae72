"""Settings precedence and validation errors that name the source and key."""

from pathlib import Path

import pytest

from ollamactl.config import KEYS, load_config
from ollamactl.errors import ConfigError


def load(tmp_path, toml=None, env=None, **overrides):
    path = tmp_path / "config.toml"
    path.write_text(toml or "")
    return load_config(overrides, config_file=path, environ=env or {})


def test_defaults_without_any_source(tmp_path):
    cfg = load(tmp_path)
    assert (cfg.unit, cfg.url, cfg.group) == ("ollama.service", "http://127.0.0.1:11434", "ollamactl")
    assert (cfg.timeout, cfg.bus_timeout, cfg.http_timeout) == (90.0, 10.0, 5.0)
    assert (cfg.max_restarts, cfg.restart_window, cfg.restart_backoff) == (3, 600.0, 10.0)
    assert cfg.model is None and cfg.deep_probe == "slots"
    assert set(cfg.sources.values()) == {"default"}


def test_speed_defaults_meet_the_targets(tmp_path):
    """Full wedge: 3 liveness probes of 1 s, 1 s apart; deep wedge: /slots silent 8 s; loads: 5 min."""
    cfg = load(tmp_path)
    assert (cfg.probe_timeout, cfg.watch_period, cfg.watch_failure_threshold) == (1.0, 1.0, 3)
    assert (cfg.deep_timeout, cfg.deep_confirm, cfg.watch_deep_every, cfg.load_timeout) == (1.0, 8.0, 1, 300.0)


def test_integer_and_choice_keys(tmp_path):
    cfg = load(tmp_path, 'max_restarts = 5\ndeep_probe = "off"\nmodel = "llama3"\n')
    assert (cfg.max_restarts, cfg.deep_probe, cfg.model) == (5, "off", "llama3")
    with pytest.raises(ConfigError, match="deep_probe"):
        load(tmp_path, 'deep_probe = "fast"\n')
    with pytest.raises(ConfigError, match="max_restarts"):
        load(tmp_path, env={"OLLAMACTL_MAX_RESTARTS": "0"})


@pytest.mark.parametrize("mode", ["token", "load"])
def test_the_disturbing_deep_probes_are_refused_with_the_reason(tmp_path, mode):
    """They queued behind users' requests and reset keep-alives; an old config says what to use instead."""
    with pytest.raises(ConfigError) as info:
        load(tmp_path, f'deep_probe = "{mode}"\n')
    msg = info.value.message
    assert "deep_probe" in msg and "removed" in msg and '"slots"' in msg and "\n" not in msg


@pytest.mark.parametrize(("key", "bad"), [("deep_confirm", 0.5), ("load_timeout", 0), ("deep_timeout", -1)])
def test_new_limits_are_validated(tmp_path, key, bad):
    with pytest.raises(ConfigError, match=key):
        load(tmp_path, f"{key} = {bad}\n")


def test_precedence_file_then_env_then_kwargs(tmp_path):
    toml = 'unit = "from-file.service"\ntimeout = 11\nurl = "http://file:1"\ngroup = "g1"\n'
    env = {"OLLAMACTL_TIMEOUT": "22", "OLLAMACTL_URL": "http://env:2"}
    cfg = load(tmp_path, toml, env, url="http://kw:3")
    assert (cfg.unit, cfg.timeout, cfg.url, cfg.group) == ("from-file.service", 22.0, "http://kw:3", "g1")
    assert cfg.sources["unit"].endswith("config.toml")
    assert cfg.sources["timeout"] == "environment variable OLLAMACTL_TIMEOUT"


def test_ollama_host_sets_the_default_url_but_loses_to_ours(tmp_path):
    assert load(tmp_path, env={"OLLAMA_HOST": "0.0.0.0:9999"}).url == "http://0.0.0.0:9999"
    env = {"OLLAMA_HOST": "0.0.0.0:9999", "OLLAMACTL_URL": "http://127.0.0.1:1"}
    assert load(tmp_path, env=env).url == "http://127.0.0.1:1"


def test_unit_without_type_gets_service_suffix(tmp_path):
    assert load(tmp_path, unit="ollama").unit == "ollama.service"


@pytest.mark.parametrize(
    ("toml", "env", "kwargs", "source", "key"),
    [
        ("timeout = -1\n", {}, {}, "config.toml", "timeout"),
        ('timeout = "soon"\n', {}, {}, "config.toml", "timeout"),
        ("", {"OLLAMACTL_BUS_TIMEOUT": "0"}, {}, "OLLAMACTL_BUS_TIMEOUT", "bus_timeout"),
        ("", {"OLLAMACTL_UNIT": "a/b.service"}, {}, "OLLAMACTL_UNIT", "unit"),
        ("", {}, {"url": "localhost:11434"}, "argument url=", "url"),
        ("", {}, {"unit": "x@.service"}, "argument unit=", "unit"),
        ('group = "Bad Group"\n', {}, {}, "config.toml", "group"),
    ],
)
def test_invalid_value_names_source_and_key(tmp_path, toml, env, kwargs, source, key):
    with pytest.raises(ConfigError) as info:
        load(tmp_path, toml, env, **kwargs)
    msg = str(info.value)
    assert "\n" not in msg
    assert source in msg and key in msg
    assert info.value.details["key"] == key


def test_unknown_key_in_file_is_an_error_listing_known_keys(tmp_path):
    with pytest.raises(ConfigError, match="unknown key 'timout'.*timeout"):
        load(tmp_path, "timout = 3\n")


def test_broken_toml_names_the_file(tmp_path):
    with pytest.raises(ConfigError, match="config.toml: not valid TOML"):
        load(tmp_path, "timeout = = 3\n")


def test_explicit_missing_file_is_an_error(tmp_path):
    with pytest.raises(ConfigError, match="nope.toml: config file not found"):
        load_config({}, environ={"OLLAMACTL_CONFIG": str(tmp_path / "nope.toml")})


def test_missing_default_file_means_defaults(tmp_path, monkeypatch):
    monkeypatch.setattr("ollamactl.config.DEFAULT_CONFIG_FILE", tmp_path / "absent.toml")
    assert load_config({}, environ={}).timeout == 90.0


def test_unknown_kwarg_is_rejected(tmp_path):
    with pytest.raises(ConfigError, match="unknown setting 'colour'"):
        load(tmp_path, colour="red")


def test_every_key_has_help():
    assert all(f.metadata["help"] for f in KEYS.values())


def test_readme_documents_every_key_with_its_default():
    readme = (Path(__file__).resolve().parents[2] / "README.md").read_text()
    for name, f in KEYS.items():
        default = "none" if f.default in (None, "") else f"`{f.default}`"
        assert f"| `{name}` | {default} | {f.metadata['help']} |" in readme, name


def test_isolated_validation_gives_the_same_result_and_errors(tmp_path):
    path = tmp_path / "c.toml"
    path.write_text('unit = "ollama"\ntimeout = 12\n')
    assert load_config({}, config_file=path, environ={}, isolate=True) == load_config({}, config_file=path, environ={})
    path.write_text("timeout = 0\n")
    with pytest.raises(ConfigError, match="invalid timeout from .*c.toml") as info:
        load_config({}, config_file=path, environ={}, isolate=True)
    assert info.value.details["key"] == "timeout"


@pytest.mark.parametrize(
    ("toml", "env"),
    [('group = "ops\\n"\n', {}), ("", {"OLLAMACTL_GROUP": "ops\n"}), ("", {"OLLAMACTL_GROUP": "ops\r"})],
)
def test_group_with_a_trailing_newline_is_refused(tmp_path, toml, env):
    """re.match('^...$') accepted "ops\\n" (a rule polkitd ignores); the check is a full match now."""
    with pytest.raises(ConfigError, match="group"):
        load(tmp_path, toml, env)


@pytest.mark.parametrize(
    ("content", "why"),
    [
        (b'unit = "\xff\xfe"\n', "not UTF-8"),
        (b"a = " + b"[" * 5000, "nested too deeply"),
        (b"# " + b"x" * (1 << 20) + b"\n", "larger than"),
    ],
    ids=["latin1", "deep-arrays", "huge"],
)
def test_a_hostile_config_file_is_a_config_error(tmp_path, content, why):
    """Old code: UnicodeDecodeError and RecursionError escaped as tracebacks; a huge file was read whole."""
    path = tmp_path / "config.toml"
    path.write_bytes(content)
    with pytest.raises(ConfigError, match=why):
        load_config({}, config_file=path, environ={})


@pytest.mark.parametrize(
    ("key", "value"),
    [
        ("runtime_dir", "/run/ollamactl\x00x"),
        ("runtime_dir", "/run/\x1b[2Jollamactl"),
        ("watch_startup_grace", "inf"),
        ("url", "http://127.0.0.1:11434/\r\nX-Injected: 1"),
        ("url", "http://h ost:1"),
    ],
)
def test_values_that_would_break_later_are_refused_now(tmp_path, key, value):
    with pytest.raises(ConfigError, match=key):
        load(tmp_path, env={f"OLLAMACTL_{key.upper()}": value})


@pytest.mark.parametrize("host", ["h:\u1369", "h:\u00b2", "h:" + "1" * 5000, "h:0000000000000080"])
def test_ollama_host_with_odd_digits_falls_back_as_ollama_does(tmp_path, host):
    """str.isdigit() accepts '፩' and '²', which int() refuses: that crashed load_config."""
    url = load(tmp_path, env={"OLLAMA_HOST": host}).url
    assert url.endswith((":11434", ":80"))


def _pydantic_result(values):
    from ollamactl._pydantic import ValidationError, to_dict, validate
    from ollamactl.config import _settings_model

    try:
        return to_dict(validate(_settings_model(), values))
    except ValidationError:
        return "invalid"


_ODD = [0, 1, -1, 3, 100, 101, 0.0, -0.0, 0.5, 1.0, 1.5, 86400, 86400.0, 86401, 3600.5, 2**53, 2**60, 1e308,
        float("inf"), float("nan"), True, False, None, "", "5", "ollama", " 1 ", [], {}]  # fmt: skip


@pytest.mark.parametrize("key", [k for k in KEYS])
def test_the_fast_path_returns_exactly_what_pydantic_returns(key):
    """_plain skips pydantic only where the outcome is certain: same values and types, or it defers."""
    from ollamactl.config import _plain

    defaults = {k: f.default for k, f in KEYS.items()}
    assert _plain(defaults) == _pydantic_result(defaults)
    for value in _ODD:
        values = {**defaults, key: value}
        fast = _plain(values)
        if fast is not None:
            slow = _pydantic_result(values)
            assert fast == slow, (key, value)
            assert {k: type(v) for k, v in fast.items()} == {k: type(v) for k, v in slow.items()}, (key, value)


def test_settings_from_the_file_or_flags_need_no_pydantic(tmp_path):
    """A CLI run with plain values must not pay pydantic's import (issue 9 section 3)."""
    import subprocess
    import sys

    path = tmp_path / "c.toml"
    path.write_text('max_restarts = 100\nrestart_window = 1\nrestart_backoff = 0\nunit = "ollama"\nmodel = "m"\n')
    code = (
        "import sys; from ollamactl.config import load_config; "
        f"c = load_config({{'timeout': 12.5, 'url': 'http://[::1]:1'}}, config_file={str(path)!r}, environ={{}}); "
        "assert (c.restart_window, c.unit, c.timeout) == (1.0, 'ollama.service', 12.5), c; "
        "print('pydantic' in sys.modules)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "False"


def test_the_packaged_config_file_means_the_defaults(tmp_path):
    """The file the .deb installs shows every key commented out: tomllib reads it as no setting at all."""
    from tests.unit.test_policy import _gen_files

    cfg = load(tmp_path, _gen_files().config_toml())
    assert cfg == load(tmp_path) and set(cfg.sources.values()) == {"default"}


def test_the_config_file_is_read_as_toml_reads_it(tmp_path):
    """tomllib reads the file, all of TOML: literal strings, escapes, hex, exponents, underscores, CRLF."""
    toml = (
        "unit = 'ollama@gpu0.service'  # a literal string\r\n"
        'model = "llama\\u0033"\r\n'
        "max_restarts = 0x10\r\n"
        "timeout = 1.2e1\r\n"
        "restart_window = 1_200\r\n"
        "[instances]\r\n"
    )
    cfg = load(tmp_path, toml)
    assert (cfg.unit, cfg.model, cfg.max_restarts, cfg.timeout, cfg.restart_window) == (
        "ollama@gpu0.service",
        "llama3",
        16,
        12.0,
        1200.0,
    )
    assert cfg.sources["max_restarts"].endswith("config.toml")


def test_the_hosts_list_is_checked_with_the_host_grammar(tmp_path):
    assert load(tmp_path, 'hosts = "gpu1, alice@gpu2:2222 [::1]:22"\n').hosts == "gpu1 alice@gpu2:2222 [::1]:22"
    assert load(tmp_path).hosts == ""
    with pytest.raises(ConfigError, match="invalid hosts from .*config.toml: bad --host 'h;rm'") as info:
        load(tmp_path, 'hosts = "gpu1 h;rm"\n')
    assert info.value.details["key"] == "hosts"


def test_the_default_url_is_already_in_the_form_parse_url_gives():
    """_check_url returns DEFAULT_URL unparsed, so that a CLI run with defaults does not import the HTTP module."""
    from ollamactl.config import DEFAULT_URL
    from ollamactl.probe import parse_url

    assert parse_url(DEFAULT_URL).url == DEFAULT_URL


def test_the_default_runtime_dir_is_the_runtime_modules():
    """config spells the path out (to stay off the runtime module's import); they must agree."""
    from ollamactl.config import Config
    from ollamactl.runtime import RUN_DIR

    assert Config().runtime_dir == str(RUN_DIR)

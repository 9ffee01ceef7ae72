"""Property-based tests for every parser here that reads data from outside (issue 7).

Each property says what must hold for *any* input: which exceptions are
allowed (the documented ones only), and where a round trip exists, that it
round-trips.  Example counts and seeds come from the hypothesis profile
(tests/conftest.py; HYPOTHESIS_PROFILE=ci fixes the seed).
"""

from __future__ import annotations

import asyncio
import json
import math
import re
import string
from datetime import UTC, datetime

import pytest
from hypothesis import assume, given
from hypothesis import strategies as st

from ollamactl import cli, policy, probe, text, units
from ollamactl.config import KEYS, Config, load_config
from ollamactl.errors import ConfigError, UsageError

# -- shared strategies ---------------------------------------------------------------

#: Text with every kind of character, surrogates and controls included.
any_text = st.text(st.characters(codec=None, exclude_categories=()), max_size=80)
#: JSON/TOML-like values of every type.
json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | any_text,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(any_text, inner, max_size=4),
    max_leaves=10,
)

UNIT_CHARS = string.ascii_letters + string.digits + ":-_.\\"
#: The documented unit-name grammar (units.py, after systemd's unit_name_is_valid), as a whole-string regex.
UNIT_GRAMMAR = re.compile(
    r"[A-Za-z0-9:_.\\-]+(?:@[A-Za-z0-9:_.\\@-]+)?\.(?:" + "|".join(sorted(units.UNIT_TYPES)) + ")"
)
valid_units = st.builds(
    lambda prefix, instance, kind: prefix + (f"@{instance}" if instance else "") + "." + kind,
    st.text(UNIT_CHARS, min_size=1, max_size=40),
    st.none() | st.text(UNIT_CHARS + "@", min_size=1, max_size=20),
    st.sampled_from(sorted(units.UNIT_TYPES)),
)
valid_groups = st.from_regex(r"[a-z_][a-z0-9_-]{0,31}", fullmatch=True)
#: Units a polkit rule may name (make_grant refuses targets, slices, scopes and devices).
grantable_units = valid_units.filter(lambda u: not u.endswith((".target", ".slice", ".scope", ".device")))
verb_sets = st.sets(st.sampled_from(policy.VERBS), min_size=1)


def run(coro):
    return asyncio.run(coro)


# -- text.clean --------------------------------------------------------------------


@given(any_text, st.none() | st.integers(min_value=0, max_value=100))
def test_clean_output_is_printable_and_bounded(value, limit):
    """clean(): any text becomes printable (no control, format or separator character), at most limit (+ marker)."""
    out = text.clean(value, limit)
    assert out.isprintable()
    if limit is not None:
        assert len(out) <= limit + len(text.ELLIPSIS)
    if value.isprintable() and (limit is None or len(value) <= limit):
        assert out == value  # printable text passes unchanged


@given(st.lists(any_text.filter(lambda s: "\n" not in s), min_size=1, max_size=5))
def test_clean_lines_keeps_our_newlines_only(lines):
    """clean_lines(): one output line per input line, each cleaned."""
    out = text.clean_lines("\n".join(lines))
    assert out.split("\n") == [text.clean(line, None) for line in lines]


# -- the HTTP response parser --------------------------------------------------------


async def _parse(data: bytes, limit: int) -> probe.Response:
    reader = asyncio.StreamReader(limit=limit)
    reader.feed_data(data)
    reader.feed_eof()
    return await probe.read_response(reader)


def _check_any(data: bytes, limit: int) -> None:
    try:
        resp = run(_parse(data, limit))
    except probe.HTTPError:
        return
    assert 100 <= resp.status <= 999 and len(resp.body) <= probe.MAX_BODY


header_names = st.text(string.ascii_letters + string.digits + "-_!#", min_size=1, max_size=12)
header_values = st.text(string.printable.replace("\r", "").replace("\n", ""), max_size=30)
heads = st.builds(
    lambda status, headers: (
        f"HTTP/1.1 {status} X\r\n".encode() + b"".join(f"{n}: {v}\r\n".encode() for n, v in headers)
    ),
    st.integers(0, 1200),
    st.lists(st.tuples(header_names, header_values), max_size=6),
)
#: Near-HTTP: a plausible head, then anything; or framing headers with hostile values.
near_http = st.one_of(
    st.builds(lambda h, rest: h + rest, heads, st.binary(max_size=200)),
    st.builds(
        lambda h, name, value, rest: h + name + b": " + value + b"\r\n\r\n" + rest,
        heads,
        st.sampled_from([b"Content-Length", b"Transfer-Encoding", b"content-length"]),
        st.sampled_from([b"chunked", b"5", b"-1", b"99999999999999999999", b"1, 2", b"gzip", b"", b"0x10"])
        | st.binary(max_size=20),
        st.binary(max_size=200),
    ),
    st.builds(
        lambda h, sizes, rest: (
            h + b"Transfer-Encoding: chunked\r\n\r\n" + b"".join(s + b"\r\nabc\r\n" for s in sizes) + rest
        ),
        heads,
        st.lists(st.binary(max_size=20) | st.text("0123456789abcdefABCDEF;x ", max_size=24).map(str.encode)),
        st.binary(max_size=50),
    ),
)


@given(st.binary(max_size=400) | near_http, st.sampled_from([probe.MAX_LINE, 1 << 16]))
def test_http_parser_raises_only_http_error(data, limit):
    """read_response(): any bytes give a Response (status 3 digits, body within MAX_BODY) or HTTPError, nothing else."""
    _check_any(data, limit)


def _frame(status: int, headers: list[tuple[str, str]], body: bytes, framing: str, cuts: list[int]) -> bytes:
    head = f"HTTP/1.1 {status} Reason\r\n" + "".join(f"{n}: {v}\r\n" for n, v in headers)
    if framing == "length":
        return (head + f"Content-Length: {len(body)}\r\n\r\n").encode() + body
    if framing == "eof":
        return (head + "\r\n").encode() + body
    points = sorted({c % (len(body) + 1) for c in cuts} | {0, len(body)})
    chunks = [body[a:b] for a, b in zip(points, points[1:], strict=False) if b > a]
    out = (head + "Transfer-Encoding: chunked\r\n\r\n").encode()
    for c in chunks:
        out += f"{len(c):x};ext=1\r\n".encode() + c + b"\r\n"
    return out + b"0\r\nX-Trailer: t\r\n\r\n"


@given(
    st.integers(100, 599),
    st.lists(
        st.tuples(
            header_names.filter(lambda n: n.lower() not in ("content-length", "transfer-encoding")), header_values
        ),
        max_size=8,
    ),
    st.binary(max_size=3000),
    st.sampled_from(["length", "chunked", "eof"]),
    st.lists(st.integers(0, 4000), max_size=6),
)
def test_http_well_formed_response_round_trips(status, headers, body, framing, cuts):
    """A well-formed answer (any status, headers, body; any framing and chunking) parses to its status and body."""
    resp = run(_parse(_frame(status, headers, body, framing, cuts), probe.MAX_LINE))
    assert (resp.status, resp.body) == (status, body)


@given(json_values)
def test_response_json_raises_only_value_error(value):
    """Response.json(): JSON or ValueError; deep nesting too (it was RecursionError)."""
    depth_bomb = b"[" * 5000 + json.dumps(value).encode() + b"]" * 5000
    for body in (json.dumps(value).encode(), depth_bomb, depth_bomb[:-1]):
        try:
            probe.Response(200, body).json()
        except ValueError:
            pass


# -- config values -------------------------------------------------------------------


def _assert_valid(cfg: Config) -> None:
    assert units.check_unit_name(cfg.unit) is None and units.check_group_name(cfg.group) is None
    probe.parse_url(cfg.url)
    for key, f in KEYS.items():
        value = getattr(cfg, key)
        if f.metadata["limits"]:
            assert isinstance(value, int | float) and math.isfinite(value), (key, value)


#: Values near the edges of every limit, which a uniform draw rarely hits.
edge_values = st.sampled_from(
    [0, -1, 1, 0.0, -0.0, 1e-300, 1e308, math.inf, -math.inf, math.nan, 86400, 86401, 100, 101]
)


@pytest.mark.parametrize("key", sorted(KEYS))
@given(value=json_values | edge_values | edge_values.map(str))
def test_config_any_override_value(key, value):
    """load_config(): any value for any key gives a valid Config or ConfigError."""
    try:
        cfg = load_config({key: value}, config_file="/dev/null", environ={})
    except ConfigError:
        return
    _assert_valid(cfg)


#: OLLAMA_HOST values shaped like [scheme://]host:port[/path], with any digits (str.isdigit knows many).
ollama_hosts = any_text | st.builds(
    lambda scheme, host, port, path: scheme + host + ":" + port + path,
    st.sampled_from(["", "http://", "https://", "ftp://"]),
    st.sampled_from(["", "h", "[::1]", "127.0.0.1", "[", "a:b"]) | any_text,
    st.text(st.characters(categories=["Nd", "No"]), max_size=8) | st.integers(-1, 10**6).map(str),
    st.sampled_from(["", "/", "/x"]),
)


@given(st.sampled_from(sorted(KEYS)), any_text.filter(lambda s: "\0" not in s), ollama_hosts)
def test_config_any_environment_value(key, value, ollama_host):
    """OLLAMACTL_<KEY> and OLLAMA_HOST with any text: a valid Config or ConfigError."""
    env = {f"OLLAMACTL_{key.upper()}": value, "OLLAMA_HOST": ollama_host}
    try:
        cfg = load_config(None, config_file="/dev/null", environ=env)
    except ConfigError:
        return
    _assert_valid(cfg)


toml_values = st.recursive(
    st.booleans().map(lambda b: "true" if b else "false")
    | st.integers(-(2**63), 2**63 - 1).map(str)
    | st.floats().map(lambda f: "nan" if math.isnan(f) else ("inf" if f > 0 else "-inf") if math.isinf(f) else repr(f))
    | any_text.map(json.dumps),
    lambda inner: st.lists(inner, max_size=3).map(lambda xs: "[" + ", ".join(xs) + "]"),
    max_leaves=5,
)


@given(st.sampled_from(sorted(KEYS)), toml_values, st.binary(max_size=200))
def test_config_file_any_value_or_bytes(tmp_path_factory, key, value, junk):
    """A config file with any value for a key, or any bytes at all: a valid Config or ConfigError."""
    path = tmp_path_factory.mktemp("cfg") / "config.toml"
    for content in (f"{key} = {value}\n".encode(), junk, b"a = " + b"[" * 3000):
        path.write_bytes(content)
        try:
            cfg = load_config(None, config_file=path, environ={})
        except ConfigError:
            continue
        _assert_valid(cfg)


# -- unit and group names ------------------------------------------------------------


@given(any_text | st.text(UNIT_CHARS + "@\n ", max_size=30).map(lambda s: s + ".service"))
def test_unit_name_check_never_raises_and_accepts_only_the_grammar(name):
    """check_unit_name(): a reason or None, never an exception; None only for the grammar (so never a newline)."""
    why = units.check_unit_name(name)
    assert why is None or isinstance(why, str)
    if why is None:
        assert UNIT_GRAMMAR.fullmatch(name) and len(name) <= units.UNIT_NAME_MAX
        assert re.fullmatch(r"/org/freedesktop/systemd1/unit/[A-Za-z0-9_]+", units.unit_object_path(name))


@given(valid_units)
def test_valid_unit_names_are_accepted_and_mangling_keeps_them(name):
    """Every name of the grammar passes, and mangle_unit_name leaves a typed name alone."""
    assume(len(name) <= units.UNIT_NAME_MAX)
    assert units.check_unit_name(name) is None
    assert units.mangle_unit_name(name) == name


@given(any_text)
def test_mangle_then_check_round_trips(name):
    """mangle is idempotent, and what check accepts after mangling ends in a unit type."""
    mangled = units.mangle_unit_name(name)
    assert units.mangle_unit_name(mangled) == mangled
    if units.check_unit_name(mangled) is None:
        assert mangled.rpartition(".")[2] in units.UNIT_TYPES
        assert mangled == name or mangled == name + ".service"


@given(any_text | valid_groups.map(lambda g: g + "\n") | valid_groups | st.integers() | st.none())
def test_group_name_check_is_a_full_match(group):
    """check_group_name(): never raises; accepts exactly the documented grammar, whole string (no trailing newline)."""
    why = units.check_group_name(group)
    accepted = isinstance(group, str) and re.fullmatch(r"[a-z_][a-z0-9_-]{0,31}", group) is not None
    assert (why is None) == accepted
    if why is None:
        assert "\n" not in group


@given(any_text | valid_groups.map(lambda g: g + "\n"), any_text | grantable_units, st.lists(any_text))
def test_make_grant_raises_only_usage_error(group, unit, verbs):
    """make_grant(): a Grant of valid names or UsageError, for any input."""
    try:
        grant = policy.make_grant(group, unit, verbs)
    except UsageError:
        return
    assert units.check_group_name(grant.group) is None and units.check_unit_name(grant.unit) is None


# -- --since -------------------------------------------------------------------------


iso_like = st.from_regex(
    r"-?[0-9]{1,6}-[0-9]{1,2}-[0-9]{1,2}"  # date
    r"([T ][0-9]{1,2}:[0-9]{2}(:[0-9]{2}(\.[0-9]{1,6})?)?)?"  # time
    r"(Z|[+-][0-9]{2}:?[0-9]{2})?",  # offset
    fullmatch=True,
)


@given(
    any_text | iso_like | st.sampled_from(["nan", "inf", "-inf", "1e400", "0001-01-01", "9999-12-31T23:59:59-14:00"])
)
def test_since_parses_or_is_a_usage_error(value):
    """--since: a finite epoch float, or UsageError (exit 2); never another exception."""
    parser = cli.build_parser()
    try:
        args = parser.parse_args(["restart", f"--since={value}"])
    except UsageError:
        return
    assert isinstance(args.since, float) and math.isfinite(args.since)


@given(st.floats(min_value=-62_135_596_800 + 86_400, max_value=253_402_300_799 - 86_400))
def test_since_epoch_round_trips(t):
    """A formatted epoch parses back to itself, as repr() and as an aware ISO 8601 time (to the microsecond)."""
    assert cli._when(repr(t)) == t
    iso = datetime.fromtimestamp(t, tz=UTC).isoformat()
    assert abs(cli._when(iso) - t) < 1e-5


# -- the rule parser behind ``policy show`` -----------------------------------------


marker_lines = st.one_of(
    json_values.map(lambda v: policy.MARKER + json.dumps(v)),
    st.fixed_dictionaries({"group": json_values, "unit": json_values, "verbs": json_values}).map(
        lambda v: policy.MARKER + json.dumps(v)
    ),
    st.integers(1, 100_000).map(lambda n: policy.MARKER + "[" * n),
    any_text.map(lambda s: policy.MARKER + s),
)


@given(st.lists(any_text | marker_lines, max_size=6).map("\n".join))
def test_rule_parser_never_raises(rule_text):
    """parse(): any text is (our grant, pristine?) or (None, False), never an exception."""
    grant, pristine = policy.parse(rule_text)
    assert grant is None or isinstance(grant, policy.Grant)
    if grant is None:
        assert pristine is False
    if pristine:
        assert rule_text == policy.render(grant)


@given(valid_groups, grantable_units, verb_sets)
def test_render_then_parse_round_trips(group, unit, verbs):
    """For every valid group, unit and verb set, parse(render(grant)) is that grant, pristine."""
    assume(len(unit) <= units.UNIT_NAME_MAX)
    grant = policy.make_grant(group, unit, sorted(verbs))
    assert policy.parse(policy.render(grant)) == (grant, True)


@given(valid_groups, grantable_units, st.integers(0, 10_000), any_text.filter(bool))
def test_an_edited_rule_is_never_the_pristine_grant(group, unit, where, insert):
    """Any edit of a rendered rule is reported as edited or as another grant, never as the original, pristine."""
    assume(len(unit) <= units.UNIT_NAME_MAX)
    grant = policy.make_grant(group, unit)
    rule = policy.render(grant)
    at = where % (len(rule) + 1)
    edited = rule[:at] + insert + rule[at:]
    assume(edited != rule)
    assert policy.parse(edited) != (grant, True)


def test_profiles_are_registered():
    """The ci profile exists and fixes the seed (conftest.py)."""
    from hypothesis import settings

    ci = settings.get_profile("ci")
    assert ci.derandomize and ci.max_examples <= 500 and ci.deadline is None

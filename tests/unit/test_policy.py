"""polkit rule rendering, validation, reading back and atomic install; generated docs.

What polkitd and systemd do with the rules is tested on the real stack
(tests/e2e/test_denial.py, test_admin.py); these pin our own logic.
"""

from __future__ import annotations

import os
import stat
import tomllib
from pathlib import Path

import pytest

from ollamactl import policy
from ollamactl.cli import build_parser
from ollamactl.config import load_config
from ollamactl.errors import UsageError

REPO = Path(__file__).resolve().parents[2]


def _gen_files():
    """packaging/gen_files.py (not importable by name: "packaging" is also a PyPI module)."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("gen_files", REPO / "packaging" / "gen_files.py")
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_the_packaged_rule_is_what_render_gives_for_the_default_grant():
    text = (REPO / "packaging/polkit/50-ollamactl.rules").read_text()
    grant = policy.make_grant("ollamactl")
    assert text == policy.render(grant)
    assert policy.parse(text) == (grant, True)
    assert grant.verbs == ("try-restart",) and grant.unit == "ollama.service"


def test_the_default_grant_is_try_restart_only_so_members_never_start_a_stopped_unit():
    grant = policy.make_grant("ollamactl")
    assert grant.verbs == (policy.TRY_RESTART,) and not grant.can_start
    text = policy.render(grant)
    assert 'var verbs = ["try-restart"];' in text
    assert "// restart, start, stop, reload, kill, set-property, other units and unit files fall through" in text
    assert "a unit that is stopped\n// (an admin stopped it) or failed stays as it is." in text
    for verbs in (["restart"], ["start"], ["reload-or-restart"], ["restart", "try-restart"]):
        wider = policy.make_grant("ollamactl", verbs=verbs)
        assert wider.can_start and "start the unit if it is not running" in policy.render(wider)


def test_the_commands_that_install_a_grant():
    assert (
        policy.install_command("ollamactl") == "sudo ollamactl policy install --group ollamactl --unit ollama.service"
    )
    assert policy.start_grant_command("ops", "other.service") == (
        "sudo ollamactl policy install --group ops --unit other.service --verb restart --verb try-restart"
    )
    # what the admin gets from that command is what --start needs (RestartUnit: verb restart) and more
    grant = policy.make_grant("ops", "other.service", ["restart", "try-restart"])
    assert grant.can_start and policy.TRY_RESTART in grant.verbs and policy.RESTART in grant.verbs


def test_rule_is_ecmascript5_and_names_only_the_granted_verbs():
    text = policy.render(policy.make_grant("ops", "foo", ["start"]))
    code = "\n".join(line for line in text.splitlines() if not line.startswith("//"))
    for es6 in ("let ", "const ", "=>", "`"):
        assert es6 not in code
    assert 'subject.isInGroup("ops")' in code and '=== "foo.service"' in code
    assert 'var verbs = ["start"];' in code


def test_verbs_are_limited_and_kept_in_canonical_order():
    assert policy.make_grant("g", verbs=["start", "restart", "start"]).verbs == ("restart", "start")
    for bad in ("stop", "kill", "reload", "set-property", "RESTART"):
        with pytest.raises(UsageError, match="--verb") as e:
            policy.make_grant("g", verbs=[bad])
        assert bad in e.value.message
    with pytest.raises(UsageError, match="at least one"):
        policy.make_grant("g", verbs=[])
    offered = {a.dest: a for a in _policy_parser("render")._actions}["verbs"].choices
    assert tuple(offered) == policy.VERBS  # the CLI offers exactly what make_grant accepts


def _policy_parser(action: str):
    import argparse

    def sub(p: argparse.ArgumentParser, name: str) -> argparse.ArgumentParser:
        return next(a for a in p._actions if isinstance(a, argparse._SubParsersAction)).choices[name]

    return sub(sub(build_parser(), "policy"), action)


@pytest.mark.parametrize("group", ["", "Ops", "1ops", "a b", 'x"); polkit.Result.YES; ("', "a" * 33])
def test_bad_group_names_are_refused_naming_the_field(group):
    with pytest.raises(UsageError, match="^--group: "):
        policy.make_grant(group)


@pytest.mark.parametrize(
    "unit", ["", "@.service", 'a".service', "x/y", "@x.service", "multi-user.target", "foo*", "getty@.target"]
)
def test_bad_unit_names_are_refused_naming_the_field(unit):
    with pytest.raises(UsageError, match="^--unit: "):
        policy.make_grant("ops", unit)


def test_unit_names_are_mangled_like_systemctl_and_escaped_as_js_strings():
    assert policy.make_grant("ops", "ollama").unit == "ollama.service"
    grant = policy.make_grant("ops", "a\\x2db@inst.service")
    assert '=== "a\\\\x2db@inst.service"' in policy.render(grant)
    assert policy.parse(policy.render(grant)) == (grant, True)


def test_parse_notices_hand_edits_and_foreign_files():
    text = policy.render(policy.make_grant("ops"))
    assert policy.parse(text.replace('var verbs = ["try-restart"]', 'var verbs = ["try-restart", "start"]'))[1] is False
    assert policy.parse("polkit.addRule(function () {});\n") == (None, False)


def test_polkit_versions():
    assert not policy.polkit_version_supports_rules("0.105")
    for v in ("0.106", "0.120", "121", "122", "126"):
        assert policy.polkit_version_supports_rules(v)


@pytest.mark.skipif(os.geteuid() != 0, reason="install() is root-only")
def test_install_is_atomic_0644_and_never_overwrites_a_foreign_file(tmp_path):
    old = os.umask(0o077)
    try:
        grant = policy.make_grant("ops", "other.service", ["restart"])
        path = policy.install(grant, directory=tmp_path)
    finally:
        os.umask(old)
    assert path.name == "50-ollamactl-ops-other.service.rules"
    assert stat.S_IMODE(path.stat().st_mode) == 0o644
    assert path.read_text() == policy.render(grant)
    assert sorted(p.name for p in tmp_path.iterdir()) == [path.name]  # no temp file left
    scan = policy.scan([tmp_path])
    assert [r.grant for r in scan.granting("ops", "other.service", "restart")] == [grant]
    assert scan.granting("ops", "other.service") == []  # try-restart, what ollamactl restart needs, is not granted
    foreign = tmp_path / "50-mine.rules"
    foreign.write_text("polkit.addRule(function () {});\n")
    with pytest.raises(policy.PolicyWriteError, match="not written by ollamactl"):
        policy.install(grant, directory=tmp_path, name="50-mine.rules")
    assert foreign.read_text() == "polkit.addRule(function () {});\n"
    with pytest.raises(UsageError, match="--name"):
        policy.install(grant, directory=tmp_path, name="../x.rules")


def test_generated_config_file_comments_every_key_at_its_default():
    text = _gen_files().config_toml()
    assert all(line == "" or line.startswith("#") for line in text.splitlines())
    defaults = load_config(None, config_file=os.devnull, environ={}).as_dict()
    uncommented = "\n".join(
        line[1:] for line in text.splitlines() if line.startswith("#") and " = " in line and not line.startswith("# ")
    )
    values = tomllib.loads(uncommented)
    assert set(values) == set(defaults)
    assert {k: v for k, v in values.items() if defaults[k] is not None} == {
        k: v for k, v in defaults.items() if v is not None
    }


def test_man_page_and_completion_cover_every_command_and_option():
    import argparse

    gen = _gen_files()
    man, completion = gen.man_page(), gen.bash_completion()

    def walk(p: argparse.ArgumentParser, path: str) -> None:
        for action in p._actions:
            if isinstance(action, argparse._SubParsersAction):
                for name, sub in action.choices.items():
                    assert f'.SS "ollamactl {(path + " " + name).strip()}"' in man
                    assert f"|{name}" in completion
                    walk(sub, f"{path} {name}".strip())
            for opt in action.option_strings:
                assert opt.replace("-", "\\-") in man, opt
                assert opt in completion, opt

    walk(build_parser(), "")


def test_doctor_on_polkit_0105_says_a_scoped_grant_is_impossible_and_prints_the_sudoers_line():
    """Ubuntu 22.04's polkit cannot be booted here; this pins what doctor tells its users."""
    import asyncio

    from ollamactl import doctor
    from ollamactl.polkit import Polkit
    from ollamactl.systemd import Reply

    class OldPolkit:
        async def send(self, *args, **kwargs):
            return Reply(["0.105"])

    version, check = asyncio.run(doctor._polkit_version(Polkit(OldPolkit(), timeout=1), doctor.default_config()))
    assert version == "0.105" and check.ok is False
    assert "a grant scoped to ollama.service is impossible here" in check.detail and ".pkla" in check.detail
    assert "%ollamactl ALL=(root) NOPASSWD: /usr/bin/systemctl try-restart ollama.service" in check.fix


# -- aliases: polkit sees the primary name (systemd resolves the alias first) -------------


def _alias_resolver(calls: list[str]):
    async def primary_unit_name(unit: str, *, call_timeout: float) -> str:
        calls.append(unit)
        return {"ollama-alias.service": "other.service"}.get(unit, unit)

    return primary_unit_name


@pytest.fixture
def fake_systemd(monkeypatch):
    """policy render/install ask systemd for the primary name through systemd.primary_unit_name: a fake here."""
    calls: list[str] = []
    monkeypatch.setattr("ollamactl.systemd.primary_unit_name", _alias_resolver(calls))
    monkeypatch.setattr("os.geteuid", lambda: 0)

    def no_write(*args, **kwargs):
        raise AssertionError("policy.install must not be reached")

    monkeypatch.setattr(policy, "install", no_write)
    return calls


@pytest.mark.parametrize("command", ["render", "install"])
def test_policy_refuses_an_alias_naming_the_primary_name(fake_systemd, capsys, command):
    from ollamactl.cli import main

    code = main(["policy", command, "--group", "ollamactl", "--unit", "ollama-alias.service"])
    out, err = capsys.readouterr()
    assert code == 2 and out == "" and fake_systemd == ["ollama-alias.service"]
    assert err == (
        "ollamactl: ollama-alias.service is an alias of other.service; polkit checks the primary name: "
        "use --unit other.service\n"
    )


def test_policy_render_of_a_primary_name_asks_systemd_and_renders(fake_systemd, capsys):
    from ollamactl.cli import main

    assert main(["policy", "render", "--group", "ops", "--unit", "other.service"]) == 0
    assert capsys.readouterr().out == policy.render(policy.make_grant("ops", "other.service"))
    assert fake_systemd == ["other.service"]


def test_policy_render_offline_does_not_ask_and_renders_as_typed(fake_systemd, capsys):
    from ollamactl.cli import main

    assert main(["policy", "render", "--offline", "--group", "ops", "--unit", "ollama-alias.service"]) == 0
    assert capsys.readouterr().out == policy.render(policy.make_grant("ops", "ollama-alias.service"))
    assert fake_systemd == []


def test_policy_render_without_a_bus_renders_with_a_note_but_install_refuses(monkeypatch, capsys):
    import json

    from ollamactl.cli import main
    from ollamactl.errors import BusUnavailable

    async def no_bus(unit: str, *, call_timeout: float) -> str:
        raise BusUnavailable("cannot connect to the system bus at unix:path=/nowhere: No such file or directory")

    monkeypatch.setattr("ollamactl.systemd.primary_unit_name", no_bus)
    monkeypatch.setattr("os.geteuid", lambda: 0)
    assert main(["policy", "render", "--group", "ops", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["rule"] == policy.render(policy.make_grant("ops")) and "could not ask systemd" in out["note"]
    assert main(["policy", "install", "--group", "ops"]) == 5
    err = capsys.readouterr().err
    assert err.startswith("ollamactl: cannot connect to the system bus") and err.rstrip().endswith("add --offline")


def test_the_packaged_rule_needs_no_bus():
    """The .deb's rule is policy.render() of the default grant, in-process: no bus, no alias look-up."""
    import subprocess
    import sys

    code = "from ollamactl import policy; print(policy.render(policy.make_grant('ollamactl')), end='')"
    env = {"PYTHONPATH": str(REPO), "DBUS_SYSTEM_BUS_ADDRESS": "unix:path=/nonexistent"}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, check=True).stdout
    assert out == (REPO / "packaging/polkit/50-ollamactl.rules").read_text()


class FakeSystemd:
    """The bus as doctor uses it: unit state, primary name, polkit's version and verdict."""

    def __init__(self, primary: dict[str, str]) -> None:
        self.primary = primary

    async def __aenter__(self):
        return self

    async def __aexit__(self, *exc):
        return None

    async def unit_state(self, unit, timeout=None):
        from ollamactl.systemd import UnitState

        return UnitState(
            self.primary.get(unit, unit), "loaded", "active", "running", "success", 1, None, 1.0, 1.0, 0, None
        )

    async def primary_name(self, unit, timeout=None):
        return self.primary.get(unit, unit)

    async def send(self, destination, path, interface, member, signature="", body=None, *, timeout, peer="systemd"):
        from ollamactl.systemd import Reply

        assert destination == "org.freedesktop.PolicyKit1" and peer == "polkitd"
        if member == "Get":
            return Reply(["126"])
        assert member == "CheckAuthorization"
        self.asked = body[2]["unit"]
        self.verb = body[2]["verb"]
        return Reply([(True, False, {})])


def _doctor_rule_check(
    monkeypatch, tmp_path, unit: str, rule_for: str | None, primary: dict[str, str], verbs: list[str] | None = None
):
    import asyncio

    from ollamactl import doctor

    if rule_for:
        (tmp_path / "50-x.rules").write_text(policy.render(policy.make_grant("ollamactl", rule_for, verbs)))
    real_scan = policy.scan
    monkeypatch.setattr(policy, "scan", lambda dirs=None: real_scan([tmp_path]))
    fake = FakeSystemd(primary)
    monkeypatch.setattr("ollamactl.systemd.SystemdBus", lambda **kwargs: fake)
    config = load_config({"unit": unit, "url": "http://127.0.0.1:9"}, config_file=os.devnull, environ={})
    report = doctor.Report(user="alice", unit=config.unit, group=config.group, checks=[])
    asyncio.run(doctor._bus_checks(report, config, 1000))
    return report, {c.name: c for c in report.checks}, fake


def test_doctor_checks_the_rule_against_the_primary_name_and_says_so(monkeypatch, tmp_path):
    alias = {"ollama-alias.service": "other.service"}
    report, checks, fake = _doctor_rule_check(monkeypatch, tmp_path, "ollama-alias.service", "other.service", alias)
    assert report.primary_unit == "other.service" and checks["rule"].ok is True
    assert "ollama-alias.service is an alias of other.service: polkit checks the primary name" in checks["rule"].detail
    import asyncio

    from ollamactl import doctor
    from ollamactl.polkit import Polkit

    config = load_config({"unit": "ollama-alias.service"}, config_file=os.devnull, environ={})
    authorized, _ = asyncio.run(doctor._ask_polkit(Polkit(fake, timeout=1), config, report, os.getuid()))
    assert authorized is True and fake.asked == "other.service"  # the name systemd would give polkit
    assert fake.verb == "try-restart"  # what ollamactl restart asks for: TryRestartUnit


def test_doctor_fails_a_rule_for_the_alias_name_with_the_fix_for_the_primary(monkeypatch, tmp_path):
    alias = {"ollama-alias.service": "other.service"}
    _, checks, _ = _doctor_rule_check(monkeypatch, tmp_path, "ollama-alias.service", "ollama-alias.service", alias)
    rule = checks["rule"]
    assert rule.ok is False and "alias of other.service" in rule.detail and "grants nothing" in rule.detail
    assert rule.fix.startswith("sudo ollamactl policy install --group ollamactl --unit other.service")


def test_doctor_without_an_alias_is_unchanged(monkeypatch, tmp_path):
    report, checks, _ = _doctor_rule_check(monkeypatch, tmp_path, "ollama.service", "ollama.service", {})
    assert report.primary_unit == "ollama.service" and checks["rule"].ok is True
    assert "alias of" not in checks["rule"].detail


def test_doctor_says_a_stopped_unit_stays_stopped_and_how_to_let_members_start_it(monkeypatch, tmp_path):
    _, checks, _ = _doctor_rule_check(monkeypatch, tmp_path, "ollama.service", "ollama.service", {})
    detail = checks["rule"].detail
    assert "members of group ollamactl may try-restart ollama.service, and nothing else" in detail
    assert "a stopped ollama.service stays stopped (only an admin starts it)" in detail
    assert detail.endswith(
        "ollamactl restart --start: sudo ollamactl policy install --group ollamactl --unit ollama.service "
        "--verb restart --verb try-restart"
    )


def test_doctor_says_when_members_may_start_the_unit(monkeypatch, tmp_path):
    verbs = ["restart", "try-restart"]
    _, checks, _ = _doctor_rule_check(monkeypatch, tmp_path, "ollama.service", "ollama.service", {}, verbs)
    assert checks["rule"].ok is True
    assert checks["rule"].detail.endswith(
        f"members may also start a stopped ollama.service (restart --start), by {tmp_path}/50-x.rules"
    )


def test_doctor_fails_a_rule_without_try_restart(monkeypatch, tmp_path):
    """A grant of restart alone does not let ollamactl restart (TryRestartUnit) through."""
    _, checks, _ = _doctor_rule_check(monkeypatch, tmp_path, "ollama.service", "ollama.service", {}, ["restart"])
    rule = checks["rule"]
    assert rule.ok is False and rule.detail == "no polkit rule grants try-restart of ollama.service to group ollamactl"
    assert rule.fix == "sudo ollamactl policy install --group ollamactl --unit ollama.service"


def test_doctor_wants_the_runtime_dir_2770(tmp_path):
    from ollamactl import doctor

    run_dir = tmp_path / "run"
    run_dir.mkdir()
    os.chmod(run_dir, 0o2775)
    check = doctor._runtime_dir_check(run_dir, "root")
    assert check.ok is False and "want a directory root:root 2770" in check.detail
    assert check.fix == f"sudo chown root:root {run_dir} && sudo chmod 2770 {run_dir}"
    if os.geteuid() == 0:
        os.chown(run_dir, 0, 0)
        os.chmod(run_dir, 0o2770)
        assert doctor._runtime_dir_check(run_dir, "root").ok is True
    assert "-m 2770" in doctor._runtime_dir_check(tmp_path / "absent", "ollamactl").fix


@pytest.mark.parametrize("group", ["ops\n", "ops\n\n", "\nops", "ops\r", "ops\x00"])
def test_a_group_name_with_a_newline_is_refused(group):
    """re.match('^...$') accepted "ops\\n": a rule polkitd silently ignores."""
    with pytest.raises(UsageError, match="^--group: "):
        policy.make_grant(group)


def test_deeply_nested_marker_is_not_ours_not_an_exception():
    assert policy.parse(policy.MARKER + "[" * 100_000 + "\n") == (None, False)


def test_doctor_says_when_systemd_cannot_name_the_primary_unit(monkeypatch, tmp_path):
    from ollamactl.errors import TimedOut

    async def slow(unit, timeout=None):
        raise TimedOut("systemd did not answer LoadUnit within 10s; the system may be overloaded")

    monkeypatch.setattr(FakeSystemd, "primary_name", lambda self, unit, timeout=None: slow(unit))
    report, checks, _ = _doctor_rule_check(monkeypatch, tmp_path, "ollama.service", "ollama.service", {})
    assert report.primary_unit == "ollama.service" and checks["rule"].ok is True
    assert checks["alias"].ok is None and "did not answer LoadUnit" in checks["alias"].detail


# -- template grants: --unit 'ollama@.service' covers ollama@INSTANCE.service, INSTANCE strict ------------


def test_a_template_grant_round_trips_and_says_what_it_covers():
    grant = policy.make_grant("ops", "ollama@.service")
    assert grant.template and grant.unit == "ollama@.service" and grant.verbs == ("try-restart",)
    text = policy.render(grant)
    assert policy.parse(text) == (grant, True)
    assert (
        text.splitlines()[0]
        == "// ollamactl: members of group ops may try-restart any instance of ollama@.service, and nothing else."
    )
    assert '// of one template: "unit" must be ollama@INSTANCE.service, INSTANCE being' in text
    assert policy.default_file_name(grant) == "50-ollamactl-ops-ollama@.service.rules"
    assert (
        policy.install_command("ops", grant.unit) == "sudo ollamactl policy install --group ops --unit ollama@.service"
    )
    wider = policy.make_grant("ops", "ollama@", ["restart", "try-restart"])  # mangled like systemctl
    assert wider.unit == "ollama@.service" and policy.parse(policy.render(wider)) == (wider, True)
    assert "start the unit if it is not running" in policy.render(wider)
    assert not policy.make_grant("ops").template


def test_the_template_rule_uses_the_one_instance_grammar_and_is_ecmascript5():
    from ollamactl.units import INSTANCE_PATTERN

    text = policy.render(policy.make_grant("ops", "ollama@.service"))
    code = "\n".join(line for line in text.splitlines() if not line.startswith("//"))
    for es6 in ("let ", "const ", "=>", "`", ".startsWith", ".endsWith", ".includes", "/u", "/y", "/s"):
        assert es6 not in code
    assert code.count("/^" + INSTANCE_PATTERN + "$/.test(instance)") == 1
    assert 'var prefix = "ollama@";' in code and 'var suffix = ".service";' in code
    # the unit name reaches the rule only as JSON string literals, never inside the regex
    odd = policy.render(policy.make_grant("ops", "a\\x2d.b@.service"))
    assert 'var prefix = "a\\\\x2d.b@";' in odd and policy.parse(odd)[1] is True


def test_an_edited_template_rule_is_not_pristine():
    text = policy.render(policy.make_grant("ops", "ollama@.service"))
    loose = text.replace("{0,63}$/", "{0,63}/")
    assert loose != text and policy.parse(loose)[1] is False


def _scan_with(tmp_path, *grants):
    for i, grant in enumerate(grants):
        (tmp_path / f"50-{i}.rules").write_text(policy.render(grant))
    return policy.scan([tmp_path])


def test_scan_counts_an_instance_as_granted_by_its_template(tmp_path):
    template = policy.make_grant("ollamactl", "ollama@.service")
    scan = _scan_with(tmp_path, template)
    assert [r.grant for r in scan.granting("ollamactl", "ollama@11501.service")] == [template]
    assert [r.grant for r in scan.granting("ollamactl", "ollama@gpu0.service")] == [template]
    for unit in ("ollama@.service", "ollama.service", "other@11501.service", "ollama@a.b.service", "ollama@1.socket"):
        assert scan.granting("ollamactl", unit) == [], unit
    assert scan.granting("ops", "ollama@11501.service") == []  # another group
    assert scan.granting("ollamactl", "ollama@11501.service", "restart") == []  # a verb not granted


def test_the_plain_grant_does_not_cover_instances(tmp_path):
    scan = _scan_with(tmp_path, policy.make_grant("ollamactl"))
    assert len(scan.granting("ollamactl", "ollama.service")) == 1
    assert scan.granting("ollamactl", "ollama@11501.service") == []
    assert scan.granting("ollamactl", "ollama@.service") == []


def test_doctor_counts_the_template_grant_for_an_instance(monkeypatch, tmp_path):
    _, checks, fake = _doctor_rule_check(monkeypatch, tmp_path, "ollama@11501.service", "ollama@.service", {})
    assert checks["rule"].ok is True
    assert "members of group ollamactl may try-restart any instance of ollama@.service" in checks["rule"].detail


_JS_HARNESS = """
var fs = require("fs");
var rule = fs.readFileSync(process.argv[2], "utf8");
var cases = JSON.parse(fs.readFileSync(process.argv[3], "utf8"));
var rules = [];
var polkit = {Result: {YES: "yes", NO: "no", NOT_HANDLED: "not-handled"}, addRule: function (f) { rules.push(f); }};
new Function("polkit", rule)(polkit);
console.log(JSON.stringify(cases.map(function (c) {
    var action = {id: c.id, lookup: function (k) { return c.details[k]; }};
    var subject = {isInGroup: function (g) { return c.groups.indexOf(g) >= 0; }};
    return rules[0](action, subject);
})));
"""


def _run_rule(tmp_path, rule: str, cases: list[dict]) -> list[str]:
    import json
    import shutil
    import subprocess

    node = shutil.which("node") or shutil.which("nodejs")
    if node is None:
        pytest.skip("no JavaScript engine (node) here; tests/e2e/test_denial.py asks the real polkitd")
    (tmp_path / "rule.js").write_text(rule)
    (tmp_path / "cases.json").write_text(json.dumps(cases))
    (tmp_path / "harness.js").write_text(_JS_HARNESS)
    args = [node, str(tmp_path / "harness.js"), str(tmp_path / "rule.js"), str(tmp_path / "cases.json")]
    return json.loads(subprocess.run(args, capture_output=True, text=True, check=True, timeout=60).stdout)


def test_the_rendered_javascript_and_python_agree_on_every_name(tmp_path):
    """The rule itself, run in node with a stand-in polkit object, against Grant.covers on one table."""
    from tests.unit.test_units import TEMPLATE_TABLE

    names = [u for u, _ in TEMPLATE_TABLE] + ["ollama@x.service.", "ollama@\u212a.service", None]
    cases, expected = [], []
    for unit in names:
        for grant in (policy.make_grant("ollamactl", "ollama@.service"), policy.make_grant("ollamactl")):
            for groups, verb in ((["ollamactl"], "try-restart"), (["ops"], "try-restart"), (["ollamactl"], "restart")):
                cases.append(
                    {
                        "rule": policy.render(grant),
                        "id": policy.ACTION,
                        "details": {"unit": unit, "verb": verb},
                        "groups": groups,
                    }
                )
                yes = unit is not None and grant.covers(unit) and groups == ["ollamactl"] and verb in grant.verbs
                expected.append("yes" if yes else "not-handled")
    got = []
    for rule in {c["rule"] for c in cases}:
        mine = [c for c in cases if c["rule"] == rule]
        got += list(zip([id(c) for c in mine], _run_rule(tmp_path, rule, mine), strict=True))
    verdicts = dict(got)
    rows = [(c["details"]["unit"], c["groups"], c["details"]["verb"], c["rule"].split("\n")[0][-40:]) for c in cases]
    mismatches = [
        (row, verdicts[id(c)], e) for row, c, e in zip(rows, cases, expected, strict=True) if verdicts[id(c)] != e
    ]
    assert not mismatches
    assert expected.count("yes") == 5 + 1  # 5 instances by the template grant, ollama.service by the plain one
    other = _run_rule(
        tmp_path,
        policy.render(policy.make_grant("ollamactl", "ollama@.service")),
        [
            {
                "id": "org.freedesktop.login1.reboot",
                "details": {"unit": "ollama@1.service", "verb": "try-restart"},
                "groups": ["ollamactl"],
            }
        ],
    )
    assert other == ["not-handled"]

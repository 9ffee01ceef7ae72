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

from ollamactl import admin_cli, policy
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
    assert grant.verbs == ("restart", "try-restart") and grant.unit == "ollama.service"


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
    assert admin_cli.VERB_CHOICES == policy.VERBS


@pytest.mark.parametrize("group", ["", "Ops", "1ops", "a b", 'x"); polkit.Result.YES; ("', "a" * 33])
def test_bad_group_names_are_refused_naming_the_field(group):
    with pytest.raises(UsageError, match="^--group: "):
        policy.make_grant(group)


@pytest.mark.parametrize(
    "unit", ["", "ollama@.service", 'a".service', "x/y", "@x.service", "multi-user.target", "foo*"]
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
    assert policy.parse(text.replace('"restart", "try-restart"]', '"restart", "stop"]'))[1] is False
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
    assert [r.grant for r in scan.granting("ops", "other.service")] == [grant]
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

    class OldPolkit:
        async def call(self, *args, **kwargs):
            return ["0.105"]

    version, check = asyncio.run(doctor._polkit_version(OldPolkit(), doctor.default_config()))
    assert version == "0.105" and check.ok is False
    assert "a grant scoped to ollama.service is impossible here" in check.detail and ".pkla" in check.detail
    assert "%ollamactl ALL=(root) NOPASSWD: /usr/bin/systemctl restart ollama.service" in check.fix

"""``ollamactl doctor`` and ``ollamactl policy`` against real polkitd and systemd.

The fixes doctor prints are run verbatim (as root, without "sudo ") and must
make the failed check pass; rules written by ``policy install`` must really be
applied by polkitd, and only for what they name.
"""

from __future__ import annotations

import json
import time

import pytest

from tests.e2e.conftest import UNIT, Bed

DOCTOR_FAILED, PERMISSION, USAGE = 20, 3, 2
PACKAGED = "/usr/share/polkit-1/rules.d/50-ollamactl.rules"
#: What an admin runs to let members start a stopped Ollama too (ollamactl restart --start: RestartUnit).
START_GRANT = "sudo ollamactl policy install --group ollamactl --unit ollama.service --verb restart --verb try-restart"
#: busctl's text for InteractiveAuthorizationRequired: systemd 252/257, then systemd 262's longer wording.
NEEDS_AUTH = ("Interactive authentication required", "requires interactive authentication")
STOPPED = 14  # ollamactl restart of a unit an admin stopped
BUSCTL = ["busctl", "--allow-interactive-authorization=no", "call", "org.freedesktop.systemd1",
          "/org/freedesktop/systemd1", "org.freedesktop.systemd1.Manager"]  # fmt: skip


def doctor(bed: Bed, user: str, *args: str) -> tuple[int, dict, dict]:
    rc, out = bed.json("doctor", *args, user=user)
    return rc, out, {c["name"]: c for c in out["checks"]}


def run_fix(bed: Bed, fix: str) -> None:
    """Run a printed fix as the admin would (we are root: drop the sudo)."""
    assert fix.startswith("sudo "), fix
    bed.c.sh(fix.replace("sudo ", ""), check=True)


def wait_for(predicate, what: str, timeout: float = 10) -> None:
    end = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < end, what
        time.sleep(0.2)


def test_doctor_passes_for_a_member_and_says_why_polkit_cannot_be_asked(healthy: Bed):
    rc, out, checks = doctor(healthy, "alice")
    assert rc == 0 and out["ok"] is True, out
    for name in ("config", "system bus", "unit", "group", "polkit", "rule", "runtime dir", "ollama"):
        assert checks[name]["ok"] is True, checks[name]
    assert out["polkit_version"] == {"bookworm": "122", "trixie": "126", "sid": "128"}[healthy.suite]
    # polkitd refuses CheckAuthorization with unit details from non-root callers: doctor says so
    assert checks["polkit says"]["ok"] is None and "only for root" in checks["polkit says"]["detail"]
    text = healthy.ollamactl("doctor", user="alice")
    assert text.returncode == 0 and "all checks passed" in text.stdout


def test_doctor_tells_a_non_member_the_fix_and_the_fix_works(healthy: Bed):
    rc, out, checks = doctor(healthy, "bob")
    assert rc == DOCTOR_FAILED and out["ok"] is False
    assert checks["group"]["ok"] is False and checks["group"]["fix"] == "sudo usermod -aG ollamactl bob"
    assert [n for n, c in checks.items() if c["ok"] is False] == ["group"]
    text = healthy.ollamactl("doctor", user="bob")
    assert text.returncode == DOCTOR_FAILED and "fix: sudo usermod -aG ollamactl bob" in text.stdout
    try:
        run_fix(healthy, checks["group"]["fix"])
        rc, _, _ = doctor(healthy, "bob")
        assert rc == 0
        before = healthy.prop("InvocationID")
        r = healthy.ollamactl("restart", user="bob")  # no re-login needed
        assert r.returncode == 0, r.stderr
        assert healthy.prop("InvocationID") != before
    finally:
        healthy.c.run(["gpasswd", "-d", "bob", "ollamactl"], check=True)


def test_doctor_as_root_reads_the_packaged_rule(healthy: Bed):
    rc, out, checks = doctor(healthy, "root")
    assert rc == 0, out
    detail = checks["rule"]["detail"]
    assert detail.startswith(PACKAGED + ": members of group ollamactl may try-restart ollama.service, and nothing else")
    assert "a stopped ollama.service stays stopped (only an admin starts it)" in detail
    assert detail.endswith(START_GRANT)
    assert "root" in checks["polkit says"]["detail"]


def test_doctor_finds_a_broken_runtime_dir_and_its_fix_works(healthy: Bed):
    healthy.c.run(["chmod", "0700", "/run/ollamactl"], check=True)
    try:
        rc, _, checks = doctor(healthy, "alice")
        assert rc == DOCTOR_FAILED and checks["runtime dir"]["ok"] is False
        assert "2700, want" in checks["runtime dir"]["detail"]  # (chmod keeps a directory's setgid bit)
        run_fix(healthy, checks["runtime dir"]["fix"])
        rc, _, checks = doctor(healthy, "alice")
        assert rc == 0 and checks["runtime dir"]["ok"] is True
    finally:
        healthy.c.run(["chmod", "2770", "/run/ollamactl"], check=True)


def test_doctor_names_a_bad_config_key_and_still_checks_the_rest(healthy: Bed):
    healthy.c.write_file("/etc/ollamactl/test-bad.toml", 'timeout = "soon"\n')
    rc, out, checks = doctor(healthy, "alice", "--config", "/etc/ollamactl/test-bad.toml")
    assert rc == DOCTOR_FAILED
    assert checks["config"]["ok"] is False and "timeout" in checks["config"]["detail"]
    assert checks["config"]["fix"] == "sudoedit /etc/ollamactl/test-bad.toml and correct timeout"
    assert checks["unit"]["ok"] is True and checks["ollama"]["ok"] is True


def test_without_the_rule_doctor_prints_policy_install_and_that_fix_restores_the_grant(healthy: Bed):
    healthy.c.run(["mv", PACKAGED, "/root/50-ollamactl.rules.saved"], check=True)
    try:
        wait_for(lambda: healthy.ollamactl("restart", "--no-wait").returncode == PERMISSION, "polkitd kept the rule")
        rc, _, checks = doctor(healthy, "root")
        assert rc == DOCTOR_FAILED and checks["rule"]["ok"] is False
        assert checks["rule"]["fix"] == "sudo ollamactl policy install --group ollamactl --unit ollama.service"
        run_fix(healthy, checks["rule"]["fix"])
        installed = "/etc/polkit-1/rules.d/50-ollamactl-ollamactl-ollama.service.rules"
        assert healthy.c.run(["stat", "-c", "%a %U", installed], check=True).stdout.split() == ["644", "root"]
        healthy.c.run(["rm", "-f", "/run/ollamactl/state.json"], check=True)  # a fresh restart budget
        wait_for(lambda: healthy.ollamactl("restart").returncode == 0, "the installed rule did not grant restart")
        rc, _, checks = doctor(healthy, "root")
        assert rc == 0 and checks["rule"]["detail"].startswith(installed)
    finally:
        healthy.c.sh(f"rm -f /etc/polkit-1/rules.d/50-ollamactl-*.rules; mv /root/50-ollamactl.rules.saved {PACKAGED}")


def test_policy_install_for_another_group_and_unit_grants_exactly_that(healthy: Bed):
    c = healthy.c
    c.sh("groupadd --system ops && useradd -m -s /bin/sh -G ops carol", check=True)
    try:
        r = healthy.ollamactl(
            "policy", "install", "--group", "ops", "--unit", "other", "--verb", "restart", "--json", user="root"
        )
        out = json.loads(r.stdout)
        assert r.returncode == 0 and out["path"] == "/etc/polkit-1/rules.d/50-ollamactl-ops-other.service.rules"
        before = healthy.prop("InvocationID", unit="other.service")

        def carol_restarts() -> bool:
            return c.run([*BUSCTL, "RestartUnit", "ss", "other.service", "replace"], user="carol").returncode == 0

        wait_for(carol_restarts, "polkitd did not apply the installed rule")
        wait_for(lambda: healthy.prop("InvocationID", unit="other.service") != before, "other.service not restarted")
        for user, member, unit in (
            ("carol", "StopUnit", "other.service"),
            ("carol", "TryRestartUnit", "other.service"),  # not granted: only --verb restart
            ("carol", "RestartUnit", UNIT),
            ("alice", "RestartUnit", "other.service"),
        ):
            r = c.run([*BUSCTL, member, "ss", unit, "replace"], user=user)
            assert r.returncode != 0 and any(m in r.stderr for m in NEEDS_AUTH), (user, member, unit, r.stderr)
        shown = healthy.ollamactl("policy", "show", user="root").stdout
        assert "50-ollamactl-ops-other.service.rules" in shown and "members: carol" in shown
    finally:
        c.sh("rm -f /etc/polkit-1/rules.d/50-ollamactl-ops-*.rules; userdel -r carol; groupdel ops")


def test_starting_a_stopped_ollama_needs_the_restart_grant_and_policy_install_gives_it(healthy: Bed):
    """The default grant never starts a unit an admin stopped; the admin can widen it with policy install."""
    c = healthy.c
    c.run(["systemctl", "stop", UNIT], check=True)
    try:
        r = healthy.ollamactl("restart", user="alice")
        assert r.returncode == STOPPED, (r.returncode, r.stdout, r.stderr)
        assert f"sudo systemctl start {UNIT}" in r.stderr
        r = healthy.ollamactl("restart", "--start", user="alice")
        assert r.returncode == PERMISSION, (r.returncode, r.stdout, r.stderr)
        assert "policy install" in r.stderr and "--verb restart" in r.stderr, r.stderr
        r = c.run([*BUSCTL, "RestartUnit", "ss", UNIT, "replace"], user="alice")  # nor behind ollamactl's back
        assert r.returncode != 0 and any(m in r.stderr for m in NEEDS_AUTH), r.stderr
        assert healthy.prop("ActiveState") == "inactive"

        run_fix(healthy, START_GRANT)
        installed = "/etc/polkit-1/rules.d/50-ollamactl-ollamactl-ollama.service.rules"
        _, _, checks = doctor(healthy, "root")  # (fails on "ollama": it is stopped)
        assert checks["rule"]["ok"] is True and checks["rule"]["detail"].endswith(
            f"members may also start a stopped {UNIT} (restart --start), by {installed}"
        ), checks["rule"]
        wait_for(lambda: healthy.ollamactl("restart", "--start", user="alice").returncode == 0, "--start not granted")
        assert healthy.prop("ActiveState") == "active"
        healthy.recover_api()
    finally:
        c.sh("rm -f /etc/polkit-1/rules.d/50-ollamactl-*.rules")
        c.run(["systemctl", "start", UNIT], check=True)


def test_policy_install_needs_root_and_writes_nothing_otherwise(healthy: Bed):
    rc, out = healthy.json("policy", "install", "--group", "ops", user="alice")
    assert rc == PERMISSION and out["error"] == "not-root"
    assert out["message"].startswith("installing a polkit rule needs root: sudo ollamactl policy install --group ops")
    ls = healthy.c.run(["ls", "/etc/polkit-1/rules.d"], check=True).stdout
    assert "ollamactl" not in ls


@pytest.mark.parametrize(
    ("args", "field"),
    [
        (["--group", "Ops"], "--group"),
        (["--group", "ops", "--unit", "@evil.service"], "--unit"),  # templates are fine (ollama@.service)
        (["--group", "ops", "--verb", "stop"], "--verb"),
    ],
)
def test_policy_render_refuses_bad_names_naming_the_field(bed: Bed, args: list[str], field: str):
    r = bed.ollamactl("policy", "render", *args, user="bob")
    assert r.returncode == USAGE and r.stdout == ""
    assert field in r.stderr and len(r.stderr.strip().splitlines()) == 1 and "Traceback" not in r.stderr


def test_policy_show_describes_the_packaged_grant(bed: Bed):
    rc, out = bed.json("policy", "show", user="root")
    assert rc == 0
    (rule,) = [r for r in out["rules"] if r["path"] == PACKAGED]
    assert (rule["group"], rule["unit"], rule["verbs"]) == ("ollamactl", UNIT, ["try-restart"])
    assert "alice" in rule["group_members"] and rule["edited"] is False and rule["polkitd_can_read"] is True
    text = bed.ollamactl("policy", "show", user="root").stdout
    assert "group: ollamactl" in text and "unit:  ollama.service" in text and "verbs: try-restart (" in text
    assert "a stopped ollama.service stays stopped: members cannot start it" in text


def test_policy_show_as_a_user_shows_what_polkitd_lets_users_read(bed: Bed):
    r = bed.ollamactl("policy", "show", user="alice")
    assert r.returncode == 0
    if bed.suite == "bookworm":  # polkitd 122 keeps /usr/share/polkit-1/rules.d at 0700
        assert r.stdout.startswith("polkitd lets only root read its rules here: sudo ollamactl policy show")
    else:
        assert r.stdout.startswith(PACKAGED) and "verbs: try-restart (" in r.stdout


def test_root_doctor_for_a_user_shows_polkits_own_verdict_on_their_process(healthy: Bed):
    """Only root may pass the unit/verb details to CheckAuthorization; then polkit answers per user."""
    c = healthy.c
    rc, out, checks = doctor(healthy, "root", "--user", "alice")
    assert checks["polkit says"]["ok"] is None and "no running process" in checks["polkit says"]["detail"]
    started = c.sh(
        "for u in alice bob; do\n"
        "  rm -f /tmp/doctor-pid-$u\n"
        "  runuser -u $u -- sh -c 'echo $$ > /tmp/doctor-pid-$0; exec sleep 120' $u </dev/null >/dev/null 2>&1 &\n"
        "done\n"
        "until [ -s /tmp/doctor-pid-alice ] && [ -s /tmp/doctor-pid-bob ]; do sleep 0.1; done\n"
        "cat /tmp/doctor-pid-alice /tmp/doctor-pid-bob; rm -f /tmp/doctor-pid-*",
        check=True,
        timeout=30,
    )
    pids = started.stdout.split()
    assert len(pids) == 2, started
    try:
        rc, out, checks = doctor(healthy, "root", "--user", "alice")
        assert rc == 0 and out["user"] == "alice" and out["authorized"] is True, out
        assert checks["polkit says"]["detail"].startswith("alice may try-restart ollama.service (asked about pid ")
        rc, out, checks = doctor(healthy, "root", "--user", "bob")
        assert rc == DOCTOR_FAILED and out["authorized"] is False
        assert checks["polkit says"]["ok"] is False and checks["polkit says"]["fix"] == "sudo usermod -aG ollamactl bob"
        assert "would ask for an admin password" in checks["polkit says"]["detail"]
    finally:
        c.run(["kill", *pids])
    r = healthy.ollamactl("doctor", "--user", "bob", user="alice")
    assert r.returncode == PERMISSION and "sudo ollamactl doctor --user bob" in r.stderr

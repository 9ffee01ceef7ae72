"""ollamactl --host end to end: two booted containers on a network of their own, ssh between them.

Container A (the client) and B (the target) join a network zone the test bed creates
(a bridge on this host with nothing else on it; tests/testbed.py boot(zone=...)).  B runs
sshd; alice and bob make their keys on A, B authorizes them, and A knows B's host key
(written here from B's own key: no trust-on-first-use, no weakened host-key checking).
On B, as on A, alice is in group ollamactl and bob is not: B's own ollamactl and polkit
rule decide, A only carries the question.
"""

from __future__ import annotations

import json
import time

import pytest

from tests import testbed
from tests.e2e.conftest import TIMINGS, UNIT

PERMISSION, REMOTE, TIMEOUT = 3, 21, 7
NET = "192.168.251"  # the zone's network: nothing else is on it
A_ADDR, B_ADDR, NOBODY = f"{NET}.1", f"{NET}.2", f"{NET}.99"
CONNECT_TIMEOUT_S = 10  # ollamactl.remote.CONNECT_TIMEOUT
MARGIN_S = 5.0  # process start-up, ssh's own set-up, a busy 2-core host


class Pair:
    def __init__(self, a: testbed.Container, b: testbed.Container) -> None:
        self.a, self.b, self.suite = a, b, a.suite

    def ollamactl(self, *args: str, user: str = "alice", timeout: float = 120) -> tuple[int, str, str, float]:
        t0 = time.monotonic()
        r = self.a.run(["ollamactl", *args], user=user, timeout=timeout)
        return r.returncode, r.stdout, r.stderr, time.monotonic() - t0

    def invocation(self, c: testbed.Container) -> str:
        return c.run(["systemctl", "show", "-p", "InvocationID", "--value", UNIT], check=True).stdout.strip()

    def fresh_budget(self) -> None:
        """A fresh restart budget and start-limit counter on B, as on a box where restarts are minutes apart."""
        self.b.run(["systemctl", "reset-failed", UNIT], check=True)
        self.b.run(["rm", "-f", "/run/ollamactl/state.json"], check=True)


@pytest.fixture(scope="module", params=testbed.SUITES)
def pair(request, deb) -> Pair:
    zone = testbed.new_zone()
    t0 = time.monotonic()
    a = testbed.boot(request.param, deb=deb, zone=zone, address=f"{A_ADDR}/24")
    request.addfinalizer(a.stop)
    b = testbed.boot(request.param, deb=deb, zone=zone, address=f"{B_ADDR}/24")
    request.addfinalizer(b.stop)
    b.start_sshd()
    host_key = b.run(["cat", "/etc/ssh/ssh_host_ed25519_key.pub"], check=True).stdout.split()
    for user in ("alice", "bob"):
        # The user makes a key on A; B authorizes it; A knows B's host key (from B itself).
        a.sh(
            'mkdir -p -m 700 "$HOME/.ssh" && ssh-keygen -q -t ed25519 -N "" -C "$USER@a" -f "$HOME/.ssh/id_ed25519"',
            user=user,
            check=True,
        )
        a.sh('cat > "$HOME/.ssh/known_hosts"', user=user, input=f"{B_ADDR} {host_key[0]} {host_key[1]}\n", check=True)
        public = a.sh('cat "$HOME/.ssh/id_ed25519.pub"', user=user, check=True).stdout
        b.sh('mkdir -p -m 700 "$HOME/.ssh" && cat > "$HOME/.ssh/authorized_keys"', user=user, input=public, check=True)
    TIMINGS.append(f"{request.param}: remote pair (2 boots, sshd, keys) ready in {time.monotonic() - t0:.1f} s")
    return Pair(a, b)


def test_member_restarts_ollama_on_the_other_host(pair: Pair):
    pair.fresh_budget()
    a_before, b_before = pair.invocation(pair.a), pair.invocation(pair.b)
    spec = f"alice@{B_ADDR}"
    rc, out, err, took = pair.ollamactl("--host", spec, "restart", "--reason", "e2e: remote", "--json")
    assert rc == 0, (out, err)
    assert out.count("\n") == 1, out
    result = json.loads(out)
    assert result["ok"] is True and result["exit_code"] == 0 and list(result["hosts"]) == [spec]
    entry = result["hosts"][spec]
    assert entry["action"] == "restarted" and entry["unit"] == UNIT and entry["exit_code"] == 0
    b_after = pair.invocation(pair.b)
    assert entry["old_invocation_id"] == b_before and entry["new_invocation_id"] == b_after != b_before
    assert pair.invocation(pair.a) == a_before, "the restart ran on A, not on B"
    TIMINGS.append(f"{pair.suite}: ollamactl --host restart (ssh + remote restart) {took:.2f} s")


def test_non_member_is_refused_by_the_other_host(pair: Pair):
    pair.fresh_budget()
    b_before = pair.invocation(pair.b)
    spec = f"bob@{B_ADDR}"
    rc, out, err, _ = pair.ollamactl("--host", spec, "restart", "--json", user="bob")
    assert rc == PERMISSION, (out, err)
    result = json.loads(out)
    assert result["ok"] is False and result["exit_code"] == PERMISSION
    entry = result["hosts"][spec]
    assert entry["error"] == "permission-denied" and entry["exit_code"] == PERMISSION, entry
    assert pair.invocation(pair.b) == b_before, "bob's refused restart changed B"
    # The same refusal as a table: one row for the host, then the worst exit code.
    rc, out, err, _ = pair.ollamactl("--host", spec, "restart", user="bob")
    assert rc == PERMISSION, err
    rows = out.splitlines()
    assert rows[0].split() == ["HOST", "EXIT", "RESULT"] and rows[1].split()[:3] == [spec, "3", "permission-denied:"]
    assert rows[-1].endswith("exit code 3")


def test_many_hosts_one_object_and_an_unreachable_host(pair: Pair):
    hosts = [f"alice@{B_ADDR}", B_ADDR, NOBODY]  # B twice (as two specs) and an address nobody has
    args = [w for h in hosts for w in ("--host", h)]
    rc, out, err, took = pair.ollamactl(*args, "status", "--json")
    result = json.loads(out)
    assert sorted(result["hosts"]) == sorted(hosts), result  # (keys sorted in the JSON; the table keeps order)
    for spec in hosts[:2]:
        entry = result["hosts"][spec]
        assert entry["healthy"] is True and entry["exit_code"] == 0 and entry["unit"] == UNIT, entry
    down = result["hosts"][NOBODY]
    assert down["error"] == "ssh" and down["exit_code"] == REMOTE, down
    assert rc == REMOTE and result["exit_code"] == REMOTE and result["ok"] is False
    assert took < CONNECT_TIMEOUT_S + MARGIN_S, f"an unreachable host held the run {took:.1f} s"
    TIMINGS.append(f"{pair.suite}: --host x3 status with one unreachable host: {took:.2f} s ({down['message'][:60]})")


def test_all_hosts_runs_on_the_configs_host_list(pair: Pair):
    saved = pair.a.run(["cat", "/etc/ollamactl/config.toml"]).stdout
    pair.a.write_file("/etc/ollamactl/config.toml", f'hosts = "alice@{B_ADDR}"\nssh_connect_timeout = 5\n')
    try:
        rc, out, err, _ = pair.ollamactl("--all-hosts", "status", "--json")
    finally:
        pair.a.write_file("/etc/ollamactl/config.toml", saved)
    result = json.loads(out)
    assert rc == 0 and list(result["hosts"]) == [f"alice@{B_ADDR}"], (out, err)
    assert result["hosts"][f"alice@{B_ADDR}"]["healthy"] is True

"""Issue 14 §2: only Ollama's own runners' answers count, whatever else listens on loopback."""

from __future__ import annotations

from ollamactl import journal, probe
from ollamactl.journal import JournalFacts
from ollamactl.probe import OK, TIMEOUT, Loaded, PsResult
from ollamactl.runners import OVERFLOW_UID, api_owner_ports, own_runners, runner_candidates

API = probe.parse_url("http://127.0.0.1:11434")
A, B = "a" * 64, "b" * 64
OLLAMA, BOB = 999, 1001


def started(facts: JournalFacts, port: int, digest: str, at: float) -> None:
    """Ollama's own line for a runner start, as llm/llama_server.go logs it."""
    cmd = (
        f"/usr/lib/ollama/llama-server --model /usr/share/ollama/.ollama/models/blobs/sha256-{digest} "
        f"--port {port} --host 127.0.0.1"
    )
    journal.observe(facts, f'time=x level=INFO source=llama_server.go:433 msg="starting llama-server" cmd="{cmd}"', at)


def facts_with(*runners: tuple[int, str, float]) -> JournalFacts:
    facts = JournalFacts(invocation_id="i", readable=True)
    for port, digest, at in runners:
        started(facts, port, digest, at)
    return facts


def ps(*digests: str, status: str = OK) -> PsResult:
    return PsResult(status, 0.01, tuple(Loaded(f"m{i}:latest", 1, 0, d) for i, d in enumerate(digests)))


def socks(*ports: int, uid: int = OLLAMA) -> list[tuple[str, int, int]]:
    return [("127.0.0.1", 11434, uid), *(("127.0.0.1", p, uid) for p in ports)]


def test_the_journal_names_each_runners_model():
    facts = facts_with((40001, A, 1.0))
    assert facts.runners == {40001: 1.0} and facts.runner_models == {40001: A}


def test_a_port_a_model_left_for_a_newer_runner_is_ignored():
    """Unloaded, then loaded again on a new port: the old port may be anyone's now."""
    facts = facts_with((40001, A, 1.0), (40002, A, 2.0))
    found = socks(40001, 40002)
    mine = own_runners(runner_candidates(facts, API, found), facts, API, ps(A), found)
    assert mine.ports == (40002,) and "runner :40001 ignored: its model's newer runner is :40002" in mine.ignored


def test_the_runner_of_a_model_no_longer_loaded_is_ignored():
    facts = facts_with((40001, A, 1.0), (40002, B, 2.0))
    found = socks(40001, 40002)
    mine = own_runners([40001, 40002], facts, API, ps(B), found)
    assert mine.ports == (40002,) and "no longer loaded" in mine.ignored[0]


def test_without_a_model_list_only_the_newest_runner_of_each_model_counts():
    facts = facts_with((40001, A, 1.0), (40002, B, 2.0), (40003, A, 3.0))
    found = socks(40001, 40002, 40003)
    assert own_runners([40001, 40002, 40003], facts, API, ps(status=TIMEOUT), found).ports == (40002, 40003)


def test_a_stranger_listening_on_a_runners_port_is_ignored_where_owners_show():
    facts = facts_with((40001, A, 1.0))
    found = [("127.0.0.1", 11434, OLLAMA), ("127.0.0.1", 40001, BOB)]
    mine = own_runners([40001], facts, API, ps(A), found)
    assert mine.ports == () and f"not listened on by Ollama's user (uid {OLLAMA})" in mine.ignored[0]


def test_inside_a_user_namespace_owners_do_not_show_and_the_journal_rules_alone_decide():
    """Inside a user namespace (a container's own) every other uid reads as the overflow uid."""
    facts = facts_with((40001, A, 1.0), (40002, A, 2.0))
    found = socks(40001, 40002, uid=OVERFLOW_UID)
    assert own_runners([40001, 40002], facts, API, ps(A), found).ports == (40002,)


def test_a_squatter_on_another_loopback_address_with_ollamas_port_changes_nothing():
    """A listener on 127.0.0.2:11434 used to make two owners of Ollama's port, so no runner was found."""
    found = [*socks(40001), ("127.0.0.2", 11434, BOB), ("::1", 11434, BOB), ("127.0.0.1", 40009, BOB)]
    assert api_owner_ports(API, found) == [40001]
    facts = JournalFacts()  # no journal: the kernel's list is all there is
    assert own_runners(runner_candidates(facts, API, found), facts, API, ps(A), found).ports == (40001,)


def test_ollama_on_a_wildcard_address_is_found():
    found = [("0.0.0.0", 11434, OLLAMA), ("127.0.0.1", 40001, OLLAMA), ("127.0.0.2", 11434, BOB)]
    assert api_owner_ports(API, found) == [40001]

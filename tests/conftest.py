"""Fixtures shared across test files, and the hypothesis profiles.

Profiles (choose with HYPOTHESIS_PROFILE): "default" for local runs (random
seeds, hypothesis's 100 examples), "ci" with a fixed seed (derandomize) and a
bounded number of examples, so a CI failure reproduces and runs take the same time.
Neither has a per-example deadline: the parsers run under asyncio and a first
pydantic validation is slow, which is not what the properties are about.
"""

import importlib.util
import os

import pytest

if importlib.util.find_spec("hypothesis"):
    from hypothesis import settings

    settings.register_profile("default", max_examples=100, deadline=None)
    settings.register_profile("ci", derandomize=True, max_examples=200, deadline=None, print_blob=True)
    settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "default"))

if importlib.util.find_spec("ollama"):
    from tests.test_standin import launch  # noqa: F401 - a running stand-in Ollama, for the client tests


@pytest.fixture(autouse=True)
def _no_host_unit_records(monkeypatch):
    """The flow under test must not read this machine's own PID 1 records (/run/systemd/units): tests that
    want a record make one and point ollamactl.unitrecord.UNITS_DIR at it."""
    monkeypatch.setattr("ollamactl.unitrecord.UNITS_DIR", "/nonexistent/ollamactl-tests/units")

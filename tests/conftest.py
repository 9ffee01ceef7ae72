"""Fixtures shared across test files."""

import importlib.util

if importlib.util.find_spec("ollama"):
    from tests.test_standin import launch  # noqa: F401 - a running stand-in Ollama, for the client tests

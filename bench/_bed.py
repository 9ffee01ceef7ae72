"""A booted test container with ollamactl installed from its .deb, as an admin has it."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from tests import debbuild, testbed


@contextmanager
def booted(suite: str, deb: str | Path | None = None) -> Iterator[testbed.Container]:
    """Boot a fresh ``suite`` container with ``deb`` installed (default: build, or reuse by source hash)."""
    package = Path(deb).resolve() if deb else debbuild.build().deb
    with testbed.boot(suite, deb=package, log=lambda m: None) as c:
        yield c

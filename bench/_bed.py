"""A booted test container with ollamactl installed from its .deb, as an admin has it."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from tests import debbuild, testbed


@contextmanager
def booted(suite: str) -> Iterator[testbed.Container]:
    """Build (or reuse, by source hash) the .deb and boot a fresh ``suite`` container with it."""
    deb = debbuild.build().deb
    with testbed.boot(suite, deb=deb, log=lambda m: None) as c:
        yield c

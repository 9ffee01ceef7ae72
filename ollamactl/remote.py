"""Running a command on other hosts over ssh (issue 10, part 2): being written."""

from __future__ import annotations

from collections.abc import Sequence

from ollamactl.errors import UsageError


def run_on_hosts(hosts: Sequence[str], argv: Sequence[str], as_json: bool) -> int:
    """Run ``argv`` (without its --host options) on each host; the worst exit code."""
    raise UsageError("--host is not available yet")

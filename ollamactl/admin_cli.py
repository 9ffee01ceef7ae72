"""Admin-facing subcommands (``policy``, ``doctor``); registered by cli.build_parser.

Placeholder: the packaging issue fills this in.
"""

from __future__ import annotations

import argparse
from typing import Any


def add_parsers(sub: Any, common: argparse.ArgumentParser, *, epilog: str) -> None:
    """Register the admin subcommands on ``sub`` (argparse subparsers)."""

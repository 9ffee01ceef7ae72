"""One place for the pydantic 1.10 / 2.x differences.

Debian 12 ships pydantic 1.10 and Debian 13 ships 2.10; the project must run
on both.  Only the configuration is validated by pydantic (config.py, and only
for values its exact fast path cannot decide): it builds one model with
``create_model`` and ``Field`` limits, and goes through these helpers.
"""

from __future__ import annotations

import json
from typing import Any, TypeVar

import pydantic

V2 = pydantic.VERSION.startswith("2")
Field = pydantic.Field
ValidationError = pydantic.ValidationError
create_model = pydantic.create_model
M = TypeVar("M", bound=pydantic.BaseModel)


def validate(cls: type[M], data: dict[str, Any]) -> M:
    """Build a model from a dict, validating every field."""
    if V2:
        return cls.model_validate(data)
    return cls.parse_obj(data)


def to_dict(model: pydantic.BaseModel) -> dict[str, Any]:
    """Plain-Python dict of a model (same on 1.10 and 2.x for our field types)."""
    if V2:
        return model.model_dump(mode="json")
    return json.loads(model.json())


def errors(exc: ValidationError) -> list[tuple[str, str]]:
    """(field name, message) pairs from a ValidationError."""
    out = []
    for err in exc.errors():
        loc = err.get("loc") or ("?",)
        msg = str(err.get("msg", "invalid value"))
        if msg.startswith("Value error, "):  # v2 prefixes ValueError text
            msg = msg[len("Value error, ") :]
        out.append((str(loc[0]), msg))
    return out

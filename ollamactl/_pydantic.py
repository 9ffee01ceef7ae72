"""One place for the pydantic 1.10 / 2.x differences.

Debian 12 ships pydantic 1.10 and Debian 13 ships 2.10; the project must run
on both, so models use only the common subset and go through these helpers.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any, TypeVar

import pydantic

V2 = pydantic.VERSION.startswith("2")
BaseModel = pydantic.BaseModel
Field = pydantic.Field
ValidationError = pydantic.ValidationError
create_model = pydantic.create_model
M = TypeVar("M", bound=pydantic.BaseModel)


def field_check(*fields: str) -> Callable[[Any], Any]:
    """A field validator (runs after type coercion) on either major version."""
    if V2:
        return pydantic.field_validator(*fields)
    return pydantic.validator(*fields, allow_reuse=True)


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


def to_json(model: pydantic.BaseModel) -> str:
    """Stable JSON: same keys, order and spelling on both major versions."""
    return json.dumps(to_dict(model), sort_keys=True)


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

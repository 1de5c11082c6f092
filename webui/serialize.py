"""daemon.model dataclasses -> JSON values: field names as they are, tuples as lists, floats rounded.

The shapes are documented in webui/openapi.py; tests check that both name the same fields.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any

FLOAT_DIGITS = 3  # milliseconds, bytes per second to a thousandth: enough for any reader

JsonValue = None | bool | int | float | str | list[Any] | dict[str, Any]


def to_json(value: object) -> JsonValue:
    """A JSON-ready value for a model dataclass, or a list, tuple or dict of them."""
    if value is None or isinstance(value, bool | int | str):
        return value
    if isinstance(value, float):
        return round(value, FLOAT_DIGITS)
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: to_json(getattr(value, f.name)) for f in dataclasses.fields(value)}
    if isinstance(value, list | tuple):
        return [to_json(item) for item in value]
    if isinstance(value, Mapping):
        return {str(key): to_json(item) for key, item in value.items()}
    raise TypeError(f"no JSON form for {type(value).__name__}")

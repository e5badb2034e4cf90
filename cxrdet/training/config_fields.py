"""Typed fields of the trainers' JSON configs (detector and classifier).

Both configs are flat dataclasses of plain types written to ``config.json``. A hand-edited or
damaged file must fail when it is loaded, naming the file and the field with what was expected
and what was found, not with a TypeError deep inside training or inference.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

from cxrdet.errors import UserError

_KIND_WORDS = {"str": "a string", "bool": "true or false", "int": "a finite integer", "float": "a finite number",
               "list[int]": "a list of integers", "list[str]": "a list of strings",
               "list[float]": "a list of finite numbers"}
SHOWN_CHARS = 60  # a value longer than this is cut in the message (a config may hold huge lists)


def field_types(cls) -> dict[str, str]:
    """``{field name: annotation}`` of a dataclass written with ``from __future__ import annotations``."""
    return {f.name: str(f.type) for f in dataclasses.fields(cls)}


def typed_values(values: Any, types: dict[str, str], source: str, what: str) -> dict[str, Any]:
    """``values`` (a parsed JSON object) with each value checked against ``types``.

    Returns the values to pass to the dataclass (ints where floats are expected become floats).
    Raises UserError for a document that is not an object, an unknown key or a wrong type.
    """
    if not isinstance(values, dict):
        raise UserError(f"{source}: expected a JSON object of {what} settings, found {type(values).__name__}")
    unknown = sorted(set(values) - set(types))
    if unknown:
        shown = repr(unknown) if len(repr(unknown)) <= 4 * SHOWN_CHARS else repr(unknown)[:4 * SHOWN_CHARS] + "..."
        raise UserError(f"{source}: unknown {what} config keys {shown}; expected a subset of {sorted(types)}")
    return {k: typed(k, v, types[k], source) for k, v in values.items()}


def _number(x: Any, integer: bool) -> bool:
    ok = isinstance(x, int) if integer else isinstance(x, (int, float))
    # bool is an int subclass, and JSON's true is no count; inf/NaN (Python's JSON reads them) are no setting
    return ok and not isinstance(x, bool) and math.isfinite(x)


def typed(name: str, value: Any, kind: str, source: str) -> Any:
    """``value`` as the field's type; a UserError naming the field, expected vs found, otherwise."""
    if kind == "str":
        ok = isinstance(value, str)
    elif kind == "bool":
        ok = isinstance(value, bool)
    elif kind in ("int", "float"):
        ok = _number(value, kind == "int")
        value = float(value) if ok and kind == "float" else value
    elif kind == "list[str]":
        ok = isinstance(value, list) and all(isinstance(x, str) for x in value)
    elif kind in ("list[int]", "list[float]"):
        integer = kind == "list[int]"
        ok = isinstance(value, list) and all(_number(x, integer) for x in value)
        value = [x if integer else float(x) for x in value] if ok else value
    else:  # a field type this module does not know: a programming error, not the file's
        raise TypeError(f"field {name}: no JSON check for type {kind}")
    if not ok:
        shown = repr(value) if len(repr(value)) <= SHOWN_CHARS else repr(value)[:SHOWN_CHARS - 3] + "..."
        raise UserError(f"{source}: {name} must be {_KIND_WORDS[kind]}, found {type(value).__name__} {shown}")
    return value

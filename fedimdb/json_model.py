"""JSON files as typed dataclasses: one writer and one checked reader for every record fedimdb keeps.

A record is a dataclass whose fields are JSON values, StrEnums, other such dataclasses, lists and
string-keyed dicts of them, or ``X | None``. :func:`to_json` writes one (keys are the field names in
kebab case; fields that are None are left out) and :func:`from_json` reads it back, checking every
field's JSON type on the way: :class:`RecordError` names the first field that is missing or of the
wrong type, with its path (``repeats.0.attempts[0].started``).
"""

from __future__ import annotations

import dataclasses
import types
from enum import StrEnum
from typing import Any, TypeVar, Union, get_args, get_origin, get_type_hints

T = TypeVar("T")


class RecordError(ValueError):
    """A JSON file's contents do not fit its model."""


def to_json(record: Any) -> Any:
    """The JSON value of a record (a dataclass instance), or of any value a record holds."""
    return _to_json(record)


def from_json(cls: type[T], value: Any) -> T:
    """``value`` (parsed JSON) as record ``cls``; RecordError names what does not fit."""
    return _read_dataclass(cls, value, "")


def _key(name: str) -> str:
    """A field's key in the JSON file."""
    return name.replace("_", "-")


def _to_json(value: Any) -> Any:
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {
            _key(f.name): _to_json(v) for f in dataclasses.fields(value) if (v := getattr(value, f.name)) is not None
        }
    if isinstance(value, dict):
        return {k: _to_json(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_to_json(v) for v in value]
    return value


JSON_NAMES = {dict: "object", list: "array", str: "string", int: "integer", float: "number", bool: "boolean"}


def _json_name(value: Any) -> str:
    """What a parsed JSON value is, in JSON's words."""
    if value is None:
        return "null"
    return next((name for kind, name in reversed(JSON_NAMES.items()) if isinstance(value, kind)), type(value).__name__)


def _read(tp: Any, value: Any, where: str) -> Any:
    """``value`` as type ``tp``, checked; RecordError names ``where`` it does not fit."""
    origin, args = get_origin(tp), get_args(tp)
    if origin in (Union, types.UnionType):
        return None if value is None else _read(next(a for a in args if a is not type(None)), value, where)
    if isinstance(tp, type) and dataclasses.is_dataclass(tp):
        return _read_dataclass(tp, value, where)
    if origin in (list, dict) or tp in JSON_NAMES:
        kind = origin or tp
        if not _fits(kind, value):
            raise RecordError(f"{where} is a JSON {_json_name(value)}, not {_article(JSON_NAMES[kind])}")
        if origin is list:
            return [_read(args[0], v, f"{where}[{i}]") for i, v in enumerate(value)]
        if origin is dict:
            return {k: _read(args[1], v, f"{where}.{k}") for k, v in value.items()}
        return value
    if isinstance(tp, type) and issubclass(tp, StrEnum):
        if value not in set(tp):
            raise RecordError(f"{where} is {value!r}, not one of {', '.join(tp)}")
        return tp(value)
    return value  # Any


def _fits(kind: type, value: Any) -> bool:
    """Whether a parsed JSON value is of Python type ``kind`` (an integer is a number; a boolean only a boolean)."""
    if isinstance(value, bool):
        return kind is bool
    return isinstance(value, (int, float)) if kind is float else isinstance(value, kind)


def _read_dataclass(cls: type[T], value: Any, where: str) -> T:
    if not isinstance(value, dict):
        raise RecordError(f"{where or 'the file'} is a JSON {_json_name(value)}, not an object")
    hints = get_type_hints(cls)
    kwargs: dict[str, Any] = {}
    for f in dataclasses.fields(cls):  # type: ignore[arg-type]
        key, path = _key(f.name), f"{where}.{_key(f.name)}" if where else _key(f.name)
        if key in value:
            kwargs[f.name] = _read(hints[f.name], value[key], path)
        elif f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
            raise RecordError(f"{path} is missing")
    return cls(**kwargs)


def _article(name: str) -> str:
    return f"an {name}" if name[0] in "aeiou" else f"a {name}"

"""experiment.json as typed dataclasses: what an experiment, each repeat and each attempt record.

:class:`ExperimentRecord` is the one model of the file. :meth:`ExperimentRecord.to_json` writes it
(keys are the field names in kebab case; unset optional fields are left out) and
:meth:`ExperimentRecord.from_json` reads it back, checking every field's JSON type on the way:
:class:`RecordError` names the first field that is missing or of the wrong type.
"""

from __future__ import annotations

import dataclasses
import types
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any, TypeVar, Union, get_args, get_origin, get_type_hints

EXPERIMENT_FILE = "experiment.json"
T = TypeVar("T")


class ExperimentStatus(StrEnum):
    """The experiment's status."""

    RUNNING = "running"
    COMPLETED = "completed"  # every repeat verified
    STOPPED = "stopped"  # a repeat failed and --on-failure stop ended the experiment
    INCOMPLETE = "incomplete"  # some repeats are not verified: --resume runs them
    INTERRUPTED = "interrupted"  # Ctrl-C or SIGTERM
    FAILED = "failed"  # the orchestrator itself failed


class RepeatStatus(StrEnum):
    """A repeat's status, and each of its attempts'."""

    RUNNING = "running"
    VERIFIED = "verified"
    FAILED = "failed"
    INTERRUPTED = "interrupted"
    CORRUPT = "corrupt"  # verified once, its artifacts no longer match their hashes: set aside, run again
    ABANDONED = "abandoned"  # its orchestrator was killed mid-attempt; the stack it left was stopped on --resume


class RecordError(ValueError):
    """experiment.json's contents do not fit the model."""


@dataclass
class Attempt:
    """One attempt at a repeat, on a stack of its own."""

    attempt: int
    started: str
    status: RepeatStatus = RepeatStatus.RUNNING
    stack: dict[str, Any] | None = None  # what stops the stack should this orchestrator be killed
    seconds: float | None = None
    error: str | None = None
    set_aside: str | None = None  # the folder a failed attempt's files were moved to
    leftovers: str | None = None  # what --resume did about the stack an abandoned attempt left


@dataclass
class Repeat:
    """One repeat (seed + k) and its attempts."""

    seed: int
    attempts: list[Attempt] = field(default_factory=list)
    status: RepeatStatus | None = None
    seconds: float | None = None
    run_id: int | None = None
    final_accuracy: float | None = None
    final_loss: float | None = None
    error: str | None = None
    moved_to: str | None = None  # where a corrupt repeat's folder went
    set_aside: list[str] = field(default_factory=list)  # unfinished folders a killed orchestrator left


@dataclass
class Orchestrator:
    """The process that runs (or ran) the experiment."""

    pid: int
    host: str


@dataclass
class ExperimentRecord:
    """The whole of experiment.json.

    ``experiment``, ``config`` and ``data`` are the three settings' ``as_dict()`` (fedimdb/config.py
    validates them when a resume reads them); ``repeats`` is keyed by the repeat's number as a string.
    """

    experiment_id: str
    backend: str
    created: str
    experiment: dict[str, Any]
    config: dict[str, Any]
    data: dict[str, Any]
    repeats: dict[str, Repeat]
    seeds: list[int] = field(default_factory=list)
    versions: dict[str, Any] = field(default_factory=dict)
    status: ExperimentStatus | None = None
    orchestrator: Orchestrator | None = None
    ended: str | None = None
    error: str | None = None

    def to_json(self) -> dict[str, Any]:
        """The JSON object of experiment.json."""
        return _to_json(self)

    @classmethod
    def from_json(cls, value: Any) -> ExperimentRecord:
        """The record in a parsed experiment.json; RecordError names what does not fit."""
        return _read(cls, value, "")


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

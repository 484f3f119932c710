"""Every setting, every value: generated with hypothesis over the whole schema of fedimdb/config.py.

A value inside a setting's domain is accepted and comes back unchanged through ``.env``, the command
line (``--set`` and the named options) and Flower's run config (the TOML ``flwr run`` is given,
read back by Flower's own parser). A value outside it makes ``orchestrate.py`` exit 2 with one
line naming the setting, before anything is written to ``--out``.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import tomli_w
from flwr.common.config import parse_config_args
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from fedimdb import cli
from fedimdb.config import MODEL_PRESETS, DataConfig, ExperimentConfig, RunConfig, Settings, config_key, env_name

CLASSES = (RunConfig, DataConfig, ExperimentConfig)
FIELDS = [(cls, f) for cls in CLASSES for f in dataclasses.fields(cls)]
FREE_TEXT = {"held_out_dir", "output_dir", "continue_from", "shards_dir"}  # any text: a path the deployment uses
OPTIONS = {  # the named options of orchestrate.py besides --set (fedimdb/cli.py)
    "num_rounds": "--rounds",
    "num_clients": "--clients",
    "repeats": "--repeats",
    "seed": "--seed",
    "alpha": "--alpha",
    "retries": "--retries",
    "metrics_port": "--metrics-port",
    "strategy": "--strategy",
    "partitioner": "--partitioner",
}
# Settings whose values other than the default are valid only beside another's (fedimdb/config.py's cross-field
# checks): that one goes with them.
COMPANIONS: dict[str, dict[str, Any]] = {"dp": {"min_reply_fraction": 1.0}}
RUN_FOR_EVER = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])


def _bounds(f: dataclasses.Field) -> tuple[Any, Any, bool]:
    meta = f.metadata
    return meta["low"], meta["high"], meta["low_open"]


def valid_values(f: dataclasses.Field) -> st.SearchStrategy[Any]:
    """Values inside a setting's declared domain."""
    kind, (low, high, low_open) = type(f.default), _bounds(f)
    if f.metadata["choices"]:
        return st.sampled_from(f.metadata["choices"])
    if kind is bool:
        return st.booleans()
    if kind is int:
        return st.integers(int(low) + low_open, int(high))
    if kind is float:
        return st.floats(low, high, exclude_min=low_open, allow_nan=False, allow_infinity=False)
    if f.name == "model":
        return st.sampled_from(MODEL_PRESETS)
    if f.name in FREE_TEXT:
        chars = st.characters(min_codepoint=33, max_codepoint=126, exclude_characters="\"'\\#$`")
        return st.text(chars, min_size=1 if f.default else 0, max_size=40)  # empty: the default (refused if it has one)
    return st.just(f.default)


def invalid_values(f: dataclasses.Field, tmp: Path) -> st.SearchStrategy[str] | None:
    """Text outside a setting's domain, as a user would type it; None for free text."""
    kind, (low, high, low_open) = type(f.default), _bounds(f)
    if f.metadata["choices"]:
        return st.text(st.characters(min_codepoint=97, max_codepoint=122), min_size=1).filter(
            lambda v: v not in f.metadata["choices"]
        )
    if kind is bool:
        return st.sampled_from(["maybe", "2", "tru", "-1"])
    if kind in (int, float):
        below = st.floats(max_value=low, exclude_max=not low_open, allow_nan=False, allow_infinity=False)
        above = st.floats(min_value=high, exclude_min=True, allow_nan=False, allow_infinity=False)
        words = ["nan", "inf", "-inf", "ten", "1e"] + (["1.5", "2.0e0"] if kind is int else [])
        numbers = st.one_of(below, above).map(lambda v: str(int(v)) if kind is int and v.is_integer() else repr(v))
        return st.one_of(numbers, st.sampled_from(words)).filter(lambda t: not _inside(f, t))
    paths = {"model": "./no-such-model", "data_source": "./no-such-folder", "app_dir": str(tmp)}
    return st.just(paths[f.name]) if f.name in paths else None


def _inside(f: dataclasses.Field, text: str) -> bool:
    """Whether ``text`` is, after all, a valid value (an int-valued float for an int setting, a bound itself)."""
    try:
        value = float(text)
    except ValueError:
        return False
    if not math.isfinite(value) or (type(f.default) is int and not value.is_integer()):
        return False
    low, high, low_open = _bounds(f)
    return (value > low if low_open else value >= low) and value <= high


def _text(value: Any) -> str:
    return repr(value) if isinstance(value, float) else str(value).lower() if isinstance(value, bool) else str(value)


def _cli_settings(tmp: Path, *argv: str) -> Settings:
    """Settings as orchestrate.py reads them from ``argv``, the settings file being tmp/empty.env."""
    return cli.load_settings(cli.build_parser().parse_args(["--env-file", str(tmp / "empty.env"), *argv]))


def _where(cls: type) -> Callable[[Settings], Any]:
    return {RunConfig: lambda s: s.run, DataConfig: lambda s: s.data, ExperimentConfig: lambda s: s.experiment}[cls]


@pytest.fixture
def tmp(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A folder with an empty settings file; no FEDIMDB_ variable of this process's environment counts."""
    for f in FIELDS:
        monkeypatch.delenv(env_name(f[1].name), raising=False)
    (tmp_path / "empty.env").write_text("")
    return tmp_path


def test_every_number_has_a_finite_range() -> None:
    for cls, f in FIELDS:
        if type(f.default) in (int, float):
            low, high, _ = _bounds(f)
            assert low is not None and high is not None, f"{cls.__name__}.{f.name} declares no low or high"


@RUN_FOR_EVER
@given(data=st.data())
def test_a_valid_value_round_trips_through_env_command_line_and_flower(tmp: Path, data: st.DataObject) -> None:
    cls, f = data.draw(st.sampled_from(FIELDS), label="setting")
    value = data.draw(valid_values(f), label="value")
    key, text = config_key(f.name), _text(value)
    companions = COMPANIONS.get(f.name, {}) if value != f.default else {}
    env_file = tmp / "values.env"
    env_file.write_text("".join(f"{env_name(n)}='{_text(v)}'\n" for n, v in {f.name: value, **companions}.items()))
    assert getattr(cls.from_env(env_file, environ={}), f.name) == value
    argv = [OPTIONS[f.name], text] if f.name in OPTIONS else ["--set", f"{key}={text}"] if cls is RunConfig else []
    if argv:
        fit = "FEDIMDB_NUM_PARTITIONS=1000\n" if f.name == "num_clients" else ""  # clients <= shards
        (tmp / "empty.env").write_text(fit)
        argv += [a for n, v in companions.items() for a in ("--set", f"{config_key(n)}={_text(v)}")]
        assert getattr(_where(cls)(_cli_settings(tmp, *argv)), f.name) == value
    if cls is RunConfig:
        overrides = tmp / "run-config.toml"  # what fedimdb/deploy/flwr_cli.py gives flwr run
        mapping = {key: value, **{config_key(n): v for n, v in companions.items()}}
        overrides.write_text(tomli_w.dumps(RunConfig.from_mapping(mapping).as_dict()))
        assert getattr(RunConfig.from_mapping(parse_config_args([str(overrides)])), f.name) == value


@RUN_FOR_EVER
@given(data=st.data())
def test_an_invalid_value_exits_2_in_one_line_naming_the_setting(
    tmp: Path, data: st.DataObject, capsys: pytest.CaptureFixture[str]
) -> None:
    _, f = data.draw(st.sampled_from([(c, f) for c, f in FIELDS if invalid_values(f, tmp) is not None]))
    text = data.draw(invalid_values(f, tmp), label="value")  # type: ignore[arg-type]
    key = config_key(f.name)
    env_file = tmp / "values.env"
    env_file.write_text(f"{env_name(f.name)}='{text}'\n")
    out = tmp / "out"
    backend = [] if f.name == "backend" else ["--backend", "local"]  # the option would override the file
    code = cli.main([*backend, "--env-file", str(env_file), "--out", str(out)])
    err = capsys.readouterr().err
    assert code == 2, (key, text, err)
    lines = err.strip().splitlines()
    assert len(lines) == 1 and key in lines[0] and "Traceback" not in err, (key, text, err)
    assert not out.exists() or not any(out.iterdir()), f"{key}={text!r} left {list(out.iterdir())}"

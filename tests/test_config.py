"""The one validated configuration: pyproject, .env and code agree; bad values fail clearly."""

from __future__ import annotations

import dataclasses
import re
import tomllib
from pathlib import Path

import pytest
from dotenv import dotenv_values

from fedimdb.config import ConfigError, DataConfig, ExperimentConfig, RunConfig, check_clients_fit, env_name

ROOT = Path(__file__).resolve().parents[1]


def test_pyproject_run_config_matches_the_declared_defaults() -> None:
    app_config = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["flwr"]["app"]["config"]
    assert app_config == RunConfig().as_dict()


def test_every_setting_is_in_dotenv_and_every_dotenv_key_is_known_and_valid() -> None:
    known = {env_name(f.name) for cls in (RunConfig, DataConfig, ExperimentConfig) for f in dataclasses.fields(cls)}
    text = (ROOT / ".env").read_text()
    values = {k for k in dotenv_values(ROOT / ".env") if k.startswith("FEDIMDB_")}  # others are Compose's
    assert values <= known, values - known
    documented = values | set(re.findall(r"^# (FEDIMDB_[A-Z_]+)=$", text, re.MULTILINE))  # set by the deployment
    assert documented == known, known - documented
    RunConfig.from_env(ROOT / ".env", environ={})
    DataConfig.from_env(ROOT / ".env", environ={})
    ExperimentConfig.from_env(ROOT / ".env", environ={})


def test_dotenv_repeats_the_declared_defaults() -> None:
    """.env is the defaults written out (the one schema is fedimdb/config.py): a changed default fails here."""
    for cls in (RunConfig, DataConfig, ExperimentConfig):
        declared, written = cls(), cls.from_env(ROOT / ".env", environ={})
        for f in dataclasses.fields(cls):
            a, b = getattr(declared, f.name), getattr(written, f.name)
            same = Path(a) == Path(b) if f.name.endswith("_dir") else a == b  # Compose wants ./ before a path
            assert same, f"{env_name(f.name)}: .env says {b!r}, fedimdb/config.py {a!r}"


def test_precedence_defaults_file_environment_overrides(tmp_path: Path) -> None:
    env_file = tmp_path / ".env"
    env_file.write_text("FEDIMDB_NUM_ROUNDS=4\nFEDIMDB_BATCH_SIZE=8\nFEDIMDB_SEED=3\n")
    cfg = RunConfig.from_env(
        env_file, environ={"FEDIMDB_BATCH_SIZE": "32", "FEDIMDB_SEED": "5"}, overrides={"seed": 9, "model": None}
    )
    assert (cfg.num_rounds, cfg.batch_size, cfg.seed, cfg.model) == (4, 32, 9, "minilm")


def test_run_config_values_from_flower_are_typed() -> None:
    cfg = RunConfig.from_mapping({"num-rounds": 3, "learning-rate": 1e-4, "final-eval-full": True, "model": "tiny"})
    assert cfg.num_rounds == 3 and cfg.learning_rate == 1e-4 and cfg.final_eval_full is True


@pytest.mark.parametrize(
    ("values", "message"),
    [
        ({"num-rounds": 0}, "num-rounds: 0 is out of range; set it >= 1"),
        ({"num-rounds": "ten"}, "num-rounds .*'ten' is not a valid int"),
        ({"strategy": "fedsgd"}, "strategy: unknown value 'fedsgd'; choose one of fedavg"),
        ({"model": "no such model"}, "model: unknown model 'no such model'; use a preset"),
        ({"fraction-train": 0.0}, "fraction-train: 0.0 is out of range; set it > 0.0"),
        ({"num-rouns": 3}, "num-rouns .*unknown setting"),
        ({"final-eval-full": "maybe"}, "final-eval-full .*'maybe' is not a valid bool"),
        ({"dp": "server-fixed", "min-reply-fraction": 1.0, "strategy": "krum"}, "use strategy=fedavg or fedprox"),
        ({"dp": "client-fixed"}, "set min-reply-fraction=1"),
        ({"dp": "client-fixed", "min-reply-fraction": 1.0, "weight-transport": "int8"}, "or dp=server-fixed"),
        ({"dp": "server-fixed", "min-reply-fraction": 1.0, "dp-delta": 0.2}, "set dp-delta below 0.1"),
        ({"dp": "server-fixed", "dp-noise-multiplier": 0}, "dp-noise-multiplier: 0.0 is out of range; set it > 0.0"),
    ],
)
def test_bad_run_values_name_the_setting_and_the_fix(values: dict, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        RunConfig.from_mapping(values)


def test_bad_data_values(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"alpha: 0.0 is out of range; set it > 0"):
        DataConfig.from_mapping({"alpha": 0, "data-source": str(tmp_path)})
    with pytest.raises(ConfigError, match=r"data-source: folder .*does not exist"):
        DataConfig.from_mapping({"data-source": str(tmp_path / "missing")})
    assert DataConfig.from_mapping({"data-source": "stanfordnlp/imdb"}).data_source == "stanfordnlp/imdb"


def test_an_app_dir_must_hold_a_flower_app(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"app-dir: .* holds no pyproject.toml; point it at a Flower App's folder"):
        ExperimentConfig.from_mapping({"app-dir": str(tmp_path)})
    (tmp_path / "pyproject.toml").write_text("")
    assert ExperimentConfig.from_mapping({"app-dir": str(tmp_path)}).app_dir == str(tmp_path)


def test_more_clients_than_shards_is_refused() -> None:
    with pytest.raises(ConfigError, match="num-clients: 12 clients but only 10 shards"):
        check_clients_fit(RunConfig(num_clients=12), 10)


def test_the_configuration_page_lists_every_setting_with_its_declared_default() -> None:
    """docs/configuration.md's settings table against fedimdb/config.py: a changed default fails here."""
    text = (ROOT / "docs" / "configuration.md").read_text()
    rows = re.findall(r"^\| (`[^|]+`) \| ([^|]+) \|", text, re.MULTILINE)
    listed: dict[str, str] = {}
    for names, defaults in rows:
        keys = re.findall(r"`([a-z0-9-]+)`", names)
        values = (
            [v.strip().strip("`") for v in defaults.split(" / ")] if len(keys) > 1 else [defaults.strip().strip("`")]
        )
        listed.update(zip(keys, values if len(values) == len(keys) else values * len(keys), strict=True))
    for cls in (RunConfig, DataConfig, ExperimentConfig):
        declared = cls().as_dict()
        for key, value in declared.items():
            assert key in listed, f"docs/configuration.md has no row for {key}"
            if listed[key] == "set per run":
                continue
            read = cls.from_mapping({key: "" if listed[key] == "empty" else listed[key]}).as_dict()[key]
            same = Path(read) == Path(value) if key.endswith("-dir") else read == value
            assert same, f"{key}: docs/configuration.md says {listed[key]}, fedimdb/config.py {value!r}"


def test_an_empty_value_for_a_setting_with_a_default_is_refused_naming_it() -> None:
    """``--shards-dir ""`` would write shards into the working folder; empty means "use the default" only
    where the default is empty (continue-from, app-dir ...)."""
    with pytest.raises(ConfigError, match="shards-dir: empty; leave it out to use the default 'data/shards'"):
        DataConfig.from_mapping({"shards-dir": ""})
    assert RunConfig.from_mapping({"continue-from": ""}).continue_from == ""

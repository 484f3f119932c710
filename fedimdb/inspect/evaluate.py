"""Any archived round's global model, evaluated again: on the rows the server evaluated, or on a Parquet file.

The server evaluated each round's global model on the first ``eval-rows`` reviews of the held-out
test split with :func:`fedimdb.training.evaluate` (``server/server_app.py``, ``RoundEnd.evaluate``);
:func:`evaluate_round` does the same with the same arguments, so on those rows it gives the
accuracy the run recorded, bit for bit (on the same kind of device).
"""

from __future__ import annotations

import re
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from fedimdb.artifacts import FINAL_WEIGHTS, ROUNDS_FILE, RUN_FILE, WEIGHTS_DIR, read_csv, read_json
from fedimdb.config import ConfigError
from fedimdb.data import LABEL_NAMES, MANIFEST, Examples, read_split
from fedimdb.inspect.report import InspectError
from fedimdb.model import load_global_model, pick_device
from fedimdb.training import evaluate, load_state

if TYPE_CHECKING:
    from transformers import PreTrainedModel, PreTrainedTokenizerBase

INITIAL_EVALUATION = "initial-evaluation"  # run.json: the evaluation of round 0 (the initial model)
DATA_RECIPE = "data"  # run.json: the recipe of the shards the run used, as the held-out manifest has it
AUTO_DEVICE, CPU = "auto", "cpu"
_ROUND_FILE = re.compile(r"^round-(\d+)\.safetensors$")


@dataclass(frozen=True)
class EvalSettings:
    """The run.json config values the server's evaluation used."""

    batch_size: int
    max_length: int
    eval_rows: int
    held_out_dir: str
    device: str

    @classmethod
    def of(cls, config: dict[str, Any]) -> EvalSettings:
        keys = ("batch-size", "max-length", "eval-rows", "held-out-dir", "device")
        missing = [k for k in keys if k not in config]
        if missing:
            raise InspectError(f"{RUN_FILE}: its config has no {', '.join(missing)}; it is not a fedimdb run's")
        b, m, e, h, d = (config[k] for k in keys)
        return cls(int(b), int(m), int(e), str(h), str(d))


@dataclass(frozen=True)
class EvalRows:
    """The rows to evaluate, what they are, and whether they are the ones the server evaluated."""

    examples: Examples
    source: str
    same_rows: bool


@dataclass(frozen=True)
class EvalOutcome:
    """A round's global model evaluated again, beside what the run recorded for that round."""

    round: int
    accuracy: float
    loss: float
    examples: int
    recorded_accuracy: float | None  # rounds.csv; round 0: run.json's initial evaluation; None if not recorded
    recorded_loss: float | None
    source: str  # what was evaluated
    same_rows: bool  # the rows the server evaluated: the recorded figures are comparable
    device: str

    @property
    def matches(self) -> bool | None:
        """Whether the accuracy equals the recorded one exactly; None when they are not comparable."""
        if not self.same_rows or self.recorded_accuracy is None:
            return None
        return self.accuracy == self.recorded_accuracy

    def as_dict(self) -> dict[str, Any]:
        return {**asdict(self), "matches": self.matches}


def archived_rounds(run_dir: Path) -> list[int]:
    """The rounds whose global weights the run archived (weights/round-NNN.safetensors)."""
    folder = run_dir / WEIGHTS_DIR
    found = [int(m.group(1)) for p in folder.iterdir() if (m := _ROUND_FILE.match(p.name))] if folder.is_dir() else []
    return sorted(found)


def check_round(run_dir: Path, server_round: int) -> None:
    """InspectError naming the rounds there are when ``server_round`` has no archived weights."""
    rounds = archived_rounds(run_dir)
    if not rounds:
        raise InspectError(
            f"{run_dir}: no archived global weights ({WEIGHTS_DIR}/round-NNN.safetensors); "
            "give a run folder whose run got past its start"
        )
    if server_round not in rounds:
        span = f"{rounds[0]}..{rounds[-1]}" if rounds == list(range(rounds[0], rounds[-1] + 1)) else str(rounds)
        raise InspectError(
            f"round {server_round} is out of range: {run_dir} has the global weights of rounds "
            f"{span}; pass --round with one of those"
        )


def read_run_meta(run_dir: Path) -> dict[str, Any]:
    """run.json of a run folder; InspectError naming the fix when there is none."""
    if not run_dir.is_dir():
        raise InspectError(f"{run_dir}: no such folder; give a run folder (an experiment's repeat-K)")
    if not (run_dir / RUN_FILE).is_file():
        raise InspectError(f"{run_dir}: no {RUN_FILE}, not a run folder; give a run folder (an experiment's repeat-K)")
    return read_json(run_dir / RUN_FILE)


def recorded(run_dir: Path, meta: dict[str, Any], server_round: int) -> tuple[float | None, float | None]:
    """(accuracy, loss) the run recorded for ``server_round``: run.json's initial evaluation for 0, else rounds.csv."""
    if server_round == 0:
        initial = meta.get(INITIAL_EVALUATION) or {}
        return initial.get("accuracy"), initial.get("loss")
    if not (run_dir / ROUNDS_FILE).is_file():
        return None, None
    rows = [r for r in read_csv(run_dir / ROUNDS_FILE) if r["round"] == str(server_round) and r["central_accuracy"]]
    return (float(rows[-1]["central_accuracy"]), float(rows[-1]["central_loss"])) if rows else (None, None)


def held_out_rows(settings: EvalSettings, meta: dict[str, Any], held_out: Path | None) -> tuple[Examples, Path]:
    """The held-out test split the server read (all rows), from ``held_out`` or from where the run had it."""
    if held_out is not None and not (held_out / MANIFEST).is_file():
        raise InspectError(
            f"--held-out {held_out}: no {MANIFEST}; give the prepared shards' server folder "
            "(SHARDS_DIR/server), or --data FILE.parquet"
        )
    folder = held_out or (Path(settings.held_out_dir) if settings.held_out_dir else None)
    if folder is None or not (folder / MANIFEST).is_file():
        raise InspectError(
            f"the run's held-out set {folder or '(not recorded)'} is not here (a container's path?); "
            "pass --held-out SHARDS_DIR/server, or --data FILE.parquet"
        )
    recipe = read_json(folder / MANIFEST).get("recipe")
    if held_out is not None and DATA_RECIPE in meta and recipe != meta[DATA_RECIPE]:
        raise InspectError(
            f"--held-out {folder}: prepared with other settings than the run's shards "
            f"({RUN_FILE}: data); pass the run's SHARDS_DIR/server, or --data FILE.parquet"
        )
    return read_split(folder, "test"), folder


def parquet_rows(path: Path) -> Examples:
    """A Parquet file's text and label columns (labels 0 and 1); InspectError naming the fix otherwise."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    fix = "give a Parquet file with columns text (strings) and label (0 negative, 1 positive)"
    if not path.is_file():
        raise InspectError(f"--data {path}: no such file; {fix}")
    try:
        table = pq.read_table(path, columns=["text", "label"])
    except (OSError, KeyError, pa.ArrowException) as exc:
        raise InspectError(f"--data {path}: unreadable ({exc}); {fix}") from None
    texts, labels = table.column("text").to_pylist(), table.column("label").to_pylist()
    if not set(labels) <= set(LABEL_NAMES) or any(not isinstance(t, str) for t in texts):
        raise InspectError(f"--data {path}: labels {sorted(set(labels), key=str)} or texts not strings; {fix}")
    return Examples(texts, [int(y) for y in labels])


def eval_device(settings: EvalSettings, device: str | None) -> Any:
    """``device`` if given, else the run's device, with ``auto`` read as cpu (where the server evaluates)."""
    name = device or (CPU if settings.device == AUTO_DEVICE else settings.device)
    try:
        return pick_device(name)
    except ConfigError as exc:
        raise InspectError(f"{exc}; or pass --device cpu") from None


def load_round_model(run_dir: Path, server_round: int) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    """(model, tokenizer) of round ``server_round``: from weights/ (config, tokenizer), with that round's weights."""
    from safetensors.torch import load_file
    from transformers import AutoConfig, AutoModelForSequenceClassification, AutoTokenizer

    weights = run_dir / WEIGHTS_DIR
    if not (weights / "config.json").is_file():
        raise InspectError(f"{weights}: no config.json (the model's); the run folder is incomplete, copy all of it")
    tokenizer = AutoTokenizer.from_pretrained(weights)
    if (weights / FINAL_WEIGHTS).is_file():
        return load_global_model(run_dir, server_round), tokenizer
    model = AutoModelForSequenceClassification.from_config(AutoConfig.from_pretrained(weights))  # a run cut short
    load_state(model, load_file(weights / f"round-{server_round:03d}.safetensors"))
    return model, tokenizer


def evaluate_round(
    run_dir: Path,
    server_round: int,
    data: Path | None = None,
    rows: int | None = None,
    *,
    held_out: Path | None = None,
    device: str | None = None,
) -> EvalOutcome:
    """Evaluate round ``server_round``'s global model of ``run_dir`` again.

    Parameters
    ----------
    data : Path, optional
        A Parquet file with ``text`` and ``label`` columns; default: the run's held-out test split.
    rows : int, optional
        Evaluate the first ``rows`` rows; default: ``eval-rows`` of the held-out split (the rows the
        server evaluated each round), all rows of ``data``.
    held_out : Path, optional
        The run's held-out folder (SHARDS_DIR/server) when it is not where the run had it.
    device : str, optional
        ``cpu`` or ``cuda``; default: the run's ``device``, ``auto`` read as cpu.
    """
    run_dir = Path(run_dir)
    meta = read_run_meta(run_dir)
    check_round(run_dir, server_round)
    settings = EvalSettings.of(meta.get("config", {}))
    chosen = choose_rows(settings, meta, data, rows, held_out)
    torch_device = eval_device(settings, device)
    model, tokenizer = load_round_model(run_dir, server_round)
    res = evaluate(
        model,
        tokenizer,
        chosen.examples,
        batch_size=settings.batch_size,
        max_length=settings.max_length,
        device=torch_device,
    )
    accuracy, loss = recorded(run_dir, meta, server_round)
    return EvalOutcome(
        server_round,
        res.accuracy,
        res.loss,
        res.num_examples,
        accuracy,
        loss,
        chosen.source,
        chosen.same_rows,
        str(torch_device),
    )


def choose_rows(
    settings: EvalSettings, meta: dict[str, Any], data: Path | None, rows: int | None, held_out: Path | None
) -> EvalRows:
    """The rows to evaluate: the first ``rows`` of ``data``, or of the held-out split (default: eval-rows)."""
    if rows is not None and rows < 1:
        raise InspectError(f"rows: {rows}; give a number of rows >= 1 (or none: the rows the server evaluated)")
    if data is not None:
        return EvalRows(parquet_rows(Path(data)).head(rows or 0), str(data), same_rows=False)
    split, folder = held_out_rows(settings, meta, held_out)
    examples = split.head(rows or settings.eval_rows)
    return EvalRows(examples, f"the first {len(examples)} rows of {folder}/test", rows in (None, settings.eval_rows))

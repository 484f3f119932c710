"""Continuing a failed run from its last archived round, exactly.

After every round the ServerApp archives, besides the global model, the server's state of that
round (:func:`server_state`): the travelling tensors as aggregated (LoRA adapters, or the model's
trained part) and the strategy's own state (FedAdam/FedYogi/FedAdagrad moments, FedAvgM momentum).
Only the latest round's state file is kept. A later attempt given the failed run's folder
(``continue-from``) reads it back (:func:`read_continuation`): the state, the rows of every table
up to that round, the files to carry over, and the whole model the weight statistics compare the
next round with. With the same seed on CPU, the continued run's weights and rows are those of a
run that never stopped: clients seed from the seed, the round and the partition.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from flwr.app import Array, ArrayRecord
from flwr.serverapp.strategy import Strategy

from fedimdb.artifacts import (
    CLIENT_UPDATES_FILE,
    CLIENTS_FILE,
    ROUNDS_FILE,
    STATE_DIR,
    WEIGHT_STATS_FILE,
    ArtifactError,
    continuable_round,
    read_csv,
    round_weights_name,
    server_state_name,
    verify_run,
)
from fedimdb.config import ConfigError
from fedimdb.run_record import ContinuedFrom, RunRecord

STRATEGY_STATE = ("m_t", "v_t", "momentum_vector", "current_arrays")
"""Attributes of Flower's strategies that carry over from round to round (None or absent: nothing to keep)."""
ARRAYS, STRATEGY = "arrays", "strategy"  # key prefixes in a state file
TABLES = (ROUNDS_FILE, CLIENTS_FILE, WEIGHT_STATS_FILE, CLIENT_UPDATES_FILE)
_ROUND_IN_NAME = re.compile(r"round-(\d+)")
_CELL_NUMBER = re.compile(r"^-?(\d+\.?\d*|\.\d+)([eE][-+]?\d+)?$|^-?(inf|nan)$")


def server_state(arrays: ArrayRecord, strategy: Strategy) -> dict[str, torch.Tensor]:
    """What a state file holds: ``arrays/<name>`` and ``strategy/<attribute>/<kind>/<key>`` tensors."""
    state = {f"{ARRAYS}/{k}": v for k, v in arrays.to_torch_state_dict().items()}
    for attr in STRATEGY_STATE:
        value = getattr(strategy, attr, None)
        if isinstance(value, ArrayRecord):
            kind, items = "record", {k: a.numpy() for k, a in value.items()}
        elif isinstance(value, dict):
            kind, items = "dict", value
        elif isinstance(value, list):
            kind, items = "list", {str(i): a for i, a in enumerate(value)}
        else:
            continue
        state.update(
            {f"{STRATEGY}/{attr}/{kind}/{k}": torch.from_numpy(np.ascontiguousarray(a)) for k, a in items.items()}
        )
    return state


def restore_strategy(strategy: Strategy, state: Mapping[str, torch.Tensor], order: Iterable[str] = ()) -> None:
    """Put the strategy state of a state file back into a freshly made strategy; tensors named after the
    model's come back in its ``order``."""
    found: dict[tuple[str, str], dict[str, np.ndarray]] = {}
    for key, tensor in state.items():
        if key.startswith(f"{STRATEGY}/"):
            _, attr, kind, name = key.split("/", 3)
            found.setdefault((attr, kind), {})[name] = tensor.numpy()
    rank = {name: i for i, name in enumerate(order)}
    for (attr, kind), unordered in found.items():
        items = dict(sorted(unordered.items(), key=lambda item: rank.get(item[0], len(rank))))
        value: Any = items
        if kind == "list":
            value = [items[str(i)] for i in range(len(items))]
        elif kind == "record":
            value = ArrayRecord({k: Array(a) for k, a in items.items()})
        setattr(strategy, attr, value)


def round_of(name: str) -> int | None:
    """The round a run file belongs to (``weights/round-003.safetensors``: 3); None for a file of the whole run."""
    match = _ROUND_IN_NAME.search(name)
    return int(match.group(1)) if match else None


def parse_cell(text: str) -> Any:
    """A CSV cell back as the value it was written from: int, float (its repr), or the text itself."""
    if not _CELL_NUMBER.match(text):
        return text
    return int(text) if text.lstrip("-").isdigit() else float(text)


@dataclass(frozen=True)
class Continuation:
    """A failed run's folder, read back to continue after its last archived round.

    Parameters
    ----------
    folder : Path
        The failed run's folder (verified against its run.json).
    record : RunRecord
        Its run.json.
    state : dict[str, torch.Tensor]
        Its last round's state file (:func:`server_state`).
    global_model : dict[str, torch.Tensor]
        Its last round's archived whole model.
    """

    folder: Path
    record: RunRecord
    state: dict[str, torch.Tensor]
    global_model: dict[str, torch.Tensor]

    @property
    def round(self) -> int:
        """The last round it archived: the continued run starts with the next."""
        return self.record.rounds_completed

    def arrays(self, order: Iterable[str]) -> ArrayRecord:
        """The global model's travelling tensors after :attr:`round`, as the strategy aggregated them, in the
        model's ``order`` (a state file does not keep it; sums over them must run in the same order)."""
        prefix = f"{ARRAYS}/"
        found = {k[len(prefix) :]: v for k, v in self.state.items() if k.startswith(prefix)}
        names = list(order)
        if set(names) != set(found):
            raise ConfigError(
                f"continue-from: {self.folder} holds other tensors than this run's model ({len(found)} against "
                f"{len(names)}); continue it with the model and fine-tune settings it ran with"
            )
        return ArrayRecord({name: found[name] for name in names})

    def rows(self, table: str) -> list[dict[str, Any]]:
        """A table's rows up to :attr:`round`, typed as written (empty if the run did not write it)."""
        if table not in self.record.files:
            return []
        rows = read_csv(self.folder / table)
        return [{k: parse_cell(v) for k, v in row.items()} for row in rows if int(row["round"]) <= self.round]

    def carried_files(self) -> list[str]:
        """The files a continued run takes over: every round's up to :attr:`round` and the run's own (the
        model config and tokenizer), not the tables (rewritten from :meth:`rows`) nor older state files."""
        keep = []
        for name in self.record.files:
            r = round_of(name)
            if name in TABLES or (name.startswith(f"{STATE_DIR}/") and r != self.round):
                continue
            if r is None or r <= self.round:
                keep.append(name)
        return keep

    def lineage(self) -> list[ContinuedFrom]:
        """What the continued run records: the runs it continues, oldest first, each with the round it stopped at."""
        here = ContinuedFrom(run_id=self.record.run_id, round=self.round, folder=str(self.folder))
        return [*self.record.continued_from, here]


def read_continuation(folder: Path, num_rounds: int) -> Continuation:
    """A failed run's folder, verified, with the state of its last archived round. ConfigError names what is wrong."""
    from safetensors.torch import load_file

    fix = "point continue-from at a failed run's folder (one with run.json), or leave it empty to start at round 1"
    try:
        record = verify_run(folder, require_completed=False)
    except ArtifactError as exc:
        raise ConfigError(f"continue-from: {exc}; {fix}") from None
    r = continuable_round(record)
    if r == 0:
        raise ConfigError(
            f"continue-from: {folder} archived no round's server state (rounds completed: "
            f"{record.rounds_completed}); {fix}"
        )
    if r >= num_rounds:
        raise ConfigError(f"continue-from: {folder} already ran {r} rounds; raise num-rounds above {r} to go on")
    return Continuation(
        Path(folder), record, load_file(folder / server_state_name(r)), load_file(folder / round_weights_name(r))
    )

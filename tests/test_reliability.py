"""Bad updates and failed rounds: the server's checks on synthetic replies, then real local runs
(SuperLink + 3 SuperNodes over gRPC) whose clients misbehave as the tests' fault app tells them (tests/fault_app)."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import threading
import time
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from flwr.app import ArrayRecord, MetricRecord, RecordDict
from safetensors.torch import load_file

from fedimdb.artifacts import CLIENT_UPDATES_FILE, RUN_FILE, WEIGHT_STATS_FILE, read_csv, read_json, verify_run
from fedimdb.config import DataConfig, ExperimentConfig, RunConfig
from fedimdb.data import SERVER_DIR
from fedimdb.deploy import flwr_cli
from fedimdb.deploy.backend import StackJob
from fedimdb.deploy.local import PROCESS_GROUPS, SUPEREXEC, LocalFederation, LocalStack, process_env, stop_leftover
from fedimdb.deploy.proc import runs_one_of
from fedimdb.deploy.topology import LOCAL_CONNECTION
from fedimdb.inspect.evaluate import evaluate_round
from fedimdb.inspect.report import read_run, render_text
from fedimdb.model import load_model
from fedimdb.protocol import ARRAYS, METRICS, NUM_EXAMPLES, PARTITION_ID, TrainMetrics, transport_arrays
from fedimdb.run_record import RECURS, read_run_record
from server.checks import Expected, examples_problem, train_reply_problem
from server.loop import RoundPolicy
from server.records import ClientStatus, RoundLog
from tests.conftest import Orchestrator, fault_app, local_run_args, marked_processes, orchestrate
from tests.fault_app import faults

# Run settings of the faulty runs: a capped budget (2 steps of 32) bounds the believable example count.
SETTINGS = [
    "max-steps=2",
    "max-length=32",
    "batch-size=32",
    "eval-rows=64",
    "local-eval-rows=32",
    "archive-client-weights=true",
]


@pytest.fixture(scope="module")
def tiny_state() -> dict[str, torch.Tensor]:
    model, _ = load_model("tiny", 0)
    return {k: v.clone() for k, v in model.state_dict().items()}


def _reply(state: dict[str, torch.Tensor], num_examples: object = 64, dtype: str = "float32") -> RecordDict:
    return RecordDict(
        {ARRAYS: transport_arrays(state, dtype), METRICS: MetricRecord({PARTITION_ID: 0, NUM_EXAMPLES: num_examples})}
    )


@pytest.mark.parametrize(
    ("kind", "reason"),
    [
        ("nan", "non-finite values"),
        ("shape", "has shape"),
        ("dtype", "is float64, expected float32"),
        ("missing", "tensors missing"),
    ],
)
def test_each_broken_update_is_refused_with_its_reason(tiny_state: dict, kind: str, reason: str) -> None:
    expected = Expected.of(transport_arrays(tiny_state, "float32"), max_examples=64)
    assert train_reply_problem(_reply(tiny_state), expected) is None
    broken = faults.Fault(kind).state(tiny_state, tiny_state)
    arrays = ArrayRecord({k: v for k, v in broken.items()})  # float64 stays float64: what a broken client sends
    content = RecordDict({ARRAYS: arrays, METRICS: MetricRecord({PARTITION_ID: 0, NUM_EXAMPLES: 64})})
    problem = train_reply_problem(content, expected)
    assert problem is not None and reason in problem, problem


def test_float16_transport_is_expected_in_float16(tiny_state: dict) -> None:
    expected = Expected.of(transport_arrays(tiny_state, "float16"), max_examples=None)
    assert train_reply_problem(_reply(tiny_state, dtype="float16"), expected) is None
    assert "expected float16" in str(train_reply_problem(_reply(tiny_state), expected))


def test_missing_weights_and_unbelievable_example_counts(tiny_state: dict) -> None:
    expected = Expected.of(transport_arrays(tiny_state, "float32"), max_examples=64)
    no_arrays = RecordDict({METRICS: MetricRecord({PARTITION_ID: 0, NUM_EXAMPLES: 64})})
    assert "no weights" in str(train_reply_problem(no_arrays, expected))
    assert "at most 64" in str(train_reply_problem(_reply(tiny_state, faults.ABSURD_EXAMPLES), expected))
    for claimed in (0, -5, 2.5, float("nan")):
        assert examples_problem(claimed, None) is not None, claimed
    assert examples_problem(10**6, None) is None  # without a capped budget only the sign and type are known
    assert examples_problem(64, 64) is None


def test_scale_fault_multiplies_the_update(tiny_state: dict) -> None:
    trained = {k: v + 0.01 if v.is_floating_point() else v for k, v in tiny_state.items()}
    scaled = faults.Fault("scale", 10.0).state(trained, tiny_state)
    name = next(k for k, v in tiny_state.items() if v.is_floating_point())
    torch.testing.assert_close(scaled[name] - tiny_state[name], torch.full_like(tiny_state[name], 0.1))


def test_fault_flag_parsing() -> None:
    assert faults.parse("1:nan, 3:scale=10") == {1: faults.Fault("nan"), 3: faults.Fault("scale", 10.0)}
    assert faults.parse("") == {}
    for bad in ("nan", "x:nan", "1:melt", "1:scale", "1:nan=2"):
        with pytest.raises(ValueError, match="PARTITION:KIND"):
            faults.parse(bad)


def test_round_policy_needs_a_share_of_the_sampled_clients() -> None:
    policy = RoundPolicy(num_clients=10, min_reply_fraction=0.5)
    assert [policy.needed(n) for n in (1, 2, 3, 10)] == [1, 1, 2, 5]
    assert policy.online_before(1) == 10 and policy.online_before(2) == 5
    assert RoundPolicy(min_reply_fraction=1.0).needed(3) == 3


def test_a_retried_client_keeps_one_row_per_round() -> None:
    """A failed reply (partition unknown) followed by a usable one from the same node: one row, ok."""
    log = RoundLog()
    log.start_round(1, 2)
    log.record_failure(1, 5, None, ClientStatus.FAILED, "error reply 1: boom")
    assert [(r["partition_id"], r["node_id"], r["status"]) for r in log.clients] == [("", 5, ClientStatus.FAILED)]
    log.record_train(1, [_Reply(3, node=5)])
    assert [(r["partition_id"], r["node_id"], r["status"], r["reason"]) for r in log.clients] == [
        (3, 5, ClientStatus.OK, "")
    ]
    row = log.finish_round(1, None, 0.0)
    assert (row["clients_failed"], row["clients_participating"], row["central_accuracy"]) == (0, 1, "")


class _Reply:
    """What RoundLog reads of a train reply (a real Message: tests/test_round_loop.py)."""

    def __init__(self, partition_id: int, node: int) -> None:
        self.metadata = SimpleNamespace(src_node_id=node)
        self.content = RecordDict({METRICS: TrainMetrics(partition_id, 64, 0.5, 2, 1.0, 64.0, 0.1).to_record()})


def _faulty_run(tmp: Path, shards: Path, imdb: Path, fault: str, *settings: str, retries: int = 0) -> tuple[int, Path]:
    """orchestrate.py with 1 + ``retries`` attempts, 3 clients, 2 rounds; its exit code and experiment folder."""
    args = local_run_args(tmp / "results", shards, imdb, clients=3, rounds=2, settings=[*SETTINGS, *settings])
    app = fault_app(fault, tmp / "app")
    run = orchestrate(*args, "--retries", str(retries), "--seed", "7", "--app-dir", str(app), timeout=600)
    (exp,) = (tmp / "results").iterdir()
    return run.returncode, exp


@pytest.mark.slow
def test_bad_updates_are_refused_and_the_rest_aggregated(shards: Path, imdb_dir: Path, tmp_path: Path) -> None:
    """Client 1 sends NaN, client 2 claims 10⁹ examples: both refused, named with their reason; the
    global model is client 0's update alone; the run completes (1 of 3 usable is enough at 0.3)."""
    code, exp = _faulty_run(tmp_path, shards, imdb_dir, "1:nan,2:examples", "min-reply-fraction=0.3")
    assert code == 0, read_json(exp / "experiment.json")
    run_dir = exp / "repeat-0"
    verify_run(run_dir)
    clients = read_csv(run_dir / "clients.csv")
    by_partition = {(r["round"], r["partition_id"]): r for r in clients}
    for rnd in ("1", "2"):
        assert by_partition[(rnd, "0")]["status"] == ClientStatus.OK
        assert (
            by_partition[(rnd, "1")]["status"] == ClientStatus.REFUSED
            and "non-finite" in by_partition[(rnd, "1")]["reason"]
        )
        assert (
            by_partition[(rnd, "2")]["status"] == ClientStatus.REFUSED
            and "at most 64" in by_partition[(rnd, "2")]["reason"]
        )
    for row in read_csv(run_dir / "rounds.csv"):
        assert (row["clients_sampled"], row["clients_participating"], row["clients_refused"]) == ("3", "1", "2")
        assert int(row["train_examples"]) == int(by_partition[(row["round"], "0")]["num_examples"])
    global_1 = load_file(run_dir / "weights/round-001.safetensors")
    client_0 = load_file(run_dir / "weights/clients/round-001-client-0.safetensors")
    for name, tensor in global_1.items():
        torch.testing.assert_close(tensor, client_0[name])
    assert not (run_dir / "weights/clients/round-001-client-1.safetensors").exists()


@pytest.mark.slow
def test_too_few_usable_updates_fail_the_run_with_the_reason(shards: Path, imdb_dir: Path, tmp_path: Path) -> None:
    """Client 2 raises in every train message; every update is needed: round 1 is retried once with
    client 2, then the run fails, naming the node, Flower's error and the fix."""
    code, exp = _faulty_run(tmp_path, shards, imdb_dir, "2:raise", "min-reply-fraction=1.0", "round-retries=1")
    assert code != 0
    run_dir = exp / "repeat-0.failed-1"  # a failed attempt's folder is set aside, never deleted
    meta = read_run_record(run_dir / RUN_FILE)
    assert meta.status == "failed" and meta.error is not None
    assert "round 1: 2 usable updates from 3 sampled clients, 3 needed" in meta.error
    assert "error reply" in meta.error and "lower min-reply-fraction" in meta.error
    (row,) = read_csv(run_dir / "rounds.csv")
    assert (row["round"], row["retries"], row["clients_failed"], row["central_accuracy"]) == ("1", "1", "1", "")
    failed = [r for r in read_csv(run_dir / "clients.csv") if r["status"] == ClientStatus.FAILED]
    assert len(failed) == 1 and "error reply" in failed[0]["reason"]


@pytest.mark.slow
def test_every_client_raising_the_same_error_is_not_retried(shards: Path, imdb_dir: Path, tmp_path: Path) -> None:
    """All three ClientApps raise the same error: the attempt fails once, naming it, and retries=2 is not spent."""
    code, exp = _faulty_run(tmp_path, shards, imdb_dir, "0:raise,1:raise,2:raise", "round-retries=0", retries=2)
    assert code != 0
    (attempt,) = read_json(exp / "experiment.json")["repeats"]["0"]["attempts"]
    assert attempt["status"] == "failed" and RECURS in attempt["error"] and "test fault" in attempt["error"]


@pytest.fixture
def superlink(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> tuple[dict[str, str], subprocess.Popen]:
    """A real SuperLink with no SuperNodes (their count is 0), the flwr CLI pointed at it, 5 s calls."""
    monkeypatch.setattr(flwr_cli, "CALL_TIMEOUT", 5.0)
    env = process_env(RunConfig(num_clients=1), tmp_path / "flwr-home")
    with LocalFederation(tmp_path, 0, tmp_path / "logs", env) as fed:
        assert fed.superlink is not None
        yield env, fed.superlink
        os.kill(fed.superlink.pid, signal.SIGCONT)


@pytest.mark.slow
def test_an_unanswering_control_api_is_retried_then_given_up_as_dead(superlink: tuple) -> None:
    """SuperLink stopped (SIGSTOP): every status call times out; after `patience` s of silence the
    wait ends with a FlowerRunError that says so (never a subprocess.TimeoutExpired traceback)."""
    env, proc = superlink
    said: list[str] = []
    os.kill(proc.pid, signal.SIGSTOP)
    with pytest.raises(flwr_cli.FlowerRunError, match="has not answered for"):
        flwr_cli.wait_for_run(LOCAL_CONNECTION, 1, env, timeout=600, poll_seconds=0.5, log=said.append, patience=15)
    assert said and all("slow to answer" in line for line in said)


@pytest.mark.slow
def test_a_slow_control_api_is_waited_for(superlink: tuple) -> None:
    """Stopped for 8 s (longer than a call may take), then resumed: the wait goes on through the silence and gets the SuperLink's
    real answer (here: "Run ID not found"), which is not mistaken for a dead SuperLink."""
    env, proc = superlink
    said: list[str] = []
    os.kill(proc.pid, signal.SIGSTOP)
    threading.Timer(8.0, os.kill, (proc.pid, signal.SIGCONT)).start()
    with pytest.raises(flwr_cli.FlowerRunError, match="Run ID not found") as caught:
        flwr_cli.wait_for_run(LOCAL_CONNECTION, 1, env, timeout=600, poll_seconds=0.5, log=said.append, patience=120)
    assert not isinstance(caught.value, flwr_cli.ControlUnanswered) and said


@pytest.mark.slow
def test_a_restarted_supernode_is_recorded_so_a_resume_can_stop_it(tmp_path: Path) -> None:
    """Real processes, no run: a SuperNode SIGKILLed is unregistered and restarted under a new key by the
    stack's liveness check, and leads a new process group; the stack hands the experiment its new handle at once, and stopping what that handle
    names (what --resume does after a hard kill) leaves nothing of the restarted node running, nor the SuperExec
    that Flower starts for the SuperLink in a session of its own."""
    handles: list[dict] = []
    job = StackJob(
        RunConfig(num_clients=2),
        DataConfig(),
        tmp_path,
        tmp_path / "run",
        "restart",
        nodes=ExperimentConfig(warm_clients=False),
    )
    stack = LocalStack(job, log=lambda _: None)
    stack.on_handle = handles.append
    with stack:
        fed = stack.federation
        assert fed is not None
        first, lost = fed.supernodes[1].pid, fed.node_ids[1]
        os.killpg(first, signal.SIGKILL)
        deadline = time.monotonic() + 60
        while fed.supernodes[1].pid == first and time.monotonic() < deadline:
            fed.check_alive()
            time.sleep(0.2)
        restarted = fed.supernodes[1].pid
        assert restarted != first and fed.supernodes[1].poll() is None, "the liveness check restarted the node"
        listed = subprocess.run(
            ["flwr", "supernode", "list", LOCAL_CONNECTION, "--format", "json"],
            env=fed.env,
            capture_output=True,
            text=True,
            timeout=60,
        )
        status = {int(n["node-id"]): n["status"] for n in json.loads(listed.stdout)["nodes"]}
        assert status[lost] == "unregistered", "the lost node was unregistered at once"
        assert fed.node_ids[1] != lost and status[fed.node_ids[1]] in ("registered", "online"), "a new key"
        assert handles and restarted in handles[-1][PROCESS_GROUPS], "the new process group was handed on"
        superexec = fed.superexec
        assert superexec is not None and superexec in handles[-1][PROCESS_GROUPS]
        said = stop_leftover(handles[-1], tmp_path, grace=5)
        assert "stopped the 4 process groups" in said, said
        assert not runs_one_of(superexec, (SUPEREXEC,)), "the SuperExec was stopped with the rest"
        assert fed.supernodes[1].wait(timeout=10) is not None


# Round 2 ends as soon as the stack has unregistered the killed node (it checks its processes every
# second); the replacement is started 2 s later with a new key and is online seconds after that.
# Partition 0 sleeps before each reply (PACE), so rounds 3-5 take over 30 s whatever the load: the
# replacement is back for the last round.
ROUNDS_AFTER_KILL = 5
PACE = "0:slow=10"


@pytest.mark.slow
def test_a_killed_supernode_is_restarted_and_rejoins(shards: Path, imdb_dir: Path, tmp_path: Path) -> None:
    """Client 1 (slowed by 15 s a message) has its SuperNode killed in round 2: the stack unregisters the
    lost node, so its message fails at once and the round goes on with the other two; the node is
    restarted with a new key (TLS and authentication, the default), and partition 1 trains again by the
    last round, as a new node."""
    args = local_run_args(
        tmp_path / "results", shards, imdb_dir, clients=3, rounds=ROUNDS_AFTER_KILL, settings=SETTINGS
    )
    app = fault_app(f"1:slow=15,{PACE}", tmp_path / "app")
    with Orchestrator(*args, "--retries", "0", "--metrics-port", "0", "--app-dir", str(app)) as run:
        deadline = time.monotonic() + 300
        while time.monotonic() < deadline and run.returncode is None:
            run_files = list((tmp_path / "results").glob("*/repeat-0/run.json"))
            with contextlib.suppress(OSError, ValueError):
                if run_files and read_run_record(run_files[0]).rounds_completed >= 1:
                    break
            time.sleep(0.5)
        node_1 = [p for p in marked_processes(run.mark) if "partition-id=1" in " ".join(p.cmdline())]
        assert node_1, "partition 1's SuperNode was found"
        os.killpg(os.getpgid(node_1[0].pid), signal.SIGKILL)
        run.wait(timeout=600)
    assert run.returncode == 0, run.stderr[-3000:]
    assert "SuperNode 1 exited with code -9; restarted it (1 of 5 restarts) as node " in run.stderr
    (exp,) = (tmp_path / "results").iterdir()
    run_dir = exp / "repeat-0"
    verify_run(run_dir)
    rows = [r for r in read_csv(run_dir / "clients.csv") if r["partition_id"] == "1" and r["num_examples"]]
    trained = {int(r["round"]): (r["status"], r["node_id"]) for r in rows}  # train rows (not local-eval rows)
    failed = [r for r in read_csv(run_dir / "clients.csv") if r["status"] == ClientStatus.FAILED]
    assert [(r["round"], r["partition_id"]) for r in failed] == [("2", "1")], failed
    assert "Node Unavailable" in failed[0]["reason"]
    assert trained[1][0] == ClientStatus.OK and 2 not in trained
    last = ROUNDS_AFTER_KILL
    assert trained[last][0] == ClientStatus.OK and trained[last][1] != trained[1][1], (
        "partition 1 rejoined, as a new node"
    )
    rounds = {int(r["round"]): r for r in read_csv(run_dir / "rounds.csv")}
    assert sorted(rounds) == list(range(1, last + 1)) and rounds[2]["clients_failed"] == "1"


ROBUST_CLIENTS = 5
ROBUST = ("fedmedian", "fedtrimmedavg", "krum")
POISON = 50.0  # partition 0 sends its update scaled by this: finite, well-formed, and 50 times too large


@pytest.fixture(scope="module")
def robust_runs(shards: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """One local federation of 5 SuperNodes, partition 0 poisoned; one 1-round run per robust strategy."""
    tmp = tmp_path_factory.mktemp("robust")
    settings = dict(s.split("=", 1) for s in SETTINGS)
    settings.update(
        {
            "model": "tiny",
            "num-clients": ROBUST_CLIENTS,
            "num-rounds": 1,
            "krum-malicious-nodes": 1,
            "trimmed-beta": 0.2,
        }
    )
    env = process_env(RunConfig.from_mapping(settings), tmp / "flwr-home")
    app = fault_app(f"0:scale={POISON:g}", tmp / "app")
    runs = {}
    with LocalFederation(shards, ROBUST_CLIENTS, tmp / "logs", env) as fed:
        for strategy in ROBUST:
            run = RunConfig.from_mapping({**settings, "strategy": strategy}).as_dict()
            run.update({"held-out-dir": str(shards / SERVER_DIR), "output-dir": str(tmp / strategy)})
            flwr_cli.run_to_completion(
                LOCAL_CONNECTION, run, fed.env, log=lambda _: None, check=fed.check_alive, app_dir=app
            )
            verify_run(tmp / strategy)
            runs[strategy] = tmp / strategy
    return runs


def _update_norm(weights: dict[str, torch.Tensor], start: dict[str, torch.Tensor]) -> float:
    return float(torch.sqrt(sum(((weights[k].double() - start[k].double()) ** 2).sum() for k in start)))


@pytest.mark.slow
@pytest.mark.parametrize("strategy", ROBUST)
def test_robust_strategies_resist_a_poisoned_finite_update(strategy: str, robust_runs: dict[str, Path]) -> None:
    """Partition 0 scales its update by 50 (it passes every check: finite, right shapes, honest count).
    FedAvg of the same replies would move the model ~10 times as far as an honest client; each robust
    strategy keeps the global update within the honest clients' (Krum picks one honest client)."""
    run_dir = robust_runs[strategy]
    assert verify_run(run_dir).config["strategy"] == strategy
    start, global_1 = (load_file(run_dir / f"weights/round-00{r}.safetensors") for r in (0, 1))
    clients = {
        k: load_file(run_dir / f"weights/clients/round-001-client-{k}.safetensors") for k in range(ROBUST_CLIENTS)
    }
    counts = {
        int(r["partition_id"]): int(r["num_examples"]) for r in read_csv(run_dir / "clients.csv") if r["num_examples"]
    }
    honest = [_update_norm(clients[k], start) for k in range(1, ROBUST_CLIENTS)]
    assert _update_norm(clients[0], start) > 20 * max(honest), "the fault scaled partition 0's update"
    fedavg = {n: sum(clients[k][n].double() * counts[k] for k in clients) / sum(counts.values()) for n in start}
    assert _update_norm(fedavg, start) > 5 * max(honest), "FedAvg of these replies would follow the poison"
    assert _update_norm(global_1, start) <= 1.5 * max(honest)
    if strategy == "krum":
        same = lambda k: all(torch.allclose(global_1[n], clients[k][n], rtol=1e-5, atol=1e-7) for n in start)  # noqa: E731
        chosen = [k for k in range(1, ROBUST_CLIENTS) if same(k)]
        assert len(chosen) == 1, "Krum's global model is one honest client's"


@pytest.mark.slow
@pytest.mark.parametrize("strategy", ROBUST)
def test_weight_scrutiny_flags_the_poisoned_client_and_no_other(strategy: str, robust_runs: dict[str, Path]) -> None:
    """client_updates.csv flags partition 0 (update scaled by 50) as the one outlier; both statistics
    files are hashed in the manifest; weight_stats.csv describes rounds 0 and 1."""
    run_dir = robust_runs[strategy]
    meta = verify_run(run_dir)
    assert {WEIGHT_STATS_FILE, CLIENT_UPDATES_FILE} <= set(meta.files)
    rows = read_csv(run_dir / CLIENT_UPDATES_FILE)
    assert sorted(int(r["partition_id"]) for r in rows) == list(range(ROBUST_CLIENTS))
    flagged = [int(r["partition_id"]) for r in rows if r["outlier"] == "True"]
    assert flagged == [0], rows
    assert {r["round"] for r in read_csv(run_dir / WEIGHT_STATS_FILE)} == {"0", "1"}
    report = read_run(run_dir)
    assert [(o.round, o.partition_id) for o in report.outliers] == [(1, 0)] and not report.anomalies
    assert "round 1: client 0 (norm z" in render_text([report])


@pytest.mark.slow
def test_inspect_evaluate_gives_the_accuracy_the_run_recorded(robust_runs: dict[str, Path]) -> None:
    """Round 1's archived global model, evaluated again on the rows the server evaluated."""
    run_dir = robust_runs["fedmedian"]
    for server_round in (0, 1):
        again = evaluate_round(run_dir, server_round)
        assert again.recorded_accuracy is not None and again.accuracy == again.recorded_accuracy, again

"""The Compose stack for real: images built from this tree, a server and ten client containers
talking gRPC on the Compose network, tiny model, two rounds; artifacts pulled out of the volume
with the Docker SDK and verified.

Needs a Docker daemon with Compose v2 (CI installs them: .ci/docker/). Without one these tests are
skipped, unless FEDIMDB_REQUIRE_DOCKER=1 (as in CI), which turns a missing daemon into a failure.
"""

from __future__ import annotations

import io
import json
import os
import re
import secrets
import tarfile
from pathlib import Path

import pytest
import yaml

from fedimdb.artifacts import read_csv, verify_run
from fedimdb.deploy.compose import APP_DIR_VAR, build_override
from fedimdb.deploy.container import ACCESS_LOGGER
from fedimdb.deploy.docker_artifacts import pull_artifacts, service_containers
from fedimdb.deploy.topology import ACCESS_LOG, APP_MOUNT, CONTINUE_MOUNT
from tests.conftest import ROOT, build_script, compose, require_docker

RUN_NAME = "compose-e2e"
ROUNDS = 2
SETTINGS = {
    "model": "tiny",
    "num-rounds": ROUNDS,
    "max-steps": 2,
    "batch-size": 8,
    "eval-rows": 64,
    "local-eval-rows": 32,
}
# Each client checks, from inside its own container, which shard files it can see and write.
SHARD_PROBE = """
import json, os
seen = sorted(os.path.join(d, f) for top in ("/app", "/data", "/home", "/tmp", "/shards", "/artifacts", "/imdb")
              for d, _, files in os.walk(top) for f in files if f.endswith(".parquet"))
try:
    open("/data/probe", "w").close(); writable = True
except OSError:
    writable = False
print(json.dumps({"seen": seen, "writable": writable,
                  "partition": json.load(open("/data/manifest.json"))["partition-id"]}))
"""


SECRET_NAME = re.compile(r"(^|_)(TOKEN|SECRET|PASSWORD|PASSWD|API_KEY|ACCESS_KEY)(_|$)")
# Data or run outputs anywhere in an image, outside the installed packages (pyarrow ships test Parquet files).
FIND_DATA = (
    "find / -xdev -path /opt/venv -prune -o -path /proc -prune -o \\( -name '*.parquet' -o -name run.json "
    "-o -name '*.safetensors' -o -name auth.key -o -name server.key -o -name ca.key \\) -print 2>/dev/null | wc -l; "
    "ls -A /data /artifacts; env"
)


# What only the host (orchestrator extra) or the server image (prepare extra) may hold; rich is absent
# from this list because flwr itself needs it (flwr/supercore/logger.py imports it), prometheus_client
# because the ClientApp records metrics (fedimdb/metrics/client.py).
NOT_IN_CLIENT = ("docker", "matplotlib", "seaborn", "datasets", "pandas", "flwr_datasets")
FIND_MODULES = "import importlib.util as u, sys; print([m for m in sys.argv[1:] if u.find_spec(m)])"
# The runner, the prepare service and the SuperLink/ServerApp, all in the server image.
SERVER_NEEDS = ("fedimdb.deploy.runner", "fedimdb.data", "server.server_app", "flwr_datasets", "tomli_w")
IMAGE_TAG = os.environ.get("IMAGE_TAG", "latest")
# Every installed distribution of an image, as {name: version}: compared with its locks (requirements/).
DISTRIBUTIONS = "import importlib.metadata as m, json; print(json.dumps({d.metadata['Name']: d.version for d in m.distributions()}))"
lockfile = build_script("lockfile")

pytestmark = pytest.mark.docker
require_docker()


@pytest.fixture(scope="module")
def stack(imdb_dir: Path, tmp_path_factory: pytest.TempPathFactory):
    """``docker compose up --build --exit-code-from runner --no-attach prepare``, then torn down."""
    import docker

    base = tmp_path_factory.mktemp("compose")
    override = base / "override.yml"
    override.write_text(yaml.safe_dump(build_override(10, SETTINGS, {"data-source": str(imdb_dir)}, RUN_NAME)))
    files = [ROOT / "docker-compose.yml", override]
    project = f"fedimdb-test-{secrets.token_hex(3)}"
    env = {"FEDIMDB_SHARDS_DIR": str(base / "shards"), "CREDENTIALS_DIR": str(base / "credentials")}
    try:
        up = compose(
            files,
            "up",
            "--build",
            "--exit-code-from",
            "runner",
            "--no-attach",
            "prepare",
            env=env,
            project=project,
            timeout=1800,
        )
        (base / "compose-up.log").write_text(up.stdout + up.stderr)
        client = docker.from_env()
        collected = pull_artifacts(project, RUN_NAME, base / "results", client) if up.returncode == 0 else None
        yield {
            "up": up,
            "files": files,
            "project": project,
            "env": env,
            "run_dir": collected,
            "docker": client,
            "shards": base / "shards",
            "credentials": base / "credentials",
        }
    finally:
        compose(files, "down", "-v", "-t", "5", env=env, project=project)


def test_compose_run_completes_and_artifacts_verify(stack) -> None:
    up = stack["up"]
    assert up.returncode == 0, (up.stdout + up.stderr)[-6000:]
    assert "run completed (finished:completed)" in up.stdout
    meta = verify_run(stack["run_dir"])
    assert meta.config["num-clients"] == 10 and meta.config["held-out-dir"] == "/held-out"
    assert [int(r["round"]) for r in read_csv(stack["run_dir"] / "rounds.csv")] == [1, 2]
    clients = read_csv(stack["run_dir"] / "clients.csv")
    assert sorted((int(r["round"]), int(r["partition_id"])) for r in clients) == [
        (rnd, pid) for rnd in (1, 2) for pid in range(10)
    ]
    assert (stack["run_dir"] / "logs" / "serverapp.log").is_file()


def _mounts(stack, service: str) -> set[tuple[str, str, bool]]:
    """(host path, container path, writable) of a service's container."""
    (container,) = service_containers(stack["docker"], stack["project"], service)
    return {(m.get("Source", m.get("Name")), m["Destination"], m["RW"]) for m in container.attrs["Mounts"]}


def test_each_client_sees_only_its_own_shard_and_key_read_only(stack) -> None:
    for pid in range(10):
        assert _mounts(stack, f"client-{pid}") == {
            (str(stack["shards"] / f"client-{pid}"), "/data", False),
            (str(stack["credentials"] / f"client-{pid}"), "/credentials", False),
        }
        probe = compose(
            stack["files"],
            "run",
            "--rm",
            "--no-deps",
            f"client-{pid}",
            "python",
            "-c",
            SHARD_PROBE,
            env=stack["env"],
            project=stack["project"],
        )
        assert probe.returncode == 0, probe.stderr
        seen = json.loads(probe.stdout.strip().splitlines()[-1])
        assert seen == {"seen": ["/data/train.parquet", "/data/val.parquet"], "writable": False, "partition": pid}


def test_the_output_shows_the_run_and_keeps_the_access_log_apart(stack) -> None:
    """What `up` prints is the run, round by round; the SuperLink's access log (a line per request) is in its own file."""
    out = stack["up"].stdout
    told = re.search(
        r"round 2/2: (\d+) of \1 clients aggregated \(0 failed, 0 refused\), central accuracy 0\.\d{4}", out
    )
    assert ACCESS_LOGGER not in out and told, out[-3000:]
    (server,) = service_containers(stack["docker"], stack["project"], "server")
    stream, _ = server.get_archive(str(ACCESS_LOG))
    with tarfile.open(fileobj=io.BytesIO(b"".join(stream))) as tar:
        member = tar.extractfile(ACCESS_LOG.name)
        kept = member.read().decode() if member else ""
    assert kept.count(ACCESS_LOGGER) > 100 and "/v1/runtime/pull-object" in kept, kept[:2000]


def test_supernodes_reach_the_grpc_fleet_port_on_the_compose_network(stack) -> None:
    network = f"{stack['project']}_federation"
    (server,) = service_containers(stack["docker"], stack["project"], "server")
    assert network in server.attrs["NetworkSettings"]["Networks"]
    assert "--fleet-api-type grpc-rere --fleet-api-address 0.0.0.0:9092" in server.logs().decode()
    secure = "--root-certificates /credentials/ca.pem --auth-supernode-private-key /credentials/auth.key"
    for pid in range(10):
        (container,) = service_containers(stack["docker"], stack["project"], f"client-{pid}")
        assert list(container.attrs["NetworkSettings"]["Networks"]) == [network]
        logs = container.logs().decode()
        assert f"flower-supernode {secure} --grpc-rere --superlink server:9092" in logs
        assert f"partition-id={pid} " in logs
    assert stack["up"].returncode == 0


def test_tls_and_supernode_authentication_by_default(stack) -> None:
    """The SuperLink registers every client's public key before it is healthy; each party mounts its own folder."""
    creds = stack["credentials"]
    (server,) = service_containers(stack["docker"], stack["project"], "server")
    logs = server.logs().decode()
    assert "SuperLink ready (TLS, SuperNode authentication; 10 SuperNode keys registered)" in logs
    assert logs.count("[Fleet.ActivateNode] Activated node_id") == 10
    assert (
        "--ssl-certfile /credentials/server.pem --ssl-keyfile /credentials/server.key --enable-supernode-auth" in logs
    )
    assert (str(creds / "server"), "/credentials", False) in _mounts(stack, "server")
    assert (str(creds / "server" / "ca.pem"), "/credentials/ca.pem", False) in _mounts(stack, "runner")
    assert sorted(p.name for p in (creds / "client-3").iterdir()) == ["auth.key", "auth.pub", "ca.pem"]
    assert not list((creds / "server").rglob("auth.key")), "no client's private key is in the server's folder"
    every = {
        source
        for service in ("server", "runner", *(f"client-{k}" for k in range(10)))
        for source, _, _ in _mounts(stack, service)
    }
    assert str(creds) not in every and not any(s.endswith("ca.key") for s in every), "the CA key is mounted nowhere"


def test_images_run_as_non_root_and_hold_no_data(stack) -> None:
    for service in ("server", "client-0", "runner"):
        (container,) = service_containers(stack["docker"], stack["project"], service)
        assert container.attrs["Config"]["User"] == "fedimdb"
    for image in (f"fedimdb-server:{IMAGE_TAG}", f"fedimdb-client:{IMAGE_TAG}"):
        out = stack["docker"].containers.run(image, ["sh", "-c", FIND_DATA], remove=True, network_mode="none").decode()
        lines = out.splitlines()
        assert lines[0] == "0", out
        names = [line.split("=", 1)[0] for line in lines if "=" in line]
        assert not [n for n in names if SECRET_NAME.search(n)], names


def test_client_image_holds_only_what_a_client_needs(stack) -> None:
    """Dockerfile.client installs the core dependencies only; Dockerfile.server adds the prepare extra."""

    def run(image: str, *argv: str) -> str:  # the last line of its stdout
        out = stack["docker"].containers.run(image, list(argv), remove=True, network_mode="none").decode()
        return out.strip().splitlines()[-1]

    client, server = f"fedimdb-client:{IMAGE_TAG}", f"fedimdb-server:{IMAGE_TAG}"
    assert run(client, "python", "-c", FIND_MODULES, *NOT_IN_CLIENT) == "[]"
    # What a client imports loads without them, and the server image is CPU-only torch.
    assert run(client, "python", "-c", "import client.client_app, fedimdb.deploy.container; print('ok')") == "ok"
    imports = (
        "import importlib, sys, torch; [importlib.import_module(m) for m in sys.argv[1:]]; print(torch.version.cuda)"
    )
    assert run(server, "python", "-c", imports, *SERVER_NEEDS) == "None"
    commands = "for c in flwr flower-superlink flwr-serverapp; do command -v $c; done | wc -l"
    assert run(server, "sh", "-c", commands) == "3"
    # Each image holds exactly its locks (Dockerfile.client: client.txt; Dockerfile.server: server.txt), and pip.
    for image, lock in ((client, "client.txt"), (server, "server.txt")):
        found = {lockfile.normalize(n): v for n, v in json.loads(run(image, "python", "-c", DISTRIBUTIONS)).items()}
        locked = {
            n: p.version for f in (lock, "minilm.txt") for n, p in lockfile.read(ROOT / "requirements" / f).items()
        }
        assert {n: found.get(n) for n in locked} == locked, f"{image} differs from requirements/{lock}"
        assert sorted(set(found) - set(locked)) == ["pip"], f"{image} holds more than requirements/{lock}"


def test_the_main_command_says_why_preparation_failed(stack, tmp_path: Path) -> None:
    """No hub here (offline): prepare's reason, with the fix, is in ``up``'s own output, and ``up`` fails."""
    hub = {"FEDIMDB_DATA_SOURCE": "stanfordnlp/imdb", "HF_HUB_OFFLINE": "1"}
    override = tmp_path / "override.yml"
    override.write_text(yaml.safe_dump({"services": {"prepare": {"environment": hub}}}))
    env = {"FEDIMDB_SHARDS_DIR": str(tmp_path / "shards"), "CREDENTIALS_DIR": str(tmp_path / "credentials")}
    files, project = [ROOT / "docker-compose.yml", override], f"fedimdb-test-{secrets.token_hex(3)}"
    try:  # the main command as the README gives it (the images are the stack fixture's)
        up = compose(
            files, "up", "--exit-code-from", "runner", "--no-attach", "prepare", env=env, project=project, timeout=600
        )
    finally:
        compose(files, "down", "-v", "-t", "5", env=env, project=project)
    out = " ".join((up.stdout + up.stderr).split())
    assert up.returncode != 0
    assert "'stanfordnlp/imdb' could not be loaded from the Hugging Face hub" in out, out[-3000:]
    assert "set FEDIMDB_DATA_SOURCE (--data-source) to a local folder" in out and "Traceback" not in out


def test_other_client_counts_by_override(tmp_path: Path, imdb_dir: Path) -> None:
    for n in (3, 12):
        override = tmp_path / f"override-{n}.yml"
        override.write_text(
            yaml.safe_dump(build_override(n, {"num-rounds": 1}, {"num-partitions": 12, "data-source": str(imdb_dir)}))
        )
        files = [ROOT / "docker-compose.yml", override]
        services = set(compose(files, "config", "--services").stdout.split())
        assert services == {"prepare", "server", "runner", *(f"client-{i}" for i in range(n))}
        config = json.loads(compose(files, "config", "--format", "json").stdout)
        for service in ("runner", "prepare"):
            assert config["services"][service]["environment"]["FEDIMDB_NUM_CLIENTS"] == str(n)
        last = config["services"][f"client-{n - 1}"]
        assert last["environment"]["PARTITION_ID"] == str(n - 1)
        assert [(Path(v["source"]).name, v["target"], v["read_only"]) for v in last["volumes"]] == [
            (f"client-{n - 1}", "/data", True),
            (f"client-{n - 1}", "/credentials", True),
        ]


def test_an_app_dir_of_the_hosts_is_mounted_into_the_runner_and_named_to_it(tmp_path: Path, imdb_dir: Path) -> None:
    override = tmp_path / "override.yml"
    override.write_text(yaml.safe_dump(build_override(3, {}, {"data-source": str(imdb_dir)}, app_dir=tmp_path)))
    runner = json.loads(compose([ROOT / "docker-compose.yml", override], "config", "--format", "json").stdout)[
        "services"
    ]["runner"]
    assert runner["environment"][APP_DIR_VAR] == APP_MOUNT
    assert (str(tmp_path), APP_MOUNT, True) in [
        (v["source"], v["target"], v.get("read_only", False)) for v in runner["volumes"]
    ]


def test_a_failed_run_to_continue_is_mounted_read_only_into_the_server(tmp_path: Path, imdb_dir: Path) -> None:
    failed = tmp_path / "repeat-1.failed-1"
    override = tmp_path / "override.yml"
    override.write_text(yaml.safe_dump(build_override(3, {}, {"data-source": str(imdb_dir)}, continue_from=failed)))
    server = json.loads(compose([ROOT / "docker-compose.yml", override], "config", "--format", "json").stdout)[
        "services"
    ]["server"]
    mounts = [(v["source"], v["target"], v.get("read_only", False)) for v in server["volumes"]]
    assert (str(failed), f"{CONTINUE_MOUNT}/{failed.name}", True) in mounts
    assert len(mounts) == 5, "docker-compose.yml's own mounts are kept"


def test_plaintext_is_an_explicit_opt_in() -> None:
    def tls_auth(env: dict[str, str]) -> set[str]:
        config = json.loads(compose([ROOT / "docker-compose.yml"], "config", "--format", "json", env=env).stdout)
        return {config["services"][s]["environment"]["FEDIMDB_TLS_AUTH"] for s in ("server", "client-7", "runner")}

    assert tls_auth({}) == {"true"}
    assert tls_auth({"FEDIMDB_TLS_AUTH": "false"}) == {"false"}


def test_gpu_override_reserves_nvidia_devices_for_every_client() -> None:
    config = json.loads(
        compose([ROOT / "docker-compose.yml", ROOT / "docker-compose.gpu.yml"], "config", "--format", "json").stdout
    )
    for pid in range(10):
        client = config["services"][f"client-{pid}"]
        (device,) = client["deploy"]["resources"]["reservations"]["devices"]
        assert device["driver"] == "nvidia" and device["capabilities"] == ["gpu"]
        assert client["image"].endswith("-cuda")
    assert "TORCH_INDEX_URL" in config["services"]["client-0"]["build"]["args"]
    assert config["services"]["client-0"]["build"]["args"]["CLIENT_LOCK"] == "client-cuda.txt"
    assert (ROOT / "requirements" / "client-cuda.txt").is_file()
    assert "deploy" not in config["services"]["server"]

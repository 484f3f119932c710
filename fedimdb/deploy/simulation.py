"""The simulation backend: the same ServerApp and ClientApp on Flower's Simulation Engine (Ray).

One SuperLink started with ``--simulation`` (its SuperExec and the ``flwr-simulation`` process it
starts run the ServerApp and Ray); no SuperNodes. Ray runs the ClientApp for ``num-clients``
virtual clients, partition ids 0 … N-1, each of which reads its shard from the run's
``client-shards-dir`` (client/task.py). The run is submitted with ``flwr run`` and followed as on
the local backend (:class:`~fedimdb.deploy.local.LocalStack`, whose processes and logs this
shares); the federation config carries the size and each virtual client's Ray resources. With
``ray-address``, Flower's ``ray.init()`` attaches to that running cluster (``RAY_ADDRESS`` in the
environment of the SuperLink and so of the simulation process), which places the clients on its nodes.
"""

from __future__ import annotations

import importlib.util

from fedimdb.deploy.backend import RoundCallback
from fedimdb.deploy.local import LocalStack

NUM_SUPERNODES = "num-supernodes"  # Flower's SimulationConfig fields, as flwr run --federation-config names them
CLIENT_CPUS = "client-resources-num-cpus"
CLIENT_GPUS = "client-resources-num-gpus"
CLIENT_SHARDS_DIR = "client-shards-dir"  # the run setting a virtual client finds its shard by (fedimdb/config.py)
RAY_ADDRESS = "RAY_ADDRESS"  # ray.init() without an address (Flower's RayBackend) attaches to the cluster it names


def missing_ray() -> str | None:
    """Why the Simulation Engine cannot run here (Ray, Flower's ``simulation`` extra, is not installed), or None."""
    if importlib.util.find_spec("ray") is None:
        return "backend simulation needs Ray: pip install -e '.[simulation]' (./scripts/bootstrap.sh installs it)"
    return None


class SimulationStack(LocalStack):
    """One repeat on a fresh simulating SuperLink; the ServerApp writes straight into ``job.run_dir``."""

    def up(self) -> None:
        """A private FLWR_HOME and a SuperLink that simulates; logs into run_dir/logs."""
        nodes = self.job.nodes
        fed = self._start(simulation=True, env={RAY_ADDRESS: nodes.ray_address} if nodes.ray_address else {})
        where = f"the Ray cluster at {nodes.ray_address}" if nodes.ray_address else "Ray on this machine"
        self.log(
            f"{self.job.run.num_clients} virtual clients on Flower's Simulation Engine ({where}; "
            f"{nodes.sim_client_cpus} CPUs, {nodes.sim_client_gpus:g} GPUs each), SuperLink at {fed.control_address}"
        )

    def run(self, on_round: RoundCallback) -> None:
        """``flwr run`` with the federation's size and resources, followed to its end."""
        job = self.job
        federation = {
            NUM_SUPERNODES: job.run.num_clients,
            CLIENT_CPUS: job.nodes.sim_client_cpus,
            CLIENT_GPUS: job.nodes.sim_client_gpus,
        }
        self._follow(on_round, {CLIENT_SHARDS_DIR: str(job.shards.resolve())}, federation)

"""Multi-node scenarios on one machine, each in its own process (its own Ray cluster, apart from the test
session's Ray): `python tests/multinode_scenarios.py <scenario> <scratch dir>` prints one JSON line of what it
saw; tests/test_multinode.py asserts on it."""

import json
import os
import secrets
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

# Each scenario's cluster has its own token (read by Ray when imported, so set first).
os.environ.update(RAY_AUTH_MODE="token", RAY_AUTH_TOKEN=secrets.token_hex(32))
os.environ.pop("RAY_ADDRESS", None)

import ray  # noqa: E402
import yaml  # noqa: E402
from ray.cluster_utils import AutoscalingCluster, Cluster  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from raylib.config import EmbedJobConfig, MlmJobConfig  # noqa: E402
from raylib.data.sample_corpus import sample_documents, write_shards  # noqa: E402
from raylib.runtime import free_port  # noqa: E402


class BusyNodes:
    """Samples each node's available CPUs while a job runs: the nodes whose CPUs were taken held its actors."""

    def __init__(self, threshold: float):
        self.threshold, self.busy = threshold, set()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)

    def _sample(self) -> None:
        while not self._stop.wait(0.2):
            for node_id, available in ray._private.state.available_resources_per_node().items():
                if available.get("CPU", 0) <= self.threshold:
                    self.busy.add(node_id)

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()


def embed_on_two_nodes(scratch: Path) -> dict:
    """Two model actors of 1.5 CPUs on two 2-CPU worker nodes: one per node."""
    from raylib.embed.run import run_embed

    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 1})
    workers = [cluster.add_node(num_cpus=2) for _ in range(2)]
    ray.init(address=cluster.address)
    write_shards(sample_documents(400), scratch / "in", shards=4, fmt="jsonl")
    config = EmbedJobConfig.model_validate({
        "input": {"path": str(scratch / "in")}, "output": {"path": str(scratch / "out")},
        "compute": {"actors": 2, "cpus_per_actor": 1.5, "threads_per_actor": 1},
    })
    with BusyNodes(threshold=0.5) as nodes:
        summary = run_embed(config)
    worker_ids = {node.node_id for node in workers}
    ray.shutdown()
    cluster.shutdown()
    return {"rows": summary.rows, "errors": summary.errors, "actor_nodes": len(nodes.busy & worker_ids)}


def train_survives_node_removal(scratch: Path) -> dict:
    """Two training workers of 1.5 CPUs on two of three 2-CPU nodes; one of their nodes is removed once Ray
    Train holds a checkpoint; the run restarts on the remaining nodes from a checkpoint."""
    from raylib.train.run import run_mlm

    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 1})
    workers = {node.node_id: node for node in (cluster.add_node(num_cpus=2) for _ in range(3))}
    ray.init(address=cluster.address)
    write_shards(sample_documents(400), scratch / "in", shards=2, fmt="jsonl")
    config = MlmJobConfig.model_validate({
        "data": {"path": str(scratch / "in")},
        "architecture": {"n_embd": 64, "n_head": 4, "n_layer": 2, "n_inner": 256, "max_trained_positions": 64},
        "seq_len": 64, "batch_size": 4, "precision": "fp32", "optim": {"lr": 1e-3, "max_steps": 40},
        "scaling": {"num_workers": 2, "cpus_per_worker": 1.5, "threads_per_worker": 1},
        "checkpoint": {"storage_path": str(scratch / "runs"), "name": "mlm", "every_steps": 5, "max_failures": 2},
    })
    metrics = scratch / "runs" / "mlm" / "metrics.jsonl"
    outcome = {}
    training = threading.Thread(target=lambda: outcome.update(result=run_mlm(config)))
    with BusyNodes(threshold=0.5) as nodes:
        training.start()
        registered = scratch / "runs" / "mlm" / "checkpoint_manager_snapshot.json"  # the controller took one
        while not (registered.exists() and len(metrics.read_text().splitlines()) >= 7):
            time.sleep(0.1)
        removed = sorted(nodes.busy & set(workers))[0]
        cluster.remove_node(workers[removed])
        training.join()
    steps = [json.loads(line)["step"] for line in metrics.read_text().splitlines()]
    result = outcome["result"]
    ray.shutdown()
    cluster.shutdown()
    return {"steps": steps, "error": repr(result.error),
            "checkpoint": result.checkpoint.path}


class IsolatedAutoscalingCluster(AutoscalingCluster):
    """Ray's AutoscalingCluster on its own port and temp dir, stopped by ending its own process group rather
    than `ray stop --force` (which stops every Ray on the machine, the test session's included). The fake
    provider's base config is written here: Ray's wheel does not ship fake_multi_node/example.yaml."""

    def __init__(self, head_resources: dict, worker_node_types: dict, idle_timeout_minutes: float):
        self.port = free_port()
        self.temp_dir = tempfile.mkdtemp(prefix="ra", dir="/tmp")  # short: socket paths have a length limit
        self.address = f"{ray.util.get_node_ip_address()}:{self.port}"
        super().__init__(head_resources, worker_node_types, idle_timeout_minutes=idle_timeout_minutes)

    def _generate_config(self, head_resources, worker_node_types, autoscaler_v2=False, **config_kwargs):
        empty_lists = ("initialization_commands", "setup_commands", "head_setup_commands", "worker_setup_commands",
                       "head_start_ray_commands", "worker_start_ray_commands", "cluster_synced_files",
                       "rsync_exclude", "rsync_filter")
        return {
            "cluster_name": "fake_multinode", "max_workers": 8, "upscaling_speed": 1.0, "auth": {}, "docker": {},
            "provider": {"type": "fake_multinode", "use_node_id_as_ip": True, "disable_node_updaters": True,
                         "disable_launch_config_check": True, "gcs_address": self.address},
            "available_node_types": {**worker_node_types, "ray.head.default": {
                "resources": head_resources, "node_config": {}, "max_workers": 0}},
            "head_node_type": "ray.head.default", "file_mounts": {}, "file_mounts_sync_continuously": False,
            **{key: [] for key in empty_lists}, **config_kwargs,
        }

    def start(self, _system_config=None, override_env=None):
        config_path = Path(self.temp_dir) / "autoscaling.json"
        config_path.write_text(json.dumps(self._config))
        env = {**os.environ, "RAY_FAKE_CLUSTER": "1", "AUTOSCALER_UPDATE_INTERVAL_S": "1"}
        self.head = subprocess.Popen(
            [str(Path(sys.executable).parent / "ray"), "start", "--head", "--block", f"--port={self.port}",
             f"--autoscaling-config={config_path}", f"--temp-dir={self.temp_dir}", "--include-dashboard=false",
             f"--num-cpus={self._head_resources['CPU']}", "--disable-usage-stats"],
            env=env, start_new_session=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)

    def shutdown(self):
        for sig in (signal.SIGTERM, signal.SIGKILL):
            try:
                os.killpg(self.head.pid, sig)
                self.head.wait(timeout=20)
                break
            except (ProcessLookupError, subprocess.TimeoutExpired):
                continue


def autoscaling_from_cluster_yaml(scratch: Path) -> dict:
    """The worker node types of cluster/aws.yaml (CPUs scaled to 2 to fit this machine) on a fake autoscaling
    cluster: a GPU task makes the autoscaler add a gpu-worker node, which is released once idle."""
    launcher = yaml.safe_load((ROOT / "cluster" / "aws.yaml").read_text())
    node_types = {
        name: {"resources": {**spec["resources"], "CPU": 2}, "min_workers": 0,
               "max_workers": min(spec["max_workers"], 2), "node_config": {}}
        for name, spec in launcher["available_node_types"].items() if name != launcher["head_node_type"]
    }
    cluster = IsolatedAutoscalingCluster({"CPU": 1}, node_types, idle_timeout_minutes=0.25)
    cluster.start()
    try:
        deadline = time.monotonic() + 120
        while True:
            try:
                ray.init(address=cluster.address)
                break
            except Exception:  # the head is still starting
                if time.monotonic() > deadline:
                    raise
                time.sleep(2)
        started = time.monotonic()

        @ray.remote(num_gpus=1, num_cpus=1)
        def on_gpu_node() -> str:
            return ray.get_runtime_context().get_node_id()

        node_id = ray.get(on_gpu_node.remote(), timeout=240)
        scaled_up_s = time.monotonic() - started
        gpu_nodes_after_task = sum(1 for node in ray.nodes() if node["Alive"] and node["Resources"].get("GPU"))
        deadline = time.monotonic() + 240
        while any(node["Alive"] and node["Resources"].get("GPU") for node in ray.nodes()):
            if time.monotonic() > deadline:
                break
            time.sleep(2)
        released = not any(node["Alive"] and node["Resources"].get("GPU") for node in ray.nodes())
        ray.shutdown()
    finally:
        cluster.shutdown()
    return {"ran_on": node_id, "gpu_nodes_after_task": gpu_nodes_after_task, "scaled_up_s": round(scaled_up_s, 1),
            "released": released, "node_types": sorted(node_types)}


if __name__ == "__main__":
    scenario, scratch = sys.argv[1], Path(sys.argv[2])
    print(json.dumps(globals()[scenario](scratch)), flush=True)

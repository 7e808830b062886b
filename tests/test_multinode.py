"""Scale-out on one machine: ray.cluster_utils clusters of several nodes, each scenario in its own process
(tests/multinode_scenarios.py) so it never touches the test session's Ray."""

import json
import subprocess

from tests.conftest import BIN, ROOT, assert_resumed_from_a_checkpoint


def scenario(name: str, scratch) -> dict:
    finished = subprocess.run([str(BIN / "python"), "tests/multinode_scenarios.py", name, str(scratch)], cwd=ROOT,
                              capture_output=True, text=True, timeout=600)
    assert finished.returncode == 0, finished.stderr[-3000:]
    return json.loads(finished.stdout.strip().splitlines()[-1])


def test_embed_actors_spread_over_nodes_and_the_output_is_complete(tmp_path):
    seen = scenario("embed_on_two_nodes", tmp_path)
    assert seen == {"rows": 400, "errors": 0, "actor_nodes": 2}


def test_training_resumes_from_shared_storage_after_a_node_is_removed(tmp_path):
    seen = scenario("train_survives_node_removal", tmp_path)
    steps = seen["steps"]
    assert seen["error"] == "None" and steps[-1] == 40
    restarts = [i for i in range(1, len(steps)) if steps[i] <= steps[i - 1]]
    assert len(restarts) == 1, steps
    assert_resumed_from_a_checkpoint(steps[:restarts[0]], steps[restarts[0]], every=5)
    assert (tmp_path / "runs" / "mlm").is_dir() and seen["checkpoint"].startswith(str(tmp_path / "runs" / "mlm"))


def test_autoscaler_adds_a_node_type_from_the_cluster_yaml_and_releases_it(tmp_path):
    seen = scenario("autoscaling_from_cluster_yaml", tmp_path)
    assert seen["node_types"] == ["cpu-worker", "gpu-worker"]
    assert seen["gpu_nodes_after_task"] == 1  # the head has no GPU: the task ran on a node the autoscaler added
    assert seen["released"], "the idle gpu-worker node was not released"

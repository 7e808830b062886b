"""cluster/: the launcher YAMLs pass Ray's own validator and pin this project's version; the KubeRay manifests
name real jobs and configs, and the RayService's serveConfigV2 is serve/config.yaml."""

import tomllib

import pytest
import yaml
from ray.autoscaler._private.commands import prepare_config
from ray.autoscaler._private.util import validate_config

from raylib.config import (
    ContrastiveJobConfig,
    EmbedJobConfig,
    EvalJobConfig,
    MineJobConfig,
    MlmJobConfig,
    ServeAppConfig,
    load_config,
)
from raylib.recipe.config import RecipeConfig
from tests.conftest import ROOT

LAUNCHER_YAMLS = ["aws.yaml", "gcp.yaml", "local.yaml"]
JOB_SCHEMAS = {"embed": EmbedJobConfig, "pretrain_mlm": MlmJobConfig, "eval": EvalJobConfig,
               "train_contrastive": ContrastiveJobConfig, "mine_negatives": MineJobConfig, "recipe": RecipeConfig}
VERSION = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["version"]


def manifest(name: str) -> dict:
    return yaml.safe_load((ROOT / "cluster" / "kuberay" / name).read_text())


@pytest.mark.parametrize("name", LAUNCHER_YAMLS)
def test_launcher_yaml_passes_rays_validator_and_pins_the_project(name):
    config = yaml.safe_load((ROOT / "cluster" / name).read_text())
    validate_config(prepare_config(config))  # what `ray up` runs first
    assert any(f"@v{VERSION}" in command for command in config["setup_commands"])
    assert config["idle_timeout_minutes"] > 0


@pytest.mark.parametrize("name", ["aws.yaml", "gcp.yaml"])
def test_cloud_yaml_has_a_cpu_head_gpu_workers_and_cpu_workers(name):
    config = yaml.safe_load((ROOT / "cluster" / name).read_text())
    types = config["available_node_types"]
    assert types[config["head_node_type"]]["resources"] == {"CPU": 0}
    assert types["gpu-worker"]["resources"]["GPU"] == 8
    assert "GPU" not in types["cpu-worker"]["resources"]
    for worker in ("gpu-worker", "cpu-worker"):
        assert 0 <= types[worker]["min_workers"] < types[worker]["max_workers"]


def test_a_misspelled_key_is_refused_by_the_validator():
    config = yaml.safe_load((ROOT / "cluster" / "aws.yaml").read_text())
    config["available_node_types"]["gpu-worker"]["max_wokers"] = 2
    with pytest.raises(Exception, match="max_wokers"):
        validate_config(prepare_config(config))


def test_raycluster_autoscales_head_gpu_and_cpu_groups():
    cluster = manifest("raycluster.yaml")
    assert cluster["kind"] == "RayCluster" and cluster["spec"]["enableInTreeAutoscaling"] is True
    groups = {group["groupName"]: group for group in cluster["spec"]["workerGroupSpecs"]}
    assert set(groups) == {"gpu-worker", "cpu-worker"}
    gpu_limits = groups["gpu-worker"]["template"]["spec"]["containers"][0]["resources"]["limits"]
    assert gpu_limits["nvidia.com/gpu"] == "8"
    assert all(group["minReplicas"] < group["maxReplicas"] for group in groups.values())


@pytest.mark.parametrize("job", sorted(JOB_SCHEMAS))
def test_a_rayjob_per_job_whose_config_loads(job):
    rayjob = manifest(f"rayjob-{job.replace('_', '-')}.yaml")
    assert rayjob["kind"] == "RayJob"
    assert rayjob["spec"]["clusterSelector"] == {"ray.io/cluster": manifest("raycluster.yaml")["metadata"]["name"]}
    command = rayjob["spec"]["entrypoint"].split("&&")[-1].split()
    assert command[:2] == ["python", f"jobs/{job}.py"] and (ROOT / command[1]).is_file()
    load_config(ROOT / command[command.index("--config") + 1], JOB_SCHEMAS[job])


def test_every_job_has_a_rayjob():
    jobs = {path.stem for path in (ROOT / "jobs").glob("*.py") if path.stem != "__init__"}
    assert jobs == set(JOB_SCHEMAS)


def test_rayservice_serve_config_is_serve_config_yaml():
    service = manifest("rayservice.yaml")
    served = yaml.safe_load(service["spec"]["serveConfigV2"])
    expected = yaml.safe_load((ROOT / "serve" / "config.yaml").read_text())
    assert served["http_options"].pop("host") == "0.0.0.0"  # reachable from the Kubernetes Service
    expected["http_options"].pop("host")
    assert served == expected, "cluster/kuberay/rayservice.yaml drifted from serve/config.yaml"
    ServeAppConfig.model_validate(served["applications"][0]["args"])


def test_rayservice_gives_every_ray_container_the_api_key_from_a_secret():
    service = manifest("rayservice.yaml")
    key_env = ServeAppConfig.model_validate(
        yaml.safe_load(service["spec"]["serveConfigV2"])["applications"][0]["args"]).api_key_env
    for container in ray_containers(service["spec"]["rayClusterConfig"]):
        env = {item["name"]: item for item in container.get("env", [])}
        assert env[key_env]["valueFrom"]["secretKeyRef"]["name"] == "raylib-api-key", container["name"]


def ray_containers(cluster_spec: dict) -> list[dict]:
    groups = [cluster_spec["headGroupSpec"], *cluster_spec["workerGroupSpecs"]]
    return [container for group in groups for container in group["template"]["spec"]["containers"]]


@pytest.mark.parametrize("name", LAUNCHER_YAMLS)
def test_every_launcher_node_starts_ray_with_the_haproxy_ingress(name):
    config = yaml.safe_load((ROOT / "cluster" / name).read_text())
    for commands in (config["head_start_ray_commands"], config["worker_start_ray_commands"]):
        starts = [command for command in commands if "ray start" in command]
        assert starts and all("RAY_SERVE_ENABLE_HA_PROXY=1 " in command for command in starts), starts


def test_every_kuberay_container_enables_the_haproxy_ingress():
    specs = [manifest("raycluster.yaml")["spec"], manifest("rayservice.yaml")["spec"]["rayClusterConfig"]]
    for container in (container for spec in specs for container in ray_containers(spec)):
        env = {item["name"]: item.get("value") for item in container.get("env", [])}
        assert env.get("RAY_SERVE_ENABLE_HA_PROXY") == "1", container["name"]

"""The embed and MLM jobs through `ray job submit --working-dir .` against a `ray start --head` cluster of its
own; the MLM job as on a cloud cluster, with its data and checkpoints in a bucket."""

import json
import os
import secrets
import shutil
import signal
import subprocess
import tempfile
import time
from pathlib import Path

import httpx
import pyarrow.dataset as pads
import pyarrow.fs as pafs
import pytest

from raylib.models.embedder import Embedder
from raylib.models.spec import resolve_spec
from raylib.runtime import free_port
from tests.conftest import BIN, ROOT, write_jsonl


@pytest.fixture(scope="module")
def head_node():
    """A head node on 127.0.0.1 with its own temp dir and ports; yields the dashboard address."""
    temp_dir = tempfile.mkdtemp(prefix="rh", dir="/tmp")  # short: Ray's socket paths have a length limit
    dashboard = free_port()
    env = {key: value for key, value in os.environ.items() if key != "RAY_ADDRESS"}
    env["PATH"] = f"{BIN}{os.pathsep}{env['PATH']}"  # the job's `python` is this environment's
    env.update(RAY_AUTH_MODE="token", RAY_AUTH_TOKEN=secrets.token_hex(32))  # the cluster's own token
    env["RAY_TRAIN_ENABLE_STATE_TRACKING"] = "1"  # the dashboard's view of Train runs (what must hold no secret)
    command = [
        str(BIN / "ray"), "start", "--head", "--block", "--node-ip-address=127.0.0.1", f"--port={free_port()}",
        "--num-cpus=2", f"--temp-dir={temp_dir}", "--include-dashboard=true", "--dashboard-host=127.0.0.1",
        f"--dashboard-port={dashboard}", f"--dashboard-agent-listen-port={free_port()}",
        f"--ray-client-server-port={free_port()}", "--disable-usage-stats",
    ]
    head = subprocess.Popen(command, env=env, start_new_session=True, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    address = f"http://127.0.0.1:{dashboard}"
    try:
        deadline = time.time() + 120
        while True:
            assert head.poll() is None, "ray start exited"
            try:
                headers = {"Authorization": f"Bearer {env['RAY_AUTH_TOKEN']}"}
                if httpx.get(f"{address}/api/version", headers=headers, timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            assert time.time() < deadline, "the head node's dashboard did not come up"
            time.sleep(1)
        yield address, env
    finally:
        os.killpg(head.pid, signal.SIGTERM)
        try:
            head.wait(timeout=10)
        except subprocess.TimeoutExpired:
            os.killpg(head.pid, signal.SIGKILL)
        shutil.rmtree(temp_dir, ignore_errors=True)


def submit(address: str, env: dict, config: Path, job: str = "embed") -> subprocess.CompletedProcess:
    return subprocess.run(
        [str(BIN / "ray"), "job", "submit", "--address", address, "--working-dir", str(ROOT),
         "--runtime-env-json", json.dumps({"env_vars": {
             "OMP_NUM_THREADS": "1", "RAY_TRAIN_ENABLE_STATE_TRACKING": env["RAY_TRAIN_ENABLE_STATE_TRACKING"]}}),
         "--",
         "python", f"jobs/{job}.py", "--config", str(config)],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=600,
    )


def test_embed_job_through_ray_job_submit(head_node, tmp_path, documents):
    address, env = head_node
    write_jsonl(tmp_path / "in" / "docs.jsonl", documents[:60])
    config = tmp_path / "embed.yaml"
    config.write_text(f"input: {{path: {tmp_path / 'in'}}}\noutput: {{path: {tmp_path / 'out'}}}\n"
                      "compute: {actors: 1, cpus_per_actor: 1}\n")
    done = submit(address, env, config)
    assert "succeeded" in done.stdout, done.stdout + done.stderr
    assert "embedded rows=60 errors=0" in done.stdout
    assert "log: /" in done.stdout and "core_worker" not in done.stdout  # the driver's Ray lines: in its log file
    assert len(pads.dataset(str(tmp_path / "out"), format="parquet").to_table()) == 60

    config.write_text("input: {path: /no/such/input}\noutput: {path: /tmp/unused}\n")
    failed = submit(address, env, config)
    assert "failed" in failed.stdout.lower(), failed.stdout + failed.stderr
    assert "input.path: /no/such/input does not exist" in failed.stdout + failed.stderr


def test_training_job_through_ray_job_submit_with_data_and_checkpoints_in_a_bucket(head_node, s3, tmp_path,
                                                                                   documents):
    address, env = head_node
    endpoint, fs = s3
    fs.create_dir("mlm")
    with fs.open_output_stream("mlm/docs/docs.jsonl") as out:
        out.write("".join(json.dumps({"text": doc["text"]}) + "\n" for doc in documents[:200]).encode())
    options = f"?endpoint_override={endpoint}"
    secret = "testing:train-secret-7f3a"  # credentials in the URIs (the local server takes any)
    config = tmp_path / "mlm.yaml"
    config.write_text(json.dumps({
        "data": {"path": f"s3://{secret}@mlm/docs{options}", "id_column": None},
        "architecture": {"n_embd": 64, "n_head": 4, "n_layer": 2, "n_inner": 256, "max_trained_positions": 64},
        "seq_len": 64, "batch_size": 4, "precision": "fp32", "optim": {"max_steps": 6},
        "scaling": {"num_workers": 2, "cpus_per_worker": 0.75, "threads_per_worker": 1},
        "checkpoint": {"storage_path": f"s3://{secret}@mlm/runs{options}", "name": "submitted", "every_steps": 3},
    }))
    done = submit(address, env, config, job="pretrain_mlm")
    assert "succeeded" in done.stdout, done.stdout[-3000:] + done.stderr[-3000:]
    published = f"s3://mlm/runs/submitted/model{options}"
    assert "pretrained steps=6" in done.stdout and "model=s3://***@mlm/runs/submitted/model" in done.stdout
    assert secret not in done.stdout + done.stderr

    # Ray Train's stored state of the run, as its dashboard serves it: the config is there, its secrets are not
    headers = {"Authorization": f"Bearer {env['RAY_AUTH_TOKEN']}"}
    runs = httpx.get(f"{address}/api/train/v2/runs/v1", headers=headers, timeout=30)
    assert runs.status_code == 200 and "submitted" in runs.text and "s3://***@mlm/docs" in runs.text, runs.text[:2000]
    assert secret.split(":")[1] not in runs.text
    with fs.open_input_stream("mlm/runs/submitted/run_config.json") as record:
        assert secret.split(":")[1] not in record.read().decode()

    stored = [info.path for info in fs.get_file_info(pafs.FileSelector("mlm/runs/submitted", recursive=True))]
    assert sum(path.endswith("/model/model.safetensors") and "/checkpoint_" in path for path in stored) == 2
    with fs.open_input_stream("mlm/runs/submitted/metrics.jsonl") as stored_metrics:
        assert [json.loads(line)["step"] for line in stored_metrics.read().splitlines()] == list(range(1, 7))
    assert any("/tensorboard/events.out.tfevents" in path for path in stored)
    model = Embedder(resolve_spec(path=published))  # the next job's model.path
    assert model.encode(["a sentence to embed"]).shape == (1, 64)

"""Shared fixtures: one local Ray for the whole session, the sample corpus, the bundled model."""

import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import pyarrow.fs as pafs
import pytest
import ray
from moto.server import ThreadedMotoServer

from raylib.data.sample_corpus import sample_documents
from raylib.models.embedder import Embedder
from raylib.models.spec import resolve_model_path, resolve_spec
from raylib.runtime import free_port

os.environ.setdefault("HF_HUB_OFFLINE", "1")
# Object storage in tests is a local S3 server (test_object_storage.py) that takes any credentials; these
# fake ones reach the Ray workers too, and keep any real account's keys away from the tests.
os.environ.update(AWS_ACCESS_KEY_ID="testing", AWS_SECRET_ACCESS_KEY="testing", AWS_EC2_METADATA_DISABLED="true")
os.environ["RAYLIB_CACHE_DIR"] = tempfile.mkdtemp(prefix="raylib-cache-")  # copies of remote models
# Serve as serve/config.yaml says to: HAProxy (bundled by ray[serve]) takes HTTP straight to the replicas; its
# statistics and metrics ports (fixed by default: 8404, 9101) free ones, beside any other HAProxy on this machine
os.environ["RAY_SERVE_ENABLE_HA_PROXY"] = "1"
os.environ.update(RAY_SERVE_HAPROXY_STATS_PORT=str(free_port()), RAY_SERVE_HAPROXY_METRICS_PORT=str(free_port()))

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent  # the virtual environment's scripts: ray, serve


@pytest.fixture(scope="session")
def ray_session():
    """A real local Ray with 2 CPUs; yields its address so subprocess drivers can join it."""
    ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield ray.get_runtime_context().gcs_address
    ray.shutdown()


@pytest.fixture(scope="session")
def s3():
    """(endpoint URL, filesystem) of a local S3 server on 127.0.0.1; URIs reach it with
    `?endpoint_override=<endpoint>`, as with MinIO."""
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    endpoint = f"http://{host}:{port}"
    yield endpoint, pafs.S3FileSystem(endpoint_override=endpoint, region="us-east-1", allow_bucket_creation=True)
    server.stop()


@pytest.fixture(scope="session")
def documents() -> list[dict]:
    """600 real documents {id, text} of mixed length."""
    return sample_documents(600)


@pytest.fixture(scope="session")
def embedder() -> Embedder:
    return Embedder(resolve_spec())


def copy_bundled_tokenizer(directory: Path) -> None:
    """Put the bundled model's tokenizer (bert-base-uncased's) into a model directory."""
    bundled = resolve_model_path("bundled")
    for name in ("tokenizer.json", "tokenizer_config.json", "vocab.txt", "special_tokens_map.json"):
        if (bundled / name).is_file():
            shutil.copy(bundled / name, directory / name)


def write_jsonl(path, rows) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))


def assert_resumed_from_a_checkpoint(before: list[int], resumed_at: int, every: int) -> None:
    """A restarted run went on from a checkpoint the failed one saved (not from step 0, not past the failure):
    `before` holds the steps logged before the restart."""
    assert 1 < resumed_at <= before[-1] + 1 and (resumed_at - 1) % every == 0, (before, resumed_at)


# The start of a script run by `python -I` from outside the repository, the editable install's finders removed:
# raylib (and tests) cannot be imported, as on a machine that only has the model directory.
WITHOUT_RAYLIB = """
import importlib.util, sys
sys.meta_path = [f for f in sys.meta_path if "__editable__" not in getattr(f, "__module__", "")]
sys.path_hooks = [h for h in sys.path_hooks if "__editable__" not in getattr(h, "__module__", "")]
sys.path_importer_cache.clear()
assert importlib.util.find_spec("raylib") is None and importlib.util.find_spec("tests") is None
"""


def run_without_raylib(script: str, *args: str, cwd: Path) -> None:
    """Run WITHOUT_RAYLIB + `script` with `args` in `cwd` (offline); fails the test with its stderr."""
    env = {"PATH": "/usr/bin:/bin", "HOME": str(cwd), "HF_HUB_OFFLINE": "1", "HF_MODULES_CACHE": str(cwd / "hf_modules")}
    done = subprocess.run([sys.executable, "-I", "-c", WITHOUT_RAYLIB + script, *args], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]

"""Object storage (a local S3 server): the embed job reads its input, model and writes its output in buckets;
a model directory in a bucket is copied once per machine, weights only where the model is loaded; training
metrics reach the bucket. (The MLM job with its data and checkpoints in a bucket: test_job_submit.py.)"""

import fcntl
import json
import threading
import time

import boto3
import numpy as np
import pyarrow as pa
import pyarrow.dataset as pads
import pyarrow.fs as pafs
import pyarrow.parquet as pq
import pytest

from raylib.config import CheckpointConfig, ConfigError, JobError
from raylib.embed.run import run_embed
from raylib.embed.store import LEASE_FILE, OutputStore
from raylib.models.embedder import Embedder
from raylib.models.spec import fetch_weights, resolve_model_path, resolve_spec
from raylib.storage import (
    PUBLISHED,
    conditional_object,
    copy_location,
    local_copy,
    publish_remote,
    remote_files,
)
from raylib.train.metrics import MetricsLog
from tests.test_embed_pipeline import job_config

SECRET = "testing:top-secret-key"  # user info in a URI: the local server takes any credentials


def upload_bundled_model(fs: pafs.FileSystem, path: str) -> None:
    fs.create_dir(path.split("/")[0])
    pafs.copy_files(str(resolve_model_path("bundled")), path, source_filesystem=pafs.LocalFileSystem(),
                    destination_filesystem=fs)


def test_embed_job_reads_and_writes_buckets_and_resumes_from_its_manifest(ray_session, s3, documents, embedder):
    endpoint, fs = s3
    upload_bundled_model(fs, "models/minilm")
    fs.create_dir("corpus")
    rows = documents[:120]
    for shard in range(2):
        part = rows[shard::2]
        pq.write_table(pa.table({"id": [row["id"] for row in part], "text": [row["text"] for row in part]}),
                       f"corpus/docs/shard-{shard}.parquet", filesystem=fs, row_group_size=20)
    options = f"?endpoint_override={endpoint}"
    config = job_config(f"s3://corpus/docs{options}", f"s3://{SECRET}@corpus/vectors{options}",
                        input={"rows_per_piece": 20}, model={"path": f"s3://{SECRET}@models/minilm{options}"})

    summary = run_embed(config)
    assert (summary.rows, summary.errors, summary.pieces) == (120, 0, 6)
    assert "output=s3://***@corpus/vectors" in summary.line() and SECRET not in summary.line()
    with fs.open_input_stream("corpus/vectors/_manifest/_job.json") as handle:
        recorded = json.loads(handle.read())
    assert recorded["model.path"].startswith("s3://***@models/minilm") and SECRET not in json.dumps(recorded)
    written = {info.path for info in fs.get_file_info(pafs.FileSelector("corpus/vectors", recursive=True))}
    manifest = [path.split("/")[-1] for path in written if path.startswith("corpus/vectors/_manifest/")]
    assert "_job.json" in manifest and sum(not name.startswith("_") for name in manifest) == 6
    assert not any(path.startswith("corpus/vectors/_tmp/") and path.endswith(".parquet") for path in written)

    table = pads.dataset("corpus/vectors", filesystem=fs, format="parquet").to_table()
    ids = table.column("id").to_pylist()
    assert sorted(ids) == sorted(row["id"] for row in rows) and len(set(ids)) == len(ids)
    by_id = dict(zip(ids, np.array(table.column("embedding").to_pylist(), dtype=np.float32)))
    got = np.stack([by_id[row["id"]] for row in rows])
    expected = embedder.encode([row["text"] for row in rows])
    assert np.abs((got * expected).sum(1) - 1).max() < 1e-4

    again = run_embed(config)
    assert (again.rows, again.skipped_pieces) == (0, 6)


def test_remote_model_is_copied_without_weights_until_loaded_and_again_when_republished(s3, embedder):
    endpoint, fs = s3
    upload_bundled_model(fs, "models/republished")
    model_path = f"s3://models/republished?endpoint_override={endpoint}"

    spec = resolve_spec(model_path)
    assert (spec.directory / "tokenizer.json").is_file() and (spec.directory / "1_Pooling" / "config.json").is_file()
    assert not (spec.directory / "model.safetensors").exists()  # a driver checking the config fetches no weights
    assert fetch_weights(spec) == spec.directory and (spec.directory / "model.safetensors").is_file()
    fetched_at = (spec.directory / "model.safetensors").stat().st_mtime_ns
    texts = ["how do I sort a list", "open a file for reading"]
    assert np.allclose(Embedder(spec).encode(texts), embedder.encode(texts), atol=1e-6)
    assert resolve_spec(model_path).directory == spec.directory  # a second process reuses the copy
    assert (spec.directory / "model.safetensors").stat().st_mtime_ns == fetched_at

    with fs.open_output_stream("models/republished/config_sentence_transformers.json") as out:
        out.write(b'{"prompts": {"query": "query: "}}')
    republished = resolve_spec(model_path)
    assert republished.directory != spec.directory and republished.prefixes["query"] == "query: "


@pytest.mark.parametrize("path, message", [
    ("models/empty", "model.path: s3://models/empty.* is not a directory"),
    ("models/no-weights", "model.path: s3://models/no-weights.* has no safetensors weights"),
    (f"{SECRET}@models/empty", r"model.path: s3://\*\*\*@models/empty.* is not a directory"),
])
def test_remote_model_without_weights_is_a_config_error(s3, path, message):
    endpoint, fs = s3
    fs.create_dir("models")
    with fs.open_output_stream("models/no-weights/config.json") as out:
        out.write(b"{}")
    with pytest.raises(ConfigError, match=message) as error:
        resolve_spec(path=f"s3://{path}?endpoint_override={endpoint}")
    assert SECRET not in str(error.value)


def test_processes_copying_one_remote_model_at_once_take_turns(s3):
    endpoint, fs = s3
    upload_bundled_model(fs, "models/contended")
    uri = f"s3://models/contended?endpoint_override={endpoint}"
    files = remote_files(uri)
    copy = copy_location(uri, files)
    copy.parent.mkdir(parents=True, exist_ok=True)
    with open(copy.with_name(f"{copy.name}.lock"), "a") as held:  # another process is fetching this copy
        fcntl.flock(held, fcntl.LOCK_EX)
        copier = threading.Thread(target=local_copy, args=(uri, files))
        copier.start()
        copier.join(1.0)
        assert copier.is_alive()  # waits for the holder instead of downloading the same files again
        assert not any(path.is_file() for path in copy.rglob("*"))
        fcntl.flock(held, fcntl.LOCK_UN)
    copier.join(60)
    assert not copier.is_alive()
    assert {str(path.relative_to(copy)) for path in copy.rglob("*") if path.is_file()} == set(files)


def test_a_remote_key_that_would_land_outside_the_local_copy_is_refused_before_copying(s3, tmp_path, monkeypatch):
    endpoint, fs = s3
    monkeypatch.setenv("RAYLIB_CACHE_DIR", str(tmp_path / "cache"))
    fs.create_dir("models")
    bucket = boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1")
    # raw keys (pyarrow can't write `..`); reading the second, pyarrow's client asks for models/escaped.txt
    for key in ("runs/r1/model/config.json", "runs/r1/model/../../../escaped.txt", "escaped.txt"):
        bucket.put_object(Bucket="models", Key=key, Body=b"{}")
    uri = f"s3://{SECRET}@models/runs/r1/model?endpoint_override={endpoint}"
    files = remote_files(uri)
    assert "../../../escaped.txt" in files
    with pytest.raises(ValueError) as error:
        local_copy(uri, files)
    message = str(error.value)
    assert "s3://***@models/runs/r1/model" in message and "'../../../escaped.txt'" in message and SECRET not in message
    assert list(tmp_path.iterdir()) == []  # nothing copied: no tmp_path/escaped.txt, not even the cache folder


def test_training_metrics_are_copied_to_the_bucket_and_a_restarted_run_continues_them(s3):
    endpoint, fs = s3
    fs.create_dir("metrics")
    checkpoint = CheckpointConfig(storage_path=f"s3://metrics/runs?endpoint_override={endpoint}", name="run")
    first = MetricsLog(checkpoint, rank=0)
    first.write({"step": 1, "loss": 2.0})
    assert fs.get_file_info("metrics/runs/run/metrics.jsonl").type == pafs.FileType.NotFound  # not yet due
    first.write({"step": 2, "loss": 1.5}, checkpointed=True)
    MetricsLog(checkpoint, rank=1).write({"step": 2, "loss": 9.0}, checkpointed=True)  # only rank 0 logs

    restarted = MetricsLog(checkpoint, rank=0)  # e.g. on another node after a failure
    restarted.write({"step": 3, "loss": 1.0}, checkpointed=True)
    with fs.open_input_stream("metrics/runs/run/metrics.jsonl") as stored:
        assert [json.loads(line) for line in stored.read().splitlines()] == [
            {"step": 1, "loss": 2.0}, {"step": 2, "loss": 1.5}, {"step": 3, "loss": 1.0}]
    events = fs.get_file_info(pafs.FileSelector("metrics/runs/run/tensorboard"))
    assert len([info for info in events if "tfevents" in info.path]) == 2  # one file per writer


def test_an_s3_output_lease_is_taken_by_conditional_writes_one_run_at_a_time(s3):
    endpoint, fs = s3
    fs.create_dir("leases")
    uri = f"s3://{SECRET}@leases/out?endpoint_override={endpoint}"
    lease_object = conditional_object(uri, LEASE_FILE)
    with OutputStore(uri).lease(2.0) as first:
        assert first.etag == lease_object.read()[1]  # made by a create-if-absent write, no settle wait
        with pytest.raises(ConfigError, match="being written by another run") as error:
            OutputStore(uri).lease(2.0).__enter__()
        assert SECRET not in str(error.value)
        time.sleep(1.5)  # heartbeats replace the lease only if it is still the one this run wrote
        assert json.loads(lease_object.read()[0])["owner"] == first.record["owner"] and not first.lost
        # another writer changes the lease in between (a run that took it over): the next heartbeat loses it; a
        # heartbeat landing between this read and write makes the write fail, so it tries the new version
        assert any(lease_object.replace(b'{"owner": "other", "heartbeat": 0}', lease_object.read()[1])
                   for _ in range(5))
        time.sleep(1.0)
        assert first.lost
        with pytest.raises(JobError, match="took over"):
            first.check()

    # a stale lease (its run was killed) is taken over, by exactly one of two runs racing for it
    stale_etag = lease_object.read()[1]
    assert lease_object.replace(b'{"owner": "racer", "heartbeat": 1}', stale_etag)
    assert lease_object.replace(b'{"owner": "loser", "heartbeat": 1}', stale_etag) is None
    assert lease_object.create(b"{}") is None  # create-if-absent refuses an existing lease
    with OutputStore(uri).lease(2.0) as taker:  # "racer"'s heartbeat is decades old: stale, taken over
        assert json.loads(lease_object.read()[0])["owner"] == taker.record["owner"]
    assert lease_object.read() is None  # released at the end


def test_a_model_published_to_a_bucket_switches_versions_with_one_pointer_write(s3):
    endpoint, fs = s3
    upload_bundled_model(fs, "pub/ckpt-a/model")
    upload_bundled_model(fs, "pub/ckpt-b/model")
    with fs.open_output_stream("pub/ckpt-b/model/marker.txt") as out:
        out.write(b"b")
    uri = f"s3://{SECRET}@pub/run/model?endpoint_override={endpoint}"

    publish_remote(fs, "pub/ckpt-a/model", "pub/run/model")
    first = resolve_spec(uri).source  # the model path follows the pointer to one version
    assert first != uri and first.startswith(f"s3://{SECRET}@pub/run/model-") and "marker.txt" not in remote_files(first)
    publish_remote(fs, "pub/ckpt-b/model", "pub/run/model")
    second = resolve_spec(uri)
    assert second.source != first and (fetch_weights(second) / "marker.txt").read_text() == "b"
    assert set(remote_files(first)) == set(remote_files(f"s3://pub/ckpt-a/model?endpoint_override={endpoint}"))
    publish_remote(fs, "pub/ckpt-a/model", "pub/run/model")  # the previous version stays, older ones go
    assert remote_files(first) == {} and set(remote_files(second.source)) >= {"marker.txt"}
    assert set(remote_files(uri)) == {PUBLISHED}

    with fs.open_output_stream(f"pub/run/model/{PUBLISHED}") as out:
        out.write(b'{"version": "../../elsewhere"}')
    with pytest.raises(ConfigError, match="does not name a published version") as error:
        resolve_spec(uri)
    assert SECRET not in str(error.value)

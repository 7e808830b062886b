"""The `raylib` console script: a job end to end on its own Ray and on the session's, config keys in --help,
starter configs, one-line errors."""

import os
import subprocess
from pathlib import Path

import pyarrow.dataset as pads
import pytest
import yaml

from raylib.cli import JOBS, config_keys, starter
from raylib.config import EmbedJobConfig, validate_config
from tests.conftest import BIN, ROOT, write_jsonl


def raylib(*args, env=None) -> subprocess.CompletedProcess:
    return subprocess.run([str(BIN / "raylib"), *args], cwd=ROOT, capture_output=True, text=True, timeout=180,
                          env={**os.environ, **(env or {})})


def test_embed_runs_end_to_end_on_its_own_ray_then_joining_one(ray_session, tmp_path, documents):
    write_jsonl(tmp_path / "in" / "docs.jsonl", documents[:20])
    config = {"input": {"path": str(tmp_path / "in")}, "output": {"path": str(tmp_path / "out")},
              "compute": {"actors": 1, "cpus_per_actor": 1, "threads_per_actor": 1}}
    (tmp_path / "embed.yaml").write_text(yaml.safe_dump(config))
    embedded = {key: value for key, value in os.environ.items() if key not in ("RAY_ADDRESS", "RAYLIB_DASHBOARD")}
    done = subprocess.run([str(BIN / "raylib"), "embed", "--config", str(tmp_path / "embed.yaml")], cwd=ROOT,
                          capture_output=True, text=True, timeout=300, env=embedded)

    assert done.returncode == 0, done.stderr[-3000:]
    assert "rows=20 errors=0" in done.stdout.strip().splitlines()[-1]
    ids = pads.dataset(str(tmp_path / "out"), format="parquet").to_table().column("id").to_pylist()
    assert sorted(ids) == sorted(doc["id"] for doc in documents[:20])

    # quiet: the summary, progress lines (a non-terminal gets one at most every 30 s) and the log file's name
    assert done.stdout.count("\n") == 1, done.stdout
    *progress, named = done.stderr.splitlines()
    assert all(line.startswith("embedding: ") for line in progress), done.stderr
    log = Path(named.split()[1])
    assert named.startswith("log: ") and log.name.startswith("raylib-embed-"), done.stderr
    text = log.read_text()
    assert "core_worker.cc" in text  # the driver's native stderr, caught too
    assert "Started a local Ray instance" in text and "View the dashboard" not in text  # RAYLIB_DASHBOARD=1 adds it
    log.unlink()

    verbose = raylib("embed", "--config", str(tmp_path / "embed.yaml"), "--verbose", env={"RAY_ADDRESS": ray_session})
    assert verbose.returncode == 0 and "skipped=1" in verbose.stdout, verbose.stderr[-3000:]
    assert "Connect" in verbose.stderr and "log: " not in verbose.stderr  # Ray's own lines, here


def test_job_help_lists_nested_keys_with_type_default_and_comment():
    done = raylib("embed", "--help")
    assert done.returncode == 0
    line = next(line for line in done.stdout.splitlines() if line.strip().startswith("compute.threads_per_actor"))
    assert "int|null >0 = null" in line and "# torch intra-op threads; None: cpus_per_actor rounded up" in line


def test_keys_take_comments_above_fields_from_base_classes_and_descriptions():
    embed = {key: (kind, comment) for key, kind, comment in config_keys(EmbedJobConfig)}
    assert embed["output.calibration_rows"] == ("int >1 = 2048", "int8: rows of the input whose vectors set the "
                                                "calibration ranges (once per output, raylib/embed/calibrate.py)")
    assert embed["model.path"][1].startswith("a model directory")  # a Field description
    assert embed["input.path"][0] == "str, required"
    train = {key: comment for key, _, comment in config_keys(JOBS["train"].schema)}
    assert train["checkpoint.storage_path"].startswith("local path or s3://")  # TrainingJobConfig's field
    assert train["datasets[].weight"] == "share of steps drawn from this dataset"


def leaf_keys(data, prefix=""):
    for key, value in data.items():
        if isinstance(value, dict) and value:
            yield from leaf_keys(value, f"{prefix}{key}.")
        elif isinstance(value, list) and value and isinstance(value[0], dict):
            for item in value:
                yield from leaf_keys(item, f"{prefix}{key}[].")
        else:
            yield prefix + key


@pytest.mark.parametrize("name", JOBS)
def test_starter_config_loads_and_help_lists_its_keys(name):
    data = yaml.safe_load(starter(name))
    validate_config(data, JOBS[name].schema, f"raylib config {name}")
    listed = {key for key, _, _ in config_keys(JOBS[name].schema)}
    free = {key for key, kind, _ in config_keys(JOBS[name].schema) if kind.startswith("dict")}  # any keys inside
    assert {key for key in leaf_keys(data) if key.split(".")[0] not in free} - listed == set()


def test_config_embed_prints_an_embed_config():
    done = raylib("config", "embed")
    assert done.returncode == 0 and done.stdout.startswith("#")
    assert isinstance(validate_config(yaml.safe_load(done.stdout), EmbedJobConfig, "stdout"), EmbedJobConfig)


def test_bad_config_is_one_line_and_exit_2(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text("input: {path: x}\noutput: {path: y}\ncompute: {actors: 0}\n")
    done = raylib("embed", "--config", str(path))
    assert done.returncode == 2
    assert done.stderr.strip().splitlines() == [
        f"config error: {path}: compute.actors: Input should be greater than 0 (got 0); fix the value"]


def test_unknown_subcommand_exits_2():
    done = raylib("serve-everything")
    assert done.returncode == 2 and "invalid choice: 'serve-everything'" in done.stderr

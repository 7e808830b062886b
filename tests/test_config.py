"""Bad configs fail with one line naming the file, the key and the fix, exit code 2, before any Ray work."""

import subprocess
import sys
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from raylib.config import (
    ContrastiveJobConfig,
    EmbedJobConfig,
    EvalJobConfig,
    MineJobConfig,
    MlmJobConfig,
    job_main,
    load_config,
)
from raylib.embed.run import run_embed
from tests.conftest import ROOT

SCHEMA_BY_PREFIX = {"embed": EmbedJobConfig, "eval": EvalJobConfig, "pretrain_mlm": MlmJobConfig,
                    "contrastive": ContrastiveJobConfig, "nvembed": ContrastiveJobConfig, "mine": MineJobConfig}


@pytest.mark.parametrize("path", sorted((ROOT / "jobs" / "configs").glob("*.yaml")), ids=lambda path: path.name)
def test_every_shipped_config_loads(path):
    schema = next(schema for prefix, schema in SCHEMA_BY_PREFIX.items() if path.name.startswith(prefix))
    load_config(path, schema)


def run_job(config_path: Path, capsys) -> tuple[int, str]:
    code = job_main("embed", EmbedJobConfig, run_embed, ["--config", str(config_path)])
    return code, capsys.readouterr().err


@pytest.mark.parametrize(
    ("yaml_text", "expected"),
    [
        ("input: {path: x}\noutput: {path: y}\ncompute: {actorz: 2}\n",
         "compute.actorz: unknown key; remove it or fix its spelling (allowed: actors, cpus_per_actor"),
        ("input: {path: x}\noutput: {path: y}\ncompute: {actors: two}\n",
         "compute.actors: Input should be a valid integer"),
        ("input: {path: x}\n", "output: required key is missing; add it"),
        ("input: {path: x}\noutput: {path: y, dtype: int4}\n",
         "output.dtype: Input should be 'float32', 'float16', 'int8' or 'binary'"),
        ("input: [unclosed\n", "line 2: not valid YAML"),
        ("- a list\n", "top level must be a mapping of keys"),
        ("input: {path: /no/such/dir}\noutput: {path: y}\n", "input.path: /no/such/dir does not exist"),
    ],
)
def test_bad_config_names_the_key(tmp_path, capsys, yaml_text, expected):
    path = tmp_path / "bad.yaml"
    path.write_text(yaml_text)
    code, err = run_job(path, capsys)
    assert code == 2
    assert err.count("\n") == 1 and err.startswith(f"config error: {path}") and expected in err


def test_missing_file(tmp_path, capsys):
    code, err = run_job(tmp_path / "nope.yaml", capsys)
    assert code == 2 and "nope.yaml: config file not found; pass an existing YAML file with --config" in err


def test_missing_parquet_column_and_bad_model_dir(tmp_path, capsys):
    pq.write_table(pa.table({"id": [1], "body": ["x"]}), tmp_path / "a.parquet")
    path = tmp_path / "c.yaml"
    path.write_text(f"input: {{path: {tmp_path}}}\noutput: {{path: {tmp_path}/out}}\n")
    code, err = run_job(path, capsys)
    assert code == 2 and "input.text_column: " in err and "has no column 'text'" in err

    path.write_text(f"input: {{path: {tmp_path}, text_column: body}}\noutput: {{path: {tmp_path}/out}}\n"
                    f"model: {{path: {tmp_path}}}\n")
    code, err = run_job(path, capsys)
    assert code == 2 and "model.path: " in err and "no safetensors weights" in err
    assert not (tmp_path / "out").exists()  # nothing was written


def test_job_script_exits_2_before_starting_ray(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text("input: {path: x}\noutput: {path: y}\nmodel: {pooling: max}\n")
    done = subprocess.run([sys.executable, "jobs/embed.py", "--config", str(path)], cwd=ROOT, capture_output=True,
                          text=True, timeout=120)
    assert done.returncode == 2
    assert done.stderr.strip().splitlines() == [
        f"config error: {path}: model.pooling: Input should be 'mean', 'cls', 'last' or 'latent' (got 'max'); fix the value"
    ]
    assert "Ray" not in done.stdout + done.stderr

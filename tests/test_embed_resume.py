"""Kill the embed job's driver with SIGKILL mid-run, run it again: every id exactly once, same vectors."""

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pyarrow.dataset as pads

from tests.conftest import ROOT, write_jsonl


def vectors_by_id(path: Path) -> dict:
    table = pads.dataset(str(path), format="parquet").to_table()
    ids = table.column("id").to_pylist()
    assert len(ids) == len(set(ids)), "an id was written twice"
    return dict(zip(ids, np.array(table.column("embedding").to_pylist(), dtype=np.float32)))


def start_job(config: Path, ray_address: str) -> subprocess.Popen:
    env = {**os.environ, "RAY_ADDRESS": ray_address}
    return subprocess.Popen([sys.executable, "jobs/embed.py", "--config", str(config)], cwd=ROOT, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def test_sigkill_then_rerun_finishes_exactly_once(ray_session, tmp_path, documents, embedder):
    documents = documents[:300]  # ~30 pieces: enough to kill the run between two of them
    write_jsonl(tmp_path / "in" / "docs.jsonl", documents)
    config_path = tmp_path / "embed.yaml"
    config_path.write_text(
        f"input: {{path: {tmp_path / 'in'}, bytes_per_piece: 6000}}\n"
        f"output: {{path: {tmp_path / 'out'}, lease_timeout_s: 2}}\n"
        "compute: {actors: 1, cpus_per_actor: 1, threads_per_actor: 1}\n"
    )
    manifest = tmp_path / "out" / "_manifest"

    job = start_job(config_path, ray_session)
    deadline = time.time() + 300
    while time.time() < deadline and len(list(manifest.glob("*.json"))) < 4:  # _job.json + 3 pieces
        assert job.poll() is None, job.stdout.read()
        time.sleep(0.2)
    os.kill(job.pid, signal.SIGKILL)
    job.wait()
    finished_before = len(list(manifest.glob("*.json"))) - 1
    time.sleep(2)  # the killed run's output lease goes stale

    rerun = start_job(config_path, ray_session)
    output, _ = rerun.communicate(timeout=600)
    assert rerun.returncode == 0, output
    summary = output.strip().splitlines()[-1]
    pieces = int(summary.split("pieces=")[1].split()[0])
    skipped = int(summary.split("skipped=")[1].split()[0])
    assert 3 <= finished_before <= skipped < pieces, summary

    assert not any((tmp_path / "out" / "_tmp").iterdir())  # half-written files of the killed run are gone
    resumed = vectors_by_id(tmp_path / "out")
    assert sorted(resumed) == sorted(doc["id"] for doc in documents)
    expected = embedder.encode([doc["text"] for doc in documents])  # the vectors a run without a kill gives
    got = np.stack([resumed[doc["id"]] for doc in documents])
    assert np.abs((got * expected).sum(1) - 1).max() < 1e-4

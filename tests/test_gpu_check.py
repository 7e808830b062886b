"""bench/gpu_check.py, the one-shot proof of the GPU paths, cannot rot between GPU loans: its --smoke run takes
every item through the same code on the CPU at toy size, here, and must pass its own checks."""

import json
import os
import subprocess
import sys

from tests.conftest import ROOT

SCRIPT = ROOT / "bench" / "gpu_check.py"


def run_check(*args: str, env: dict | None = None, timeout: float = 60) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(SCRIPT), *args], capture_output=True, text=True, timeout=timeout,
                          env={**os.environ, **(env or {})}, cwd=ROOT)


def test_smoke_runs_every_item_and_passes_its_own_checks(ray_session, tmp_path):
    out = tmp_path / "report.json"
    finished = run_check("--smoke", "--out", str(out), env={"RAY_ADDRESS": ray_session}, timeout=900)
    assert finished.returncode == 0, finished.stderr[-3000:]
    report = json.loads(out.read_text())
    items = report["items"]
    assert list(items) == ["mlm_mfu", "mixed_lengths", "grad_cache", "embed", "serve", "deepspeed"]
    assert report["failed"] == [] and all(not item.get("failed") for item in items.values())
    assert all(items["mlm_mfu"][backend]["tokens_per_s"] > 0 for backend in ("sdpa", "sdpa_unpadded"))
    assert items["mixed_lengths"]["cosine_to_sdpa"]["min"] > 0.9999  # fp32: the packed rows give SDPA's numbers
    assert items["grad_cache"]["dropout_changes_vectors"] and items["grad_cache"]["max_relative_grad_difference"] < 1e-4
    assert items["embed"]["rows"] == 48 and items["embed"]["cosine_to_cpu_fp32"]["min"] >= 0.999
    assert items["serve"]["requests"] == 32 and items["serve"]["cosine_to_cpu_fp32"]["min"] >= 0.999
    # ZeRO-3's export gathers the full weights from the partitions (ZeRO-2 runs in test_mlm_train)
    assert items["deepspeed"]["zero3"]["steps"] == 6 and items["deepspeed"]["zero3"]["export_equals_trained"]


def test_bad_arguments_and_a_missing_gpu_are_one_line_each():
    finished = run_check("--only", "mlm_mfu,warp_drive")
    assert finished.returncode == 2 and "--only: unknown items warp_drive; choose from mlm_mfu" in finished.stderr
    finished = run_check("--only", "grad_cache")  # no --smoke on a machine without CUDA
    assert finished.returncode == 2 and "no CUDA GPU here; run with --smoke" in finished.stderr

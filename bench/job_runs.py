"""What the scale benchmarks share: the CPU's name, a tiny random model (the platform's cost shows, not the
model's) and a job run as users run it, a process of its own whose peak memory is sampled until it exits."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

from transformers import BertConfig, BertModel

from raylib.models.spec import resolve_model_path

ROOT = Path(__file__).resolve().parents[1]


def cpu_model() -> str:
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return "?"


def tiny_model(directory: Path) -> Path:
    """A random 1-layer BERT with the bundled tokenizer."""
    BertModel(BertConfig(hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=64,
                         max_position_embeddings=64)).save_pretrained(directory)
    for name in ("tokenizer.json", "tokenizer_config.json", "vocab.txt", "special_tokens_map.json"):
        source = resolve_model_path("bundled") / name
        if source.is_file():
            (directory / name).write_bytes(source.read_bytes())
    return directory


def run_job(script: str, config: Path, env: dict, summary: str) -> dict:
    """Run `python <script> --config <config>` from the project root: wall seconds, the driver's peak RSS (VmHWM,
    sampled until it exits) and the key=value figures of its output line starting with `summary`."""
    started = time.perf_counter()
    job = subprocess.Popen([sys.executable, script, "--config", str(config)], cwd=ROOT, env=env,
                           stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    peak_kb = 0
    while job.poll() is None:
        try:
            status = Path(f"/proc/{job.pid}/status").read_text()
            peak_kb = max(peak_kb, int(status.split("VmHWM:")[1].split()[0]))
        except (FileNotFoundError, IndexError, ProcessLookupError):
            pass
        time.sleep(0.1)
    log = job.stdout.read()
    wall = time.perf_counter() - started
    if job.returncode != 0:
        raise SystemExit(f"job failed ({job.returncode}):\n{log[-3000:]}")
    line = next(line for line in log.splitlines() if line.startswith(summary))
    return {"wall_s": wall, "driver_peak_rss_mb": round(peak_kb / 1024, 1),
            "figures": dict(item.split("=", 1) for item in line.split() if "=" in item)}

"""Contrastive training benchmarks on the bundled all-MiniLM-L6-v2, docstring pairs, fp32, in one run:

1. GradCache memory: peak resident memory of one training step (query + document chunks of `--chunk` rows)
   at batch 64 and at batch 256, each in fresh processes; the plain step (no chunks) at 64 and 128 beside it.
2. Steps/s of our training step (BiEncoder, a forward for queries and one for documents, InfoNCE, AdamW) vs
   sentence-transformers' MultipleNegativesRankingLoss on its own model, same data, batch and length.
3. End to end, command to exit: the contrastive job (`jobs/train_contrastive.py`, embedded Ray, one worker with
   every thread, its model published) vs sentence-transformers' `SentenceTransformerTrainer` with
   MultipleNegativesRankingLoss (its model saved), same pairs file, batch, steps, learning rate and length, each
   a process of its own; beside the wall time each one's first step, steady-state step (median and mean) and
   the seconds outside the steps (start-up, checkpoint, saving, exit). `--job-steps 0` skips this part.

Prints one JSON object.

    python bench/contrastive.py [--batch 32 --steps 12 --threads 2 --chunk 32 --job-steps 125]
"""

import argparse
import ctypes
import json
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import torch

from raylib.config import ContrastiveJobConfig
from raylib.data.sample_pairs import write_pairs
from raylib.data.sample_sets import docstring_training_rows
from raylib.models.spec import resolve_spec
from raylib.train.contrastive import (
    build_biencoder,
    dataset_tokenizers,
    encode_items,
    tokenized_groups,
)
from raylib.train.engine import build_optimizer
from raylib.train.grad_cache import grad_cache_step
from raylib.train.losses import info_nce

MAX_LENGTH = 128
LEARNING_RATE, WARMUP_STEPS = 2e-5, 5


def job_config(batch: int, chunk: int | None) -> ContrastiveJobConfig:
    return ContrastiveJobConfig.model_validate({
        "model": {"path": "bundled", "max_length": MAX_LENGTH}, "datasets": [{"name": "docstrings", "path": "."}],
        "batch_size": batch, "grad_cache_chunk": chunk, "optim": {"lr": 1e-5, "max_steps": 1000},
        "checkpoint": {"storage_path": "/tmp/unused"},
    })


class PeakMemory:
    """Highest resident set size (bytes) seen by a 2 ms sampler while the block runs."""

    def __enter__(self):
        self.peak, self._running = self.rss(), True
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._running = False
        self._thread.join()

    @staticmethod
    def rss() -> int:
        with open("/proc/self/statm") as statm:
            return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")

    def _sample(self):
        while self._running:
            self.peak = max(self.peak, self.rss())
            time.sleep(0.002)


class OurStep:
    """The contrastive job's step without Ray: tokenise with prompts, forward per group, InfoNCE, AdamW."""

    def __init__(self, batch: int, chunk: int | None):
        self.config = job_config(batch, chunk)
        spec = resolve_spec(**self.config.model.model_dump())
        self.tokenizer = dataset_tokenizers(self.config, spec)["docstrings"]
        self.model = build_biencoder(self.config, spec).train()
        self.optimizer, _ = build_optimizer(self.model, self.config.optim)

    def encode(self, items):
        return encode_items(self.model, items, self.tokenizer.pad_id, torch.device("cpu"))

    def __call__(self, rows: list[dict]) -> None:
        queries, documents = tokenized_groups(self.tokenizer, rows, 0)
        scale = self.model.scale()
        if self.config.grad_cache_chunk:
            size = self.config.grad_cache_chunk
            chunks = [[group[i:i + size] for i in range(0, len(group), size)] for group in (queries, documents)]
            grad_cache_step(self.encode, chunks, lambda q, d: info_nce(q, d, None, scale))
        else:
            info_nce(self.encode(queries), self.encode(documents), None, scale).backward()
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)


def step_memory(batch: int, chunk: int | None) -> int:
    """Bytes the step adds to resident memory at its peak (the second step, after AdamW made its state)."""
    torch.set_num_threads(2)
    step = OurStep(batch, chunk)
    rows = docstring_training_rows(limit=2 * batch, negatives=0)
    step(rows[batch:])
    ctypes.CDLL("libc.so.6").malloc_trim(0)  # hand memory the warm-up step freed back, so RSS counts live bytes
    before = PeakMemory.rss()
    with PeakMemory() as memory:
        step(rows[:batch])
    return memory.peak - before


def memory_in_subprocess(batch: int, chunk: int | None, repeats: int = 3) -> int:
    """The median over `repeats` fresh processes of step_memory."""
    command = [sys.executable, __file__, "--measure-memory", str(batch), "--chunk", str(chunk or 0)]
    runs = [subprocess.run(command, capture_output=True, text=True, check=True) for _ in range(repeats)]
    return int(statistics.median(int(run.stdout.strip().splitlines()[-1]) for run in runs))


def sentence_transformers_step(batch: int):
    from sentence_transformers import SentenceTransformer
    from sentence_transformers.losses import MultipleNegativesRankingLoss

    from raylib.models.spec import resolve_model_path

    model = SentenceTransformer(str(resolve_model_path("bundled")), device="cpu")
    model.max_seq_length = MAX_LENGTH
    loss = MultipleNegativesRankingLoss(model, scale=20.0)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-5)
    model.train()

    def step(rows: list[dict]) -> None:
        features = [model.tokenize([row[key] for row in rows]) for key in ("query", "document")]
        loss(features, None).backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    return step


def steps_per_second(step, batches: list[list[dict]]) -> float:
    times = []
    for rows in batches:
        started = time.perf_counter()
        step(rows)
        times.append(time.perf_counter() - started)
    return 1 / statistics.median(times[2:])


def job_yaml(directory: Path, batch: int, steps: int, threads: int) -> Path:
    """The contrastive job's config for the end-to-end run: one worker with every thread, fp32 like ST."""
    path = directory / "contrastive.yaml"
    path.write_text(json.dumps({
        "model": {"path": "bundled", "max_length": MAX_LENGTH}, "precision": "fp32",
        "datasets": [{"name": "docstrings", "path": str(directory / "pairs")}], "hard_negatives": 0,
        "batch_size": batch, "temperature": 0.05,
        "optim": {"lr": LEARNING_RATE, "warmup_steps": WARMUP_STEPS, "max_steps": steps},
        "scaling": {"num_workers": 1, "cpus_per_worker": threads - 0.25, "threads_per_worker": threads},
        "checkpoint": {"storage_path": str(directory / "runs"), "name": "ours", "every_steps": steps},
    }))
    return path


def run_timed(command: list[str]) -> tuple[float, str]:
    """Wall seconds of a command run as its own process from the project root, and its output."""
    started = time.perf_counter()
    run = subprocess.run(command, cwd=Path(__file__).resolve().parents[1], capture_output=True, text=True)
    wall = time.perf_counter() - started
    if run.returncode != 0:
        raise SystemExit(f"{command[1]} failed ({run.returncode}):\n{(run.stdout + run.stderr)[-3000:]}")
    return wall, run.stdout


def sentence_transformers_fit(pairs: str, out: str, batch: int, steps: int, threads: int) -> None:
    """What a sentence-transformers user runs: the trainer with MNRL on the pairs file; prints each step's
    seconds as JSON."""
    from datasets import load_dataset
    from sentence_transformers import (
        SentenceTransformer,
        SentenceTransformerTrainer,
        SentenceTransformerTrainingArguments,
    )
    from sentence_transformers.losses import MultipleNegativesRankingLoss
    from transformers import TrainerCallback

    from raylib.models.spec import resolve_model_path

    class StepSeconds(TrainerCallback):
        def __init__(self):
            self.seconds, self.last = [], time.perf_counter()

        def on_train_begin(self, args, state, control, **kwargs):
            self.last = time.perf_counter()

        def on_step_end(self, args, state, control, **kwargs):
            now = time.perf_counter()
            self.seconds.append(now - self.last)
            self.last = now

    torch.set_num_threads(threads)
    model = SentenceTransformer(str(resolve_model_path("bundled")), device="cpu")
    model.max_seq_length = MAX_LENGTH
    train = load_dataset("json", data_files=pairs, split="train").select_columns(["query", "document"])
    clock = StepSeconds()
    arguments = SentenceTransformerTrainingArguments(
        output_dir=out, per_device_train_batch_size=batch, max_steps=steps, learning_rate=LEARNING_RATE,
        warmup_steps=WARMUP_STEPS, use_cpu=True, report_to=[], save_strategy="no", logging_steps=50,
        dataloader_drop_last=True,
    )
    trainer = SentenceTransformerTrainer(model=model, args=arguments, train_dataset=train,
                                         loss=MultipleNegativesRankingLoss(model, scale=20.0), callbacks=[clock])
    trainer.train()
    model.save(out)
    print(json.dumps(clock.seconds))


def end_to_end(batch: int, steps: int, threads: int, pause: float = 20.0) -> dict:
    """The job and sentence-transformers' trainer, command to exit, on the same pairs file. Each starts after the
    same `pause`: on some virtual machines (this one) memory a process frees goes back to the host within seconds
    and touching it again costs ~8 s/GiB, so a run started right after another one would inherit warm pages."""
    with tempfile.TemporaryDirectory() as scratch:
        directory = Path(scratch)
        write_pairs(str(directory / "pairs"), negatives=0)
        time.sleep(pause)
        ours_wall, _ = run_timed([sys.executable, "jobs/train_contrastive.py", "--config",
                                  str(job_yaml(directory, batch, steps, threads))])
        metrics = [json.loads(line) for line in (directory / "runs/ours/metrics.jsonl").read_text().splitlines()]
        ours_steps = [row["seconds"] for row in metrics]
        time.sleep(pause)
        theirs_wall, output = run_timed([sys.executable, __file__, "--st-fit", str(directory / "pairs/pairs.jsonl"),
                                         "--st-out", str(directory / "st"), "--batch", str(batch),
                                         "--job-steps", str(steps), "--threads", str(threads)])
        theirs_steps = json.loads(output.strip().splitlines()[-1])
    return {
        "batch": batch, "steps": steps, "threads": threads, "max_length": MAX_LENGTH, "precision": "fp32",
        "ratio": round(theirs_wall / ours_wall, 2), "target_ratio": 1.0,
        "ours": split_wall(ours_wall, ours_steps), "sentence_transformers": split_wall(theirs_wall, theirs_steps),
    }


def split_wall(wall: float, step_seconds: list[float]) -> dict:
    """Where a run's wall time went: the steps (the first one apart: it pays for first-touch memory) and the
    rest (start-up, data, checkpoint, saving, exit)."""
    steady = step_seconds[1:]
    return {
        "wall_s": round(wall, 1), "steps_per_s": round(len(step_seconds) / wall, 3),
        "first_step_s": round(step_seconds[0], 1), "step_median_s": round(statistics.median(steady), 2),
        "step_mean_s": round(statistics.mean(steady), 2), "outside_steps_s": round(wall - sum(step_seconds), 1),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--steps", type=int, default=12)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--chunk", type=int, default=32)
    parser.add_argument("--job-steps", type=int, default=125, help="steps of the end-to-end runs (0: skip them)")
    parser.add_argument("--only-end-to-end", action="store_true")
    parser.add_argument("--measure-memory", type=int, default=None, help=argparse.SUPPRESS)
    parser.add_argument("--st-fit", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--st-out", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.measure_memory:
        print(step_memory(args.measure_memory, args.chunk or None))
        return
    if args.st_fit:
        sentence_transformers_fit(args.st_fit, args.st_out, args.batch, args.job_steps, args.threads)
        return
    if args.only_end_to_end:
        print(json.dumps({"end_to_end": end_to_end(args.batch, args.job_steps, args.threads)}, indent=2))
        return

    mb = 1 << 20
    cached = {batch: memory_in_subprocess(batch, args.chunk) / mb for batch in (64, 256)}
    plain = {batch: memory_in_subprocess(batch, None, repeats=1) / mb for batch in (64, 128)}  # 256: ~18 GB

    torch.set_num_threads(args.threads)
    rows = docstring_training_rows(limit=args.batch * args.steps, negatives=0)
    batches = [rows[start:start + args.batch] for start in range(0, len(rows), args.batch)]
    ours = steps_per_second(OurStep(args.batch, None), batches)
    theirs = steps_per_second(sentence_transformers_step(args.batch), batches)
    print(json.dumps({
        "grad_cache_memory": {
            "chunk": args.chunk, "step_peak_mb_batch64": round(cached[64], 1),
            "step_peak_mb_batch256": round(cached[256], 1), "ratio_256_vs_64": round(cached[256] / cached[64], 2),
            "target_ratio": 1.2,
            "plain_step_peak_mb_batch64": round(plain[64], 1), "plain_step_peak_mb_batch128": round(plain[128], 1),
            "plain_ratio_128_vs_64": round(plain[128] / plain[64], 2),
        },
        "steps_per_s": {
            "batch": args.batch, "max_length": MAX_LENGTH, "threads": args.threads,
            "ours": round(ours, 3), "sentence_transformers_mnrl": round(theirs, 3),
            "ratio": round(ours / theirs, 2), "target_ratio": 1.0,
        },
        **({"end_to_end": end_to_end(args.batch, args.job_steps, args.threads)} if args.job_steps else {}),
    }, indent=2))


if __name__ == "__main__":
    main()

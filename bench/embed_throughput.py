"""Batch-embedding throughput: our Ray Data pipeline vs sentence-transformers `encode`, vs a bare
model-forward loop over pre-sorted batches and vs Ray's documented batch-inference recipe (read_parquet ->
map_batches over SentenceTransformer actors -> write_parquet), same model, same corpus, same run. Prints one
JSON object.

The pipeline runs at `--precision` (default auto: bf16 autocast where the CPU has AVX-512 BF16/AMX); the bare
loop runs at the same precision; sentence-transformers runs as users call it (fp32, in the recipe too), and for
reference also under bf16 autocast when the pipeline uses bf16.

    python bench/embed_throughput.py [--docs N] [--memory-scales 1 4] [--precision auto|fp32|bf16]
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
import pyarrow.dataset as pads
import ray
import torch

from raylib.config import EmbedJobConfig
from raylib.data.sample_corpus import sample_documents, write_shards
from raylib.embed.run import run_embed
from raylib.models.embedder import Embedder
from raylib.models.precision import autocast
from raylib.models.spec import resolve_spec


class WorkerMemory:
    """Samples the resident memory of Ray's worker processes (ray::...) while a run goes on."""

    def __init__(self, interval: float = 0.5):
        self.interval, self.peak_worker, self.peak_total = interval, 0, 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)

    def _sample(self) -> None:
        while not self._stop.wait(self.interval):
            sizes = []
            for pid in filter(str.isdigit, os.listdir("/proc")):
                try:
                    if not Path(f"/proc/{pid}/cmdline").read_bytes().startswith(b"ray::"):
                        continue
                    status = Path(f"/proc/{pid}/status").read_text()
                except OSError:
                    continue
                sizes += [int(line.split()[1]) * 1024 for line in status.splitlines() if line.startswith("VmRSS")]
            if sizes:
                self.peak_worker, self.peak_total = max(self.peak_worker, max(sizes)), max(self.peak_total, sum(sizes))

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()


def sentence_transformers_rate(texts: list[str], directory: Path, precision: str) -> tuple[float, np.ndarray]:
    from sentence_transformers import SentenceTransformer

    model = SentenceTransformer(str(directory), device="cpu")
    with autocast(precision, torch.device("cpu")):
        model.encode(texts[:64])  # warm-up
        started = time.perf_counter()
        vectors = model.encode(texts, batch_size=32)
    return len(texts) / (time.perf_counter() - started), vectors


def bare_loop_rate(texts: list[str], embedder: Embedder) -> float:
    """Model forward only: texts tokenised beforehand, sorted by length, fixed batches of 32."""
    token_ids = embedder.tokenize(texts)
    order = np.argsort([len(ids) for ids in token_ids])
    batches = [[token_ids[i] for i in order[start : start + 32]] for start in range(0, len(order), 32)]
    embedder.embed_batch(batches[0])  # warm-up
    started = time.perf_counter()
    for batch in batches:
        embedder.embed_batch(batch)
    return len(texts) / (time.perf_counter() - started)


def pipeline_run(rows: list[dict], work: Path, name: str, precision: str) -> dict:
    write_shards(rows, work / f"{name}-in", shards=8, fmt="jsonl")
    config = EmbedJobConfig.model_validate({
        "input": {"path": str(work / f"{name}-in"), "bytes_per_piece": 262144},
        "model": {"precision": precision},
        "output": {"path": str(work / f"{name}-out")},
        "compute": {"actors": 2, "cpus_per_actor": 0.75, "threads_per_actor": 1, "batch_tokens": 2048},
    })
    with WorkerMemory() as memory:
        summary = run_embed(config)
    return {
        "rows": summary.rows, "seconds": round(summary.seconds, 1), "docs_per_s": summary.rows / summary.seconds,
        "tokens_per_s": summary.tokens / summary.seconds, "peak_worker_rss_mb": memory.peak_worker >> 20,
        "peak_all_workers_rss_mb": memory.peak_total >> 20,
        "driver_peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss >> 10,
        "output": summary.output,
    }


class SentenceTransformerActor:
    """The callable class of Ray Data's batch-inference recipe: one SentenceTransformer per actor."""

    def __init__(self, directory: str):
        from sentence_transformers import SentenceTransformer

        self.model = SentenceTransformer(directory, device="cpu")

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        return {"id": batch["id"], "embedding": self.model.encode(list(batch["text"]), batch_size=32)}


def recipe_run(rows: list[dict], work: Path, directory: Path) -> dict:
    """Ray Data's batch-inference recipe as its documentation writes it, timed like our job (Ray already up).
    compute=ActorPoolStrategy(size=2) is the docs' concurrency=2, which Ray 2.51+ deprecates in its favour."""
    write_shards(rows, work / "recipe-in", shards=8, fmt="parquet")
    started = time.perf_counter()
    # What it needed to run here (Ray 2.60, 2 CPUs): num_cpus=0.5, as with the default of 1 CPU per actor the two
    # actors hold both CPUs and the read never gets one (the job hangs); Ray gives an actor under one CPU
    # OMP_NUM_THREADS=1, one torch thread as in our actors. repartition(8): the corpus reads as one block, so
    # only one actor would get work (Ray warns so; its suggested override_num_blocks changes nothing here).
    (
        ray.data.read_parquet(str(work / "recipe-in"))
        .repartition(8)
        .map_batches(SentenceTransformerActor, fn_constructor_args=(str(directory),), batch_size=256,
                     compute=ray.data.ActorPoolStrategy(size=2), num_cpus=0.5)
        .write_parquet(str(work / "recipe-out"))
    )
    seconds = time.perf_counter() - started
    ids = pads.dataset(str(work / "recipe-out"), format="parquet").to_table(columns=["id"]).column("id").to_pylist()
    return {"rows": len(ids), "every_id_once": sorted(ids) == sorted(row["id"] for row in rows),
            "seconds": round(seconds, 1), "docs_per_s": len(ids) / seconds}


def read_vectors(output: str, ids: list[str]) -> np.ndarray:
    table = pads.dataset(output, format="parquet").to_table()
    by_id = dict(zip(table.column("id").to_pylist(), table.column("embedding").to_pylist()))
    return np.array([by_id[doc_id] for doc_id in ids], dtype=np.float32)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--docs", type=int, default=None, help="corpus size (default: the whole sample corpus)")
    parser.add_argument("--memory-scales", type=int, nargs="*", default=[1, 4])
    parser.add_argument("--precision", choices=["auto", "fp32", "bf16"], default="auto")
    parser.add_argument("--pipeline-only", action="store_true",
                        help="only our job at 1x (to compare two versions of the code, run with each)")
    args = parser.parse_args()

    rows = sample_documents(args.docs)
    if args.pipeline_only:
        ray.init(address="local", num_cpus=os.cpu_count(), include_dashboard=False, log_to_driver=False)
        with tempfile.TemporaryDirectory() as work:
            print(json.dumps(pipeline_run(rows, Path(work), "x1", args.precision), default=str))
        return
    texts = [row["text"] for row in rows]
    embedder = Embedder(resolve_spec(precision=args.precision))
    torch.set_num_threads(os.cpu_count() or 1)  # the baselines get every core in one process
    st_rate, st_vectors = sentence_transformers_rate(texts, embedder.spec.directory, "fp32")
    bare_rate = bare_loop_rate(texts, embedder)
    result = {"docs": len(rows), "cpus": os.cpu_count(), "precision": embedder.precision, "st_docs_per_s": st_rate,
              "bare_loop_docs_per_s": bare_rate}
    if embedder.precision == "bf16":
        result["st_bf16_autocast_docs_per_s"] = sentence_transformers_rate(texts, embedder.spec.directory, "bf16")[0]

    ray.init(address="local", num_cpus=os.cpu_count(), include_dashboard=False, log_to_driver=False)
    with tempfile.TemporaryDirectory() as work:
        scales = sorted(set(args.memory_scales) | {1})
        for scale in scales:
            scaled = [{"id": f"{row['id']}@{copy}", "text": row["text"]} for copy in range(scale) for row in rows]
            result[f"pipeline_x{scale}"] = pipeline_run(scaled, Path(work), f"x{scale}", args.precision)
        result["recipe"] = recipe_run(rows, Path(work), embedder.spec.directory)
        ours = read_vectors(result["pipeline_x1"]["output"], [f"{row['id']}@0" for row in rows])
    cosines = (ours * st_vectors).sum(1) / np.linalg.norm(ours, axis=1) / np.linalg.norm(st_vectors, axis=1)
    pipeline_rate = result["pipeline_x1"]["docs_per_s"]
    largest_rate = result[f"pipeline_x{scales[-1]}"]["docs_per_s"]  # actor start-up amortised over more rows
    result.update(
        min_cosine_vs_st=float(cosines.min()),
        pipeline_vs_st=pipeline_rate / st_rate,
        pipeline_vs_bare_loop=pipeline_rate / bare_rate,
        pipeline_vs_recipe=pipeline_rate / result["recipe"]["docs_per_s"],
        largest_pipeline_vs_st=largest_rate / st_rate,
        largest_pipeline_vs_bare_loop=largest_rate / bare_rate,
    )
    print(json.dumps(result, indent=1, default=str))


if __name__ == "__main__":
    main()

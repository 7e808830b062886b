"""Recall@10 of the embed job's ANN index (LanceDB, raylib/embed/index.py) against exact search
(raylib/embed/search.py top_k_exact), query latency p50/p99 (one query per call, as `raylib search` asks) and
build time, on the sample corpus (bundled model; held-out documents as queries) and on a synthetic set of clustered
unit vectors of the model's 384 dimensions (uniform noise has no neighbourhoods for any ANN index to find). Each
index is searched at several nprobes x refine_factor settings. Prints one JSON object.

    python bench/index_recall.py [--rows 1000000] [--queries 500] [--kind ivf_pq] [--num-sub-vectors 48]
                                 [--nprobes 16 32 64] [--refine 10 20]
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path

import numpy as np
import pyarrow as pa

from raylib.config import IndexConfig
from raylib.data.sample_corpus import sample_documents
from raylib.embed.index import VECTOR, SearchIndex, ann_settings, build_ann_index, connect
from raylib.embed.search import top_k_exact
from raylib.models.embedder import Embedder
from raylib.models.spec import resolve_spec

K = 10
TARGET = {"recall@10": 0.95, "p99_ms": 20.0}
WRITE_ROWS = 65536  # rows handed to LanceDB at a time


def cpu_name() -> dict:
    info = Path("/proc/cpuinfo").read_text()
    name = next((line.split(":", 1)[1].strip() for line in info.splitlines() if line.startswith("model name")), "?")
    return {"model_name": name, "cores": os.cpu_count()}


def clustered(rows: int, dimensions: int, clusters: int, rng: np.random.Generator) -> np.ndarray:
    """Unit vectors around `clusters` random centres, each cluster with its own spread (cosine to the centre
    about 0.7 to 0.9, like documents on one topic)."""
    centres = rng.standard_normal((clusters, dimensions), dtype=np.float32)
    centres /= np.linalg.norm(centres, axis=1, keepdims=True)
    spread = rng.uniform(0.5, 1.0, clusters).astype(np.float32) / np.sqrt(dimensions)
    out = np.empty((rows, dimensions), np.float32)
    for start in range(0, rows, WRITE_ROWS):
        stop = min(start + WRITE_ROWS, rows)
        member = rng.integers(0, clusters, stop - start)
        noise = rng.standard_normal((stop - start, dimensions), dtype=np.float32) * spread[member, None]
        chunk = centres[member] + noise
        out[start:stop] = chunk / np.linalg.norm(chunk, axis=1, keepdims=True)
    return out


def write_table(db, name: str, vectors: np.ndarray):
    """The vectors as a table shaped like the embed job's (id, embedding), streamed to LanceDB."""
    schema = pa.schema([("id", pa.int64()), (VECTOR, pa.list_(pa.float32(), vectors.shape[1]))])
    batches = (pa.record_batch([pa.array(np.arange(start, min(start + WRITE_ROWS, len(vectors)))),
                                pa.FixedSizeListArray.from_arrays(vectors[start:start + WRITE_ROWS].reshape(-1),
                                                                  vectors.shape[1])], schema=schema)
               for start in range(0, len(vectors), WRITE_ROWS))
    return db.create_table(name, data=pa.RecordBatchReader.from_batches(schema, batches), mode="overwrite")


def measure(index: SearchIndex, queries: np.ndarray, exact: np.ndarray, **search) -> dict:
    """recall@10 against the exact top 10, and per-query latency, at one search setting."""
    index.nearest(queries[:20], K, **search)  # warm the caches
    hits, latencies = 0, []
    for query, truth in zip(queries, exact):
        started = time.perf_counter()
        (found,) = index.nearest(query[None], K, **search)
        latencies.append((time.perf_counter() - started) * 1000)
        hits += len(set(found.column("id").to_pylist()) & set(truth.tolist()))
    return {**search, "recall@10": round(hits / exact.size, 4),
            "p50_ms": round(float(np.percentile(latencies, 50)), 2),
            "p99_ms": round(float(np.percentile(latencies, 99)), 2)}


def bench_index(db, name: str, corpus: np.ndarray, queries: np.ndarray, settings: dict, sweep: list[dict]) -> dict:
    """Write the corpus, build the index of `settings` (timed), search it at each setting of `sweep`."""
    started = time.perf_counter()
    table = write_table(db, name, corpus)
    written = time.perf_counter()
    build_ann_index(table, settings)
    built = time.perf_counter()
    _, exact = top_k_exact(queries, corpus, K)
    index = SearchIndex(table, {}, settings)
    report = {"rows": len(corpus), "dimensions": corpus.shape[1], "queries": len(queries), "index": settings,
              "write_seconds": round(written - started, 1), "build_seconds": round(built - written, 1),
              "sweep": [measure(index, queries, exact, **search) for search in sweep]}
    if settings["kind"] != "exact":
        met = [row for row in report["sweep"]
               if row["recall@10"] >= TARGET["recall@10"] and row["p99_ms"] <= TARGET["p99_ms"]]
        report["fastest_meeting_target"] = min(met, key=lambda row: row["p99_ms"]) if met else None
    return report


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=1_000_000, help="synthetic vectors")
    parser.add_argument("--clusters", type=int, default=2000, help="synthetic clusters")
    parser.add_argument("--queries", type=int, default=500, help="synthetic queries")
    parser.add_argument("--documents", type=int, default=2000, help="sample corpus documents (+200 as queries)")
    parser.add_argument("--kind", default="ivf_pq", choices=["ivf_pq", "ivf_hnsw_sq"])
    parser.add_argument("--num-partitions", type=int, default=None, help="synthetic set; None: LanceDB's default")
    parser.add_argument("--num-sub-vectors", type=int, default=48, help="ivf_pq codes per vector")
    parser.add_argument("--nprobes", type=int, nargs="+", default=[16, 32, 64], help="synthetic set's sweep")
    parser.add_argument("--refine", type=int, nargs="+", default=[10, 20], help="synthetic set's sweep")
    args = parser.parse_args()
    rng = np.random.default_rng(0)
    report = {"cpu": cpu_name(), "target": TARGET}
    with tempfile.TemporaryDirectory(prefix="index-recall-") as directory:
        db = connect(directory)

        documents = [doc["text"] for doc in sample_documents(args.documents + 200)]
        embedder = Embedder(resolve_spec())
        started = time.perf_counter()
        corpus = embedder.encode(documents[:args.documents], input_type="document")
        sample = {"embed_seconds": round(time.perf_counter() - started, 1)}
        questions = embedder.encode(documents[args.documents:], input_type="query")
        small = IndexConfig(path=directory, exact_below=0, kind=args.kind, num_partitions=16,
                            num_sub_vectors=args.num_sub_vectors)
        sample["exact"] = bench_index(db, "sample_exact", corpus, questions, {"kind": "exact"}, [{}])
        sample[args.kind] = bench_index(db, "sample_ann", corpus, questions, ann_settings(small, len(corpus)),
                                        [{"nprobes": 4, "refine_factor": 10}, {"nprobes": 16, "refine_factor": 10}])
        report["sample_corpus"] = sample

        vectors = clustered(args.rows + args.queries, 384, args.clusters, rng)
        large = IndexConfig(path=directory, kind=args.kind, num_partitions=args.num_partitions,
                            num_sub_vectors=args.num_sub_vectors)
        sweep = [{"nprobes": nprobes, "refine_factor": refine} for nprobes in args.nprobes for refine in args.refine]
        report["synthetic"] = {"clusters": args.clusters, **bench_index(
            db, "synthetic", vectors[:args.rows], vectors[args.rows:], ann_settings(large, args.rows), sweep)}
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()

"""How hard-negative mining scales: a tiny random model (so the model costs little and the job's own work shows),
synthetic pairs and corpus texts, each job run as a user runs it (`python jobs/mine_negatives.py`, a process of its
own, joining one running Ray). Prints one JSON object.

    python bench/mine_scale.py [--pairs 5000] [--corpus-per-pair 2] [--scales 1 4]

Figures:
  brute_force   a small exact-mode job with the bundled model (--check-pairs pairs): the share of mined rows whose
                negatives score as the best allowed candidates of a brute-force numpy search over in-process vectors
                (every labelled positive left out, the positive-aware filter at 0.95 applied)
  scale         --pairs x factor pairs and corpus-per-pair as many extra documents, the tiny model (its vectors
                are all alike, so the filter runs at 1.0: only candidates above the positive are dropped): wall
                seconds, the driver's peak RSS (VmHWM), the summary's counts; rss_vs_first and time_vs_linear
                against the first factor
  ivf           the first factor again with search.exact_below: 0 (IVF, nlist 4 x sqrt(n), nprobe as configured):
                the share of the exact run's negatives it finds; and the IVF index's recall@10 and @100 against
                exact search on the same documents and queries (vectors from the tiny model, in this process)

Target (issue 23): driver peak RSS at 4x <= 1.2x that at 1x.
"""

from __future__ import annotations

import argparse
import json
import os
import secrets
import tempfile
import time
from pathlib import Path

# the Ray this script starts and the jobs that join it share a token (Ray reads these when imported)
os.environ.update(RAY_AUTH_MODE="token", RAY_AUTH_TOKEN=secrets.token_hex(32))

import faiss  # noqa: E402
import numpy as np  # noqa: E402
import pyarrow as pa  # noqa: E402
import pyarrow.parquet as pq  # noqa: E402
import ray  # noqa: E402
from job_runs import cpu_model, run_job, tiny_model  # noqa: E402  (bench/)

from raylib.config import MineSearchConfig  # noqa: E402
from raylib.mine.index import build_index  # noqa: E402
from raylib.models.embedder import Embedder  # noqa: E402
from raylib.models.spec import resolve_spec  # noqa: E402

NEGATIVES, DEPTH = 7, 100
SYLLABLES = "ka lo mi ne ru sa ti vo be da fe gu ha ji ko lu ma no pe ri so tu ve wa ye zo".split()


def sentence(rng: np.random.Generator, words: int) -> str:
    return " ".join("".join(rng.choice(SYLLABLES, 3)) for _ in range(words))


def write_inputs(directory: Path, pairs: int, corpus: int, seed: int) -> tuple[list[dict], list[str]]:
    """pairs/*.jsonl ({query, document}: a query shares words with its document; every 10th query has a second
    positive) and corpus/*.jsonl ({text}), in files of 5,000 rows."""
    rng = np.random.default_rng(seed)
    rows = []
    for index in range(pairs):
        document = sentence(rng, 10)
        rows.append({"query": " ".join(document.split()[:4]) + f" q{index}", "document": document})
        if index % 10 == 0:
            rows.append({"query": rows[-1]["query"], "document": sentence(rng, 10)})
    texts = [sentence(rng, 10) for _ in range(corpus)]
    for name, items in (("pairs", rows), ("corpus", [{"text": text} for text in texts])):
        (directory / name).mkdir(parents=True)
        for start in range(0, len(items), 5000):
            (directory / name / f"part-{start // 5000:05d}.jsonl").write_text(
                "".join(json.dumps(item) + "\n" for item in items[start:start + 5000]))
    return rows, texts


def run_mine_job(directory: Path, model: str, ratio: float, env: dict, exact_below: int = 1_000_000) -> dict:
    """Run the mining job on directory/pairs and directory/corpus: wall seconds, driver peak RSS (VmHWM), counts."""
    config = directory / f"mine-{exact_below}.json"
    output = directory / f"mined-{exact_below}"
    config.write_text(json.dumps({
        "pairs": {"path": str(directory / "pairs")},
        "corpus": {"path": str(directory / "corpus"), "id_column": None},
        "model": {"path": str(model)},
        "negatives": NEGATIVES, "search_depth": DEPTH, "max_positive_ratio": ratio,
        "search": {"exact_below": exact_below, "actors": 1, "cpus_per_actor": 1},
        "compute": {"actors": 1, "cpus_per_actor": 1, "threads_per_actor": 1},
        "output": {"path": str(output)},
    }))
    run = run_job("jobs/mine_negatives.py", config, env, "mined ")
    return {"wall_s": round(run["wall_s"], 1), "driver_peak_rss_mb": run["driver_peak_rss_mb"],
            **{key: int(run["figures"][key]) for key in ("pairs", "errors", "short", "filtered")},
            "output": str(output)}


def mined_rows(output: str) -> list[dict]:
    return [json.loads(line) for shard in sorted(Path(output).glob("part-*.jsonl"))
            for line in shard.read_text().splitlines()]


def brute_force_share(rows: list[dict], corpus: list[str], mined: list[dict], embedder: Embedder,
                      ratio: float) -> float:
    """Share of mined rows whose negatives' scores are the best allowed among the search_depth best-scoring
    documents of a numpy search over every candidate."""
    candidates = list(dict.fromkeys([row["document"] for row in rows] + corpus))
    vectors = embedder.encode(candidates, "document")
    position = {text: index for index, text in enumerate(candidates)}
    positives: dict[str, set[int]] = {}
    for row in rows:
        positives.setdefault(row["query"], set()).add(position[row["document"]])
    queries = embedder.encode([row["query"] for row in mined], "query")
    equal = 0
    for row, query in zip(mined, queries):
        scores = vectors @ query
        limit = ratio * scores[position[row["document"]]]
        best = [scores[index] for index in np.argsort(-scores)[:DEPTH]  # what the job's search sees
                if index not in positives[row["query"]] and scores[index] <= limit][:NEGATIVES]
        found = np.array([scores[position[text]] for text in row["negatives"]])
        equal += len(found) == len(best) and np.allclose(found, best, atol=1e-4)
    return round(equal / len(mined), 4)


def index_recall(documents: np.ndarray, queries: np.ndarray, directory: Path) -> dict:
    """recall@10 and @100 of the IVF index (the job's defaults, built by raylib.mine.index) against exact search."""
    keys = np.arange(len(documents), dtype=np.int64)
    pq.write_table(pa.table({"key": keys, "embedding": pa.FixedSizeListArray.from_arrays(
        documents.reshape(-1), documents.shape[1])}), directory / "vectors.parquet")
    settings = MineSearchConfig(exact_below=0)
    started = time.perf_counter()
    index = faiss.deserialize_index(build_index(str(directory), settings))
    report = {"documents": len(documents), "queries": len(queries), "nlist": index.nlist, "nprobe": settings.nprobe,
              "build_s": round(time.perf_counter() - started, 1)}
    index.nprobe = settings.nprobe
    _, found = index.search(queries, DEPTH)
    truth = np.argsort(-(queries @ documents.T), axis=1)[:, :DEPTH]
    for k in (10, 100):
        hits = sum(len(set(row[:k]) & set(expected[:k])) for row, expected in zip(found.tolist(), truth.tolist()))
        report[f"recall@{k}"] = round(hits / (len(queries) * k), 4)
    return report


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--pairs", type=int, default=5000, help="pairs at 1x")
    parser.add_argument("--corpus-per-pair", type=int, default=2, help="extra corpus documents per pair")
    parser.add_argument("--scales", type=int, nargs="+", default=[1, 4])
    parser.add_argument("--check-pairs", type=int, default=300, help="pairs of the brute-force check")
    args = parser.parse_args()
    report: dict = {"cpu": cpu_model(), "cores": os.cpu_count(), "negatives": NEGATIVES, "search_depth": DEPTH}
    ray.init(num_cpus=os.cpu_count(), include_dashboard=False, log_to_driver=False)
    env = {**os.environ, "RAY_ADDRESS": ray.get_runtime_context().gcs_address}
    with tempfile.TemporaryDirectory(prefix="mine-scale-") as scratch_name:
        scratch = Path(scratch_name)
        model = tiny_model(scratch / "tiny-bert")
        embedder = Embedder(resolve_spec(str(model)))

        check = scratch / "check"
        rows, corpus = write_inputs(check, args.check_pairs, args.check_pairs, seed=1)
        job = run_mine_job(check, "bundled", 0.95, env)
        documents = len({row["document"] for row in rows}) + len(corpus)
        share = brute_force_share(rows, corpus, mined_rows(job["output"]), Embedder(resolve_spec()), 0.95)
        report["brute_force"] = {"pairs": job["pairs"], "documents": documents, "short": job["short"],
                                 "rows_equal": share}

        scale = {}
        for factor in args.scales:
            directory = scratch / f"x{factor}"
            write_inputs(directory, args.pairs * factor, args.pairs * factor * args.corpus_per_pair, seed=factor)
            scale[f"{factor}x"] = run_mine_job(directory, str(model), 1.0, env)
        first = scale[f"{args.scales[0]}x"]
        for factor in args.scales[1:]:
            result = scale[f"{factor}x"]
            result["rss_vs_first"] = round(result["driver_peak_rss_mb"] / first["driver_peak_rss_mb"], 3)
            result["time_vs_linear"] = round(result["wall_s"] / (factor // args.scales[0] * first["wall_s"]), 3)
        report["scale"] = {name: {key: value for key, value in result.items() if key != "output"}
                           for name, result in scale.items()}

        directory = scratch / f"x{args.scales[0]}"
        ivf = run_mine_job(directory, str(model), 1.0, env, exact_below=0)
        exact_rows, ivf_rows = mined_rows(first["output"]), mined_rows(ivf["output"])
        found = sum(len(set(a["negatives"]) & set(b["negatives"])) for a, b in zip(exact_rows, ivf_rows))
        wanted = sum(len(row["negatives"]) for row in exact_rows)
        rows = [json.loads(line) for path in sorted((directory / "pairs").glob("*.jsonl"))
                for line in path.read_text().splitlines()]
        corpus = [json.loads(line)["text"] for path in sorted((directory / "corpus").glob("*.jsonl"))
                  for line in path.read_text().splitlines()]
        documents = embedder.encode(list(dict.fromkeys([row["document"] for row in rows] + corpus)), "document")
        queries = embedder.encode(list(dict.fromkeys(row["query"] for row in rows))[:1000], "query")
        (scratch / "vectors").mkdir()
        report["ivf"] = {"wall_s": ivf["wall_s"], "negatives_found_of_exact": round(found / max(wanted, 1), 4),
                         "index": index_recall(documents, queries, scratch / "vectors")}
    ray.shutdown()
    print(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()

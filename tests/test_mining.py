"""Hard-negative mining on real docstring pairs: the negatives are each query's best-scoring candidates that are
neither the positive nor above the positive-aware threshold; bad rows are reported; the shards train."""

import json

import faiss
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from raylib.config import MineJobConfig, MineSearchConfig, PairsDatasetConfig, job_main
from raylib.data.pairs import pairs_dataset
from raylib.data.sample_sets import docstring_training_rows
from raylib.mine.index import build_index
from raylib.mine.run import run_mining
from raylib.models.embedder import Embedder
from tests.conftest import write_jsonl

K = 3


def mining_config(tmp_path, **changes) -> MineJobConfig:
    return MineJobConfig.model_validate({
        "pairs": {"path": str(tmp_path / "pairs")},
        "corpus": {"path": str(tmp_path / "corpus"), "id_column": None},
        "negatives": K, "max_positive_ratio": 0.95, "search_depth": 400,  # every candidate, exact search
        "compute": {"actors": 1},
        "output": {"path": str(tmp_path / "mined"), "rows_per_shard": 100},
        **changes,
    })


def test_mined_negatives_are_the_best_allowed_candidates(ray_session, embedder: Embedder, tmp_path):
    rows = docstring_training_rows(limit=200, negatives=0)
    pairs, extra = rows[:150], [row["document"] for row in rows[150:]]
    near_duplicate = pairs[0]["document"] + " "  # another text, but scores like the positive: must be filtered
    candidates = list(dict.fromkeys([row["document"] for row in pairs] + extra + [near_duplicate]))
    candidate_vectors = embedder.encode(candidates, "document")
    # a second labelled positive of query 1, in a row of its own: the document that would be its best negative
    scores = candidate_vectors @ embedder.encode([pairs[1]["query"]], "query")[0]
    own = scores[candidates.index(pairs[1]["document"])]
    paired = {row["document"] for row in pairs} - {pairs[1]["document"]}
    second = max((text for text, score in zip(candidates, scores) if text in paired and score <= 0.95 * own),
                 key=lambda text: scores[candidates.index(text)])
    pairs = [*pairs, {"query": pairs[1]["query"], "document": second}]
    write_jsonl(tmp_path / "pairs" / "pairs.jsonl",
                [{"query": row["query"], "document": row["document"]} for row in pairs]
                + [{"query": "no document"}, {"query": "", "document": "empty query"}])
    write_jsonl(tmp_path / "corpus" / "docs.jsonl", [{"text": text} for text in [*extra, near_duplicate, ""]])

    summary = run_mining(mining_config(tmp_path))
    assert (summary.pairs, summary.errors, len(summary.shards)) == (151, 3, 2)
    errors = [json.loads(line) for line in (tmp_path / "mined.errors.jsonl").read_text().splitlines()]
    assert len(errors) == 3 and all(error["error"] for error in errors)
    mined = [json.loads(line) for shard in sorted((tmp_path / "mined").glob("part-*.jsonl"))
             for line in shard.read_text().splitlines()]
    assert [(row["query"], row["document"]) for row in mined] == [(row["query"], row["document"]) for row in pairs]

    labelled = {(row["query"], row["document"]) for row in pairs}
    for row in mined[:20] + mined[-1:]:
        query = embedder.encode([row["query"]], "query")[0]
        scores = candidate_vectors @ query
        positive = scores[candidates.index(row["document"])]
        allowed = {text: score for text, score in zip(candidates, scores)
                   if (row["query"], text) not in labelled and score <= 0.95 * positive}
        assert all(text in allowed for text in row["negatives"])  # ties may come in either order
        assert np.allclose([allowed[text] for text in row["negatives"]], sorted(allowed.values())[::-1][:K], atol=1e-5)
    assert near_duplicate not in mined[0]["negatives"] and summary.filtered >= 1
    assert second not in mined[1]["negatives"]  # every labelled positive of the query is left out
    assert summary.short == sum(len(row["negatives"]) < K for row in mined)

    trainable = pairs_dataset(PairsDatasetConfig(name="mined", path=str(tmp_path / "mined")), K, 0.25)
    assert trainable.filter(lambda row: row["_error"] is not None).count() == summary.short


@pytest.mark.parametrize("change, message", [
    ({"pairs": {"path": "/no/such/pairs"}}, "pairs.path: /no/such/pairs does not exist"),
    ({"corpus": {"path": "/no/such/docs"}}, "corpus.path: /no/such/docs does not exist"),
    ({"negatives": 0}, "negatives: Input should be greater than 0"),
    ({"max_positive_ratio": 1.5}, "max_positive_ratio"),
    ({"negatives": 7, "search_depth": 7}, "search_depth: 7 leaves no room for 7 negatives"),
])
def test_bad_mining_config_fails_before_any_work(tmp_path, capsys, change, message):
    (tmp_path / "pairs").mkdir()
    (tmp_path / "corpus").mkdir()
    config = {"pairs": {"path": str(tmp_path / "pairs")}, "output": {"path": str(tmp_path / "mined")}, **change}
    path = tmp_path / "bad.yaml"
    path.write_text(json.dumps(config))
    assert job_main("mine", MineJobConfig, run_mining, ["--config", str(path)]) == 2
    error = capsys.readouterr().err
    assert message in error and "Traceback" not in error, error
    assert not (tmp_path / "mined").exists()


def clustered_vectors(rows: int, dimensions: int, clusters: int, rng: np.random.Generator) -> np.ndarray:
    """Unit vectors around random centres (uniform noise has no neighbourhoods for an IVF index to find)."""
    centres = rng.standard_normal((clusters, dimensions)).astype(np.float32)
    vectors = centres[rng.integers(0, clusters, rows)] + 0.4 * rng.standard_normal((rows, dimensions)).astype(np.float32)
    return vectors / np.linalg.norm(vectors, axis=1, keepdims=True)


@pytest.mark.parametrize("exact_below, recall", [(1_000_000, 1.0), (0, 0.95)])
def test_index_finds_the_nearest_documents(tmp_path, exact_below, recall):
    """The search index the mining actors use, on synthetic unit vectors stored as the embed job writes them:
    exact mode equals brute force, IVF mode (nlist 4 x sqrt(n), trained on a sample) finds most of the top 10;
    both give a document's vector back by its key (the positive's score)."""
    rng = np.random.default_rng(0)
    documents, queries = clustered_vectors(4000, 32, 40, rng), clustered_vectors(200, 32, 40, rng)
    keys = rng.choice(2**62, len(documents), replace=False).astype(np.int64)
    for part in range(2):
        rows = slice(part * 2000, (part + 1) * 2000)
        pq.write_table(pa.table({"key": keys[rows], "embedding": pa.FixedSizeListArray.from_arrays(
            documents[rows].reshape(-1), 32)}), tmp_path / f"piece-{part}.parquet")
    settings = MineSearchConfig(exact_below=exact_below, nprobe=32)
    index = faiss.deserialize_index(build_index(str(tmp_path), settings))
    if exact_below == 0:
        assert isinstance(index, faiss.IndexIVFFlat) and index.nlist == int(4 * np.sqrt(len(documents)))
        index.nprobe = settings.nprobe  # as the search actors do
    _, found = index.search(queries, 10)
    truth = keys[np.argsort(-(queries @ documents.T), axis=1)[:, :10]]
    hits = sum(len(set(row) & set(expected)) for row, expected in zip(found.tolist(), truth.tolist()))
    assert hits / truth.size >= recall, hits / truth.size
    assert np.allclose(index.reconstruct(int(keys[123])), documents[123])

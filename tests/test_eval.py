"""Evaluation: metric functions against hand-computed values, search backends, BEIR reading with line-level
errors, retrieval on a real docstring set (in process, through the Ray Data pipeline and through mteb),
long-context truncation lengths, and the eval job."""

import json
import math
import subprocess

import mteb
import numpy as np
import pytest
from datasets import Dataset
from mteb.abstasks.retrieval import AbsTaskRetrieval
from mteb.abstasks.task_metadata import TaskMetadata

from raylib.config import ComputeConfig, ConfigError, EmbedderConfig
from raylib.data.beir import RetrievalSet, load_beir, write_beir
from raylib.data.sample_sets import docstring_pairs, docstring_set, long_context_set
from raylib.embed.search import top_k, top_k_exact
from raylib.eval.long_context import evaluate_lengths
from raylib.eval.metrics import mrr_at_k, ndcg_at_k, recall_at_k, score_rankings
from raylib.eval.mteb_adapter import MtebEncoder
from raylib.eval.retrieval import evaluate
from raylib.models.nomic_bert import NomicBertConfig, NomicBertModel
from tests.conftest import BIN, ROOT, copy_bundled_tokenizer


@pytest.fixture(scope="module")
def small_set() -> RetrievalSet:
    return docstring_set(limit=120)


@pytest.fixture(scope="module")
def bundled_scores(small_set) -> dict[str, float]:
    return evaluate(small_set, EmbedderConfig(), search="exact")


def test_metrics_match_hand_computed_values():
    ranking, relevant = ["d3", "d1", "d2"], {"d1": 1, "d2": 2}
    # DCG = 0/log2(2) + 1/log2(3) + 2/log2(4); ideal = 2/log2(2) + 1/log2(3)
    assert ndcg_at_k(ranking, relevant, 10) == pytest.approx((1 / math.log2(3) + 1) / (2 + 1 / math.log2(3)))
    assert ndcg_at_k(ranking, relevant, 1) == 0.0
    assert ndcg_at_k(["d2", "d1"], relevant, 10) == pytest.approx(1.0)
    assert mrr_at_k(ranking, relevant, 10) == 0.5 and mrr_at_k(ranking, relevant, 1) == 0.0
    assert recall_at_k(ranking, relevant, 2) == 0.5 and recall_at_k(ranking, relevant, 10) == 1.0
    scores = score_rankings({"q1": ["a", "b"], "q2": ["c", "b"], "q3": ["a"]},
                            {"q1": {"b": 1}, "q2": {"c": 1}, "q3": {"a": 0}})  # q3 has nothing relevant: ignored
    assert scores["mrr@10"] == pytest.approx(0.75) and scores["recall@1"] == pytest.approx(0.5)
    with pytest.raises(ValueError, match="no query has a relevant document"):
        score_rankings({"q": ["a"]}, {"q": {"a": 0}})


def test_chunked_exact_search_and_faiss_agree_with_brute_force():
    generator = np.random.default_rng(0)
    corpus = generator.normal(size=(1000, 16)).astype(np.float32)
    queries = generator.normal(size=(7, 16)).astype(np.float32)
    expected = np.argsort(-(queries @ corpus.T), axis=1)[:, :10]
    scores, indices = top_k_exact(queries, corpus, 10, chunk_rows=64)  # 16 chunks merged
    assert np.array_equal(indices, expected)
    assert np.allclose(scores, np.take_along_axis(queries @ corpus.T, expected, axis=1), atol=1e-5)
    _, faiss_indices = top_k(queries, corpus, 10, backend="faiss")
    assert np.array_equal(faiss_indices, expected)
    assert top_k_exact(queries, corpus[:3], 10)[1].shape == (7, 3)


def test_beir_round_trip(tmp_path, small_set):
    folder = write_beir(tmp_path / "set", small_set)
    loaded = load_beir(folder)
    assert loaded.corpus == small_set.corpus and loaded.queries == small_set.queries and loaded.qrels == small_set.qrels


@pytest.mark.parametrize(
    "file, content, message",
    [
        ("qrels/test.tsv", "query-id\tcorpus-id\tscore\nq1\tmissing\t1\n", "test.tsv line 2: corpus-id 'missing' is not in corpus.jsonl"),
        ("qrels/test.tsv", "query-id\tcorpus-id\tscore\nq9\td1\t1\n", "test.tsv line 2: query-id 'q9' is not in queries.jsonl"),
        ("qrels/test.tsv", "q1\td1\thigh\n", "test.tsv line 1: score 'high' is not an integer"),
        ("qrels/test.tsv", "q1 d1 1\n", "test.tsv line 1: expected 3 tab-separated fields"),
        ("corpus.jsonl", '{"_id": "d1", "text": "a"}\n{"_id": "d1", "text": "b"}\n', "corpus.jsonl line 2: _id 'd1' appears twice"),
        ("corpus.jsonl", '{"_id": "d1", "text": "a"}\n{"text": "b"}\n', 'corpus.jsonl line 2: needs a string "_id"'),
        ("queries.jsonl", '{"_id": "q1", "text": "a"\n', "queries.jsonl line 1: not valid JSON"),
        ("queries.jsonl", '{"_id": "q1", "text": ""}\n', 'queries.jsonl line 1: "text" is missing or empty'),
    ],
)
def test_bad_beir_files_name_the_file_and_line(tmp_path, file, content, message):
    folder = write_beir(tmp_path / "set", RetrievalSet({"d1": "doc one"}, {"q1": "query one"}, {"q1": {"d1": 1}}))
    (folder / file).write_text(content)
    with pytest.raises(ConfigError, match=message.replace("(", r"\(").replace("'", "'")):
        load_beir(folder)


def test_bundled_model_retrieves_docstrings(bundled_scores, small_set):
    assert set(small_set.queries) == {f"q-{doc}" for doc in small_set.corpus}
    assert bundled_scores["ndcg@10"] > 0.5 and bundled_scores["recall@100"] > 0.9
    assert bundled_scores["recall@1"] <= bundled_scores["recall@10"] <= bundled_scores["recall@100"]
    eval_ids = {doc_id for doc_id, _, _ in docstring_pairs("eval")}
    assert not eval_ids & {doc_id for doc_id, _, _ in docstring_pairs("train")}  # training pairs never leak


def test_large_corpus_path_through_the_ray_data_pipeline_scores_the_same(ray_session, small_set, bundled_scores):
    compute = ComputeConfig(actors=1, cpus_per_actor=1)
    through_pipeline = evaluate(small_set, EmbedderConfig(), pipeline_above=1, search="exact", compute=compute)
    for name, value in bundled_scores.items():
        assert through_pipeline[name] == pytest.approx(value, abs=1e-3), name


class DocstringTask(AbsTaskRetrieval):
    """A retrieval task built here from the docstring set (nothing downloaded)."""

    metadata = TaskMetadata(
        type="Retrieval", name="RaylibDocstrings", main_score="ndcg_at_10", description="summary line -> body",
        reference="https://docs.python.org", dataset={"path": "NA", "revision": "NA"}, category="t2t",
        eval_splits=["test"], eval_langs=["eng-Latn"], date=("2024-01-01", "2024-01-01"), dialect=["Written"],
        domains=[], task_subtypes=[], license="cc-by-4.0", annotations_creators="derived", modalities=["text"],
        sample_creation="found", bibtex_citation="",
    )

    def __init__(self, data: RetrievalSet):
        super().__init__()
        self.source = data

    def load_data(self, num_proc=None, **kwargs) -> None:
        split = {"corpus": Dataset.from_list([{"id": k, "text": v} for k, v in self.source.corpus.items()]),
                 "queries": Dataset.from_list([{"id": k, "text": v} for k, v in self.source.queries.items()]),
                 "relevant_docs": self.source.qrels, "top_ranked": None}
        self.dataset = {"default": {"test": split}}
        self.data_loaded = True


def test_mteb_runs_our_encoder_and_agrees_with_our_metrics(small_set, bundled_scores):
    result = mteb.evaluate(MtebEncoder(EmbedderConfig(), name="raylib/minilm"), tasks=[DocstringTask(small_set)],
                           cache=None, show_progress_bar=False)
    scores = result.task_results[0].scores["test"][0]
    assert scores["ndcg_at_10"] == pytest.approx(bundled_scores["ndcg@10"], abs=1e-4)
    assert scores["recall_at_10"] == pytest.approx(bundled_scores["recall@10"], abs=1e-4)


@pytest.fixture(scope="module")
def tiny_nomic(tmp_path_factory):
    directory = tmp_path_factory.mktemp("tiny-nomic")
    config = NomicBertConfig(n_embd=64, n_head=4, n_layer=2, n_inner=256, max_trained_positions=512,
                             rotary_scaling_factor=2)
    NomicBertModel(config).save_pretrained(directory)
    copy_bundled_tokenizer(directory)
    return directory


def test_long_context_lengths(tiny_nomic):
    data, depth = long_context_set(max_docs=4, queries_per_doc=3)
    assert max(depth.values()) > 2000 and min(depth.values()) < 2000  # answers both shallow and deep
    nomic_rows = evaluate_lengths(data, EmbedderConfig(path=str(tiny_nomic)), [512, 2048, 8192], depth)
    assert [row["effective_max_length"] for row in nomic_rows] == [512, 2048, 8192]  # NTK reaches 8192
    assert all({"all", "shallow", "deep"} <= set(row) for row in nomic_rows)
    minilm_rows = evaluate_lengths(data, EmbedderConfig(), [512, 2048], depth)
    assert "ndcg@10" in minilm_rows[0]["all"]
    assert minilm_rows[1]["skipped"] == "the model reads at most 512 tokens"


def run_job(config: dict, tmp_path) -> subprocess.CompletedProcess:
    path = tmp_path / "eval.yaml"
    path.write_text(json.dumps(config))
    return subprocess.run([str(BIN / "python"), "jobs/eval.py", "--config", str(path)], cwd=ROOT,
                          capture_output=True, text=True, timeout=600)


def test_eval_job_writes_results_and_chart(tmp_path):
    folder = write_beir(tmp_path / "beir", docstring_set(limit=60))
    config = {"data": {"kind": "beir", "path": str(folder)},
              "models": [{"name": "minilm"}, {"name": "minilm-64d", "model": {"dimensions": 64}}],
              "output": str(tmp_path / "out")}
    finished = run_job(config, tmp_path)
    assert finished.returncode == 0, finished.stderr[-2000:]
    results = json.loads((tmp_path / "out" / "results.json").read_text())
    assert [row["model"] for row in results["results"]] == ["minilm", "minilm-64d"]
    assert results["queries"] == 60 and all(0 < row["all"]["ndcg@10"] <= 1 for row in results["results"])
    assert (tmp_path / "out" / "chart.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "eval model=minilm max_length=256 ndcg@10=" in finished.stdout

    (folder / "qrels" / "test.tsv").write_text("query-id\tcorpus-id\tscore\nq-x\tnope\t1\n")
    failed = run_job(config, tmp_path)
    assert failed.returncode == 2
    assert "test.tsv line 2: query-id 'q-x' is not in queries.jsonl" in failed.stderr
    assert "Traceback" not in failed.stderr

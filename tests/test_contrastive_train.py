"""Contrastive fine-tuning of the bundled model on Ray Train (2 workers): held-out NDCG@10 rises, the result
opens in sentence-transformers and our Embedder with the same vectors, bad rows are counted."""

import json
from pathlib import Path

import numpy as np
import pytest
from sentence_transformers import SentenceTransformer

from raylib.config import ContrastiveJobConfig, EmbedderConfig, job_main
from raylib.eval.retrieval import evaluate
from raylib.eval.sample_sets import docstring_set, docstring_training_rows
from raylib.models.embedder import Embedder
from raylib.train.contrastive import run_contrastive
from tests.conftest import write_jsonl

BAD_ROWS = [{"query": "no document"}, {"query": "", "document": "empty query", "negatives": ["x"]},
            {"query": "no negatives", "document": "a body", "negatives": []}]


def job(pairs: Path, storage: Path, **changes) -> ContrastiveJobConfig:
    config = {
        "model": {"path": "bundled", "max_length": 64},
        "datasets": [{"name": "docstrings", "path": str(pairs)}],
        "hard_negatives": 1, "batch_size": 16,
        "optim": {"lr": 8e-5, "warmup_steps": 3, "max_steps": 30},
        "scaling": {"num_workers": 2, "cpus_per_worker": 0.75, "threads_per_worker": 1},
        "checkpoint": {"storage_path": str(storage), "name": "finetune", "every_steps": 30},
        **changes,
    }
    return ContrastiveJobConfig.model_validate(config)


def test_finetuning_raises_held_out_ndcg_and_exports_a_sentence_transformer(ray_session, tmp_path):
    write_jsonl(tmp_path / "pairs" / "pairs.jsonl", BAD_ROWS + docstring_training_rows(limit=1200, negatives=1))
    result = run_contrastive(job(tmp_path / "pairs", tmp_path / "runs"))
    rows = [json.loads(line) for line in (tmp_path / "runs" / "finetune" / "metrics.jsonl").read_text().splitlines()]
    assert [row["step"] for row in rows] == list(range(1, 31)) and rows[-1]["bad_rows"] >= len(BAD_ROWS)

    trained = Path(result.checkpoint.path) / "model"
    held_out = docstring_set(limit=150)  # the eval split: no docstring of it was trained on
    before = evaluate(held_out, EmbedderConfig(), search="exact")["ndcg@10"]
    after = evaluate(held_out, EmbedderConfig(path=str(trained)), search="exact")["ndcg@10"]
    assert after > before + 0.01, (before, after)

    texts = list(held_out.corpus.values())[:8]
    ours = Embedder(EmbedderConfig(path=str(trained))).encode(texts)
    theirs = SentenceTransformer(str(trained), device="cpu").encode(texts, normalize_embeddings=True)
    assert np.min(np.sum(ours * theirs, axis=1)) >= 0.9999


@pytest.mark.parametrize("change, message", [
    ({"datasets": [{"name": "gone", "path": "/no/such/pairs"}]}, "datasets[0].path: /no/such/pairs does not exist"),
    ({"datasets": []}, "datasets: List should have at least 1 item"),
    ({"hard_negatives": -1}, "hard_negatives"),
])
def test_bad_config_fails_before_training(tmp_path, capsys, change, message):
    config = job(tmp_path, tmp_path / "runs").model_dump()
    config.update(change)
    path = tmp_path / "bad.yaml"
    path.write_text(json.dumps(config))
    assert job_main("contrastive", ContrastiveJobConfig, run_contrastive, ["--config", str(path)]) == 2
    error = capsys.readouterr().err
    assert message in error and "Traceback" not in error, error

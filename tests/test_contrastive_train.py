"""Contrastive training on Ray Train (2 workers). The NV-Embed recipe on a tiny Mistral (the shipped CPU config):
two stages, LoRA, latent attention, GradCache; only adapters and the head train, and the exported model gives the
training model's vectors. Bad configs fail before training. (The Nomic recipe runs end to end in test_recipe.py:
held-out NDCG@10 rises, the export opens in sentence-transformers with our vectors, bad rows are counted.)"""

import json
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from safetensors.torch import load_file
from sentence_transformers import SentenceTransformer

from raylib.config import ContrastiveJobConfig, job_main
from raylib.data.sample_sets import (
    docstring_classification_rows,
    docstring_training_rows,
)
from raylib.models.embedder import Embedder, pad_token_ids
from raylib.models.spec import resolve_spec
from raylib.models.tiny_decoder import write_tiny_decoder
from raylib.train.contrastive import build_biencoder, dataset_tokenizers
from raylib.train.run import run_contrastive
from tests.conftest import ROOT, write_jsonl


def job(pairs: Path, storage: Path, **changes) -> ContrastiveJobConfig:
    config = {
        "model": {"path": "bundled", "max_length": 64},
        "datasets": [{"name": "docstrings", "path": str(pairs)}],
        "hard_negatives": 1, "batch_size": 16,
        "optim": {"lr": 1.2e-4, "warmup_steps": 2, "max_steps": 15},
        "scaling": {"num_workers": 2, "cpus_per_worker": 0.75, "threads_per_worker": 1},
        "checkpoint": {"storage_path": str(storage), "name": "finetune", "every_steps": 15},
        **changes,
    }
    return ContrastiveJobConfig.model_validate(config)


@pytest.mark.parametrize("change, message", [
    ({"datasets": [{"name": "gone", "path": "/no/such/pairs"}]}, "datasets[0].path: /no/such/pairs does not exist"),
    ({"datasets": []}, "datasets: List should have at least 1 item"),
    ({"hard_negatives": -1}, "hard_negatives"),
    ({"stages": [{"name": "one", "steps": 10, "datasets": ["docstrings"]}]},
     "stages: steps add up to 10 but optim.max_steps is 15; make them equal"),
    ({"stages": [{"name": "one", "steps": 15, "datasets": ["web"]}]},
     "stages.one.datasets: ['web'] are not in datasets; use ['docstrings']"),
    ({"datasets": [{"name": "d", "path": "p", "query_prefix": "q: ", "instruction": "Find it"}]},
     "dataset d sets both query_prefix and instruction; keep one"),
    ({"grad_cache_chunk": 4, "strategy": {"kind": "deepspeed"}}, "grad_cache_chunk: GradCache runs with strategy"),
    ({"model": {"pooling": "max"}}, "model.pooling: Input should be"),
    ({"model": {"precision": "bf16"}}, "model.precision: sets inference precision; training uses the top-level"),
])
def test_bad_config_fails_before_training(tmp_path, capsys, change, message):
    config = job(tmp_path, tmp_path / "runs").model_dump()
    config.update(change)
    path = tmp_path / "bad.yaml"
    path.write_text(json.dumps(config))
    assert job_main("contrastive", ContrastiveJobConfig, run_contrastive, ["--config", str(path)]) == 2
    error = capsys.readouterr().err
    assert message in error and "Traceback" not in error, error


def nvembed_job(tmp_path: Path) -> ContrastiveJobConfig:
    """The shipped CPU NV-Embed config with this test's paths and fewer, smaller steps."""
    config = yaml.safe_load((ROOT / "jobs" / "configs" / "nvembed_two_stage_cpu.yaml").read_text())
    write_tiny_decoder(tmp_path / "tiny-mistral")
    write_jsonl(tmp_path / "docstrings" / "pairs.jsonl", docstring_training_rows(limit=200, negatives=2))
    write_jsonl(tmp_path / "modules" / "pairs.jsonl", docstring_classification_rows(limit=200, negatives=2))
    config["model"]["path"] = str(tmp_path / "tiny-mistral")
    for dataset in config["datasets"]:
        dataset["path"] = str(tmp_path / dataset["name"])
    config["stages"][0]["steps"], config["stages"][1]["steps"] = 3, 2
    config.update(batch_size=8, grad_cache_chunk=8)
    config["optim"].update(max_steps=5, warmup_steps=1)
    config["checkpoint"].update(storage_path=str(tmp_path / "runs"), every_steps=5)
    return ContrastiveJobConfig.model_validate(config)


def test_nvembed_two_stages_train_adapters_and_head_and_export_the_training_vectors(ray_session, tmp_path):
    config = nvembed_job(tmp_path)
    result = run_contrastive(config)
    rows = [json.loads(line) for line in (tmp_path / "runs" / "nvembed-cpu" / "metrics.jsonl").read_text().splitlines()]
    assert [row["stage"] for row in rows] == ["retrieval"] * 3 + ["blend"] * 2
    assert {row["dataset"] for row in rows[:3]} == {"docstrings"}
    assert all(np.isfinite(row["loss"]) for row in rows)

    exported = tmp_path / "runs" / "nvembed-cpu" / "model"  # published beside the checkpoints
    assert json.loads((exported / "config.json").read_text())["is_causal"] is False
    weights = load_file(exported / "model.safetensors")
    assert not any("lora" in name for name in weights)

    torch.manual_seed(config.seed)  # the model as the job built it before training
    spec = resolve_spec(**config.model.model_dump())
    start = build_biencoder(config, spec).state_dict()
    original = load_file(tmp_path / "tiny-mistral" / "model.safetensors")
    assert torch.equal(weights["layers.0.mlp.gate_proj.weight"], original["layers.0.mlp.gate_proj.weight"])
    assert torch.equal(weights["embed_tokens.weight"], original["embed_tokens.weight"])
    assert not torch.equal(weights["layers.0.self_attn.q_proj.weight"], original["layers.0.self_attn.q_proj.weight"])
    head = load_file(exported / "1_LatentAttention" / "model.safetensors")
    assert not torch.equal(head["latents"], start["head.latents"])

    state = torch.load(Path(result.checkpoint.path) / "training_state.pt", weights_only=True)["model"]
    trained = build_biencoder(config, spec)
    trained.load_state_dict(state)
    trained.eval()
    tokenizer = dataset_tokenizers(config, spec)["docstrings"]
    texts = ["Return the absolute value of a number.", "how do I read a file line by line", "x"]
    ids = tokenizer(texts, "query")
    input_ids, mask = pad_token_ids(ids, tokenizer.pad_id)
    with torch.no_grad():
        expected = torch.nn.functional.normalize(
            trained(input_ids, mask, torch.full((3,), tokenizer.prompt_length("query"))), dim=-1).numpy()
    instruction = tokenizer.prefixes["query"]
    assert instruction.startswith("Instruct: ") and tokenizer.prompt_length("query") > 5
    ours = Embedder(resolve_spec(path=str(exported), query_prefix=instruction)).encode(texts, "query")
    assert np.allclose(ours, expected, atol=1e-5)
    theirs = SentenceTransformer(str(exported), device="cpu", trust_remote_code=True).encode(
        texts, prompt=instruction, normalize_embeddings=True)
    assert np.allclose(ours, theirs, atol=1e-5)


@pytest.mark.parametrize("change, message", [
    ({"datasets": [{"name": "d", "path": "PAIRS", "query_column": "question"}]},
     "datasets[0].query_column: 'question' is not a column of"),
    ({"datasets": [{"name": "d", "path": "PAIRS"}], "hard_negatives": 2, "in_batch_negatives": True},
     "datasets[0].negatives_column: 'negatives' is not a column of"),
])
def test_missing_columns_fail_before_training(tmp_path, capsys, change, message):
    write_jsonl(tmp_path / "pairs" / "pairs.jsonl", [{"query": "q", "document": "d"}])
    config = job(tmp_path, tmp_path / "runs").model_dump()
    config.update(json.loads(json.dumps(change).replace("PAIRS", str(tmp_path / "pairs"))))
    path = tmp_path / "bad.yaml"
    path.write_text(json.dumps(config))
    assert job_main("contrastive", ContrastiveJobConfig, run_contrastive, ["--config", str(path)]) == 2
    error = capsys.readouterr().err
    assert message in error and "Traceback" not in error, error

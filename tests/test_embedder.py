"""The Embedder against sentence-transformers and against its own definitions (prefixes, pooling, Matryoshka)."""

import numpy as np
import pytest
import torch
from sentence_transformers import SentenceTransformer

from raylib.config import ConfigError
from raylib.models.batching import token_budget_batches
from raylib.models.embedder import Embedder, pad_token_ids
from raylib.models.spec import resolve_spec


def cosine(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return (a * b).sum(1) / np.linalg.norm(a, axis=1) / np.linalg.norm(b, axis=1)


def test_matches_sentence_transformers(embedder, documents):
    texts = [doc["text"] for doc in documents[:96]] + ["word " * 600]  # the last one is truncated at 256 tokens
    ours = embedder.encode(texts)
    reference = SentenceTransformer(str(embedder.spec.directory), device="cpu").encode(texts, batch_size=16)
    assert ours.shape == reference.shape == (len(texts), 384)
    assert cosine(ours, reference).min() >= 0.9999
    assert np.allclose(np.linalg.norm(ours, axis=1), 1.0, atol=1e-5)


def test_reads_the_model_directory_settings(embedder):
    spec = embedder.spec
    assert (spec.pooling, spec.normalize, spec.max_length, spec.dimensions) == ("mean", True, 256, 384)


def test_prefix_is_prepended_per_input_type(documents):
    prefixed = Embedder(resolve_spec(query_prefix="search_query: ", document_prefix="search_document: "))
    text = documents[0]["text"]
    plain = Embedder(resolve_spec())
    assert np.allclose(prefixed.encode([text], "query"), plain.encode(["search_query: " + text]), atol=1e-6)
    assert np.allclose(prefixed.encode([text], "document"), plain.encode(["search_document: " + text]), atol=1e-6)
    assert not np.allclose(prefixed.encode([text], "query"), prefixed.encode([text], "document"), atol=1e-3)


def test_matryoshka_truncates_and_renormalises(embedder, documents):
    texts = [doc["text"] for doc in documents[:8]]
    small = Embedder(resolve_spec(dimensions=128)).encode(texts)
    full = embedder.encode(texts)
    assert small.shape == (8, 128)
    expected = full[:, :128] / np.linalg.norm(full[:, :128], axis=1, keepdims=True)
    assert np.allclose(small, expected, atol=1e-5)


def test_bf16_autocast_stays_within_cosine_0_999_and_auto_follows_the_cpu(embedder, documents):
    texts = [doc["text"] for doc in documents[:48]]
    full = embedder.encode(texts)
    bf16 = Embedder(resolve_spec(precision="bf16")).encode(texts)
    assert not np.array_equal(bf16, full)  # the forward really ran in bf16
    assert cosine(bf16, full).min() >= 0.999
    auto = Embedder(resolve_spec(precision="auto"))
    assert auto.precision == ("bf16" if torch.cpu._is_avx512_bf16_supported() else "fp32")
    assert np.array_equal(auto.encode(texts), bf16 if auto.precision == "bf16" else full)


def test_padding_rounds_up_to_a_multiple_within_the_limit():
    input_ids, mask = pad_token_ids([[5, 6, 7], [8]], pad_id=0, multiple=16)
    assert input_ids.shape == mask.shape == (2, 16)
    assert input_ids[0, :4].tolist() == [5, 6, 7, 0] and mask.sum(1).tolist() == [3, 1]
    assert pad_token_ids([[1] * 30], 0, multiple=16, limit=31)[0].shape == (1, 31)
    assert pad_token_ids([[1] * 40], 0, multiple=16, limit=31)[0].shape == (1, 40)  # never cuts a row
    assert Embedder(resolve_spec(precision="bf16")).pad_multiple == 16


@pytest.mark.parametrize("pooling", ["cls", "last"])
def test_pooling_modes_pick_the_right_token(pooling, documents):
    model = Embedder(resolve_spec(pooling=pooling, normalize=False))
    texts = [documents[1]["text"], "short text"]
    vectors = model.encode(texts)
    for row, text in enumerate(texts):
        ids = torch.tensor([model.tokenize([text])[0]])
        with torch.inference_mode():
            hidden = model.model(input_ids=ids).last_hidden_state[0]
        expected = hidden[0] if pooling == "cls" else hidden[-1]
        assert np.allclose(vectors[row], expected.numpy(), atol=1e-4)


def test_only_safetensors_weights_are_loaded(tmp_path):
    (tmp_path / "config.json").write_text('{"model_type": "bert"}')
    (tmp_path / "pytorch_model.bin").write_bytes(b"not loaded")
    with pytest.raises(ConfigError, match="model.path: .* no safetensors weights"):
        resolve_spec(path=str(tmp_path))


def test_remote_code_needs_consent(tmp_path):
    (tmp_path / "config.json").write_text('{"model_type": "custom", "auto_map": {"AutoConfig": "code.Config"}}')
    (tmp_path / "model.safetensors").write_bytes(b"")
    with pytest.raises(ConfigError, match="auto_map in config.json.*set model.trust_remote_code: true"):
        resolve_spec(path=str(tmp_path))


def test_dimensions_larger_than_the_model_are_refused():
    with pytest.raises(ConfigError, match="model.dimensions: 1000 is larger than the model's 384"):
        resolve_spec(dimensions=1000)


def test_token_budget_batches_bound_padding():
    lengths = [5, 300, 12, 12, 80, 7, 300, 1]
    batches = token_budget_batches(lengths, batch_tokens=600)
    assert sorted(np.concatenate(batches).tolist()) == list(range(len(lengths)))
    for batch in batches:
        assert len(batch) * max(lengths[i] for i in batch) <= 600 or len(batch) == 1
    assert [lengths[i] for i in batches[0]] == [300, 300]


@pytest.mark.parametrize("assigned, cuda, worker, device", [
    ([], False, True, "cpu"), ([0], False, True, "cpu"),  # no CUDA: the CPU whatever Ray says
    ([], True, True, "cpu"),  # a Ray worker never computes on a GPU it did not reserve
    ([3], True, True, "cuda:0"),  # Ray makes the assigned GPU the first visible one
    ([], True, False, "cuda:0"), ([], False, False, "cpu"),  # a driver uses the GPU when there is one
])
def test_one_device_rule_from_what_ray_assigned(assigned, cuda, worker, device):
    from raylib.models.device import choose_device

    assert choose_device(assigned, cuda, worker) == device


def test_precision_auto_is_fp16_on_gpus_without_bf16_and_the_embedder_takes_the_rules_device():
    from raylib.models.device import current_device
    from raylib.models.precision import resolve_precision

    if not torch.cuda.is_available():
        assert resolve_precision("auto", torch.device("cuda")) == "fp16"
    assert resolve_precision("fp32", torch.device("cuda")) == "fp32"
    assert str(Embedder(resolve_spec(dimensions=32)).device) == current_device() == (
        "cuda:0" if torch.cuda.is_available() else "cpu")

"""nomic-bert: attention backends, rotary/NTK, save/load, the three layouts (native, nomic's remote code, ours),
the native export opened without raylib, the Embedder at 8192 tokens."""

import json
import math
import subprocess
import sys

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import save_file
from transformers import AutoModel, AutoTokenizer
from transformers.models.auto.configuration_auto import CONFIG_MAPPING
from transformers.models.auto.modeling_auto import MODEL_MAPPING
from transformers.models.nomic_bert import configuration_nomic_bert, modeling_nomic_bert

from raylib.models.attention import Packing, attention, packed_kernel
from raylib.models.biencoder import BiEncoder, export_biencoder
from raylib.models.embedder import Embedder
from raylib.models.encoder import load_encoder
from raylib.models.nomic_bert import (
    NomicBertConfig,
    NomicBertForMaskedLM,
    NomicBertModel,
)
from raylib.models.nomic_layouts import native_config, read_config
from raylib.models.rotary import ntk_base
from raylib.models.spec import resolve_model_path, resolve_spec
from raylib.train.mlm import with_tokenizer
from tests.conftest import copy_bundled_tokenizer

TINY = dict(n_embd=64, n_head=4, n_layer=2, n_inner=256, max_trained_positions=64, n_positions=8192)

# A config.json as the public nomic checkpoints write it: GPT-2 keys, remote-code auto_map, unused options.
NOMIC_LAYOUT_CONFIG = {
    "activation_function": "swiglu", "architectures": ["NomicBertModel"], "attn_pdrop": 0.0,
    "auto_map": {"AutoConfig": "nomic-ai/nomic-bert-2048--configuration_hf_nomic_bert.NomicBertConfig",
                 "AutoModel": "nomic-ai/nomic-bert-2048--modeling_hf_nomic_bert.NomicBertModel"},
    "bos_token_id": None, "causal": False, "dense_seq_output": True, "embd_pdrop": 0.0, "eos_token_id": None,
    "fused_bias_fc": True, "fused_dropout_add_ln": True, "initializer_range": 0.02, "layer_norm_epsilon": 1e-12,
    "max_trained_positions": 64, "mlp_fc1_bias": False, "mlp_fc2_bias": False, "model_type": "nomic_bert",
    "n_embd": 64, "n_head": 4, "n_inner": 256, "n_layer": 2, "n_positions": 8192, "pad_vocab_size_multiple": 64,
    "parallel_block": False, "prenorm": False, "qkv_proj_bias": False, "resid_pdrop": 0.0, "rotary_emb_base": 1000,
    "rotary_emb_fraction": 1.0, "rotary_emb_interleaved": False, "rotary_emb_scale_base": None,
    "rotary_scaling_factor": 2, "summary_type": "cls_index", "torch_dtype": "float32",
    "transformers_version": "4.34.0", "type_vocab_size": 2, "use_cache": True, "use_flash_attn": True,
    "use_rms_norm": False, "use_xentropy": True, "vocab_size": 30528,
}


def nomic_layout_weights(config: dict, seed: int = 0) -> dict[str, torch.Tensor]:
    """Random tensors under the public checkpoints' parameter names (no `bert.` prefix: an embedding model)."""
    generator = torch.Generator().manual_seed(seed)
    hidden, inner = config["n_embd"], config["n_inner"]

    def normal(*shape):
        return torch.randn(*shape, generator=generator) * 0.05

    def norm(name):
        return {f"{name}.weight": 1 + normal(hidden), f"{name}.bias": normal(hidden)}

    weights = {"embeddings.word_embeddings.weight": normal(config["vocab_size"], hidden),
               "embeddings.token_type_embeddings.weight": normal(2, hidden), **norm("emb_ln")}
    for i in range(config["n_layer"]):
        layer = f"encoder.layers.{i}"
        weights |= {f"{layer}.attn.Wqkv.weight": normal(3 * hidden, hidden),
                    f"{layer}.attn.out_proj.weight": normal(hidden, hidden),
                    f"{layer}.mlp.fc11.weight": normal(inner, hidden), f"{layer}.mlp.fc12.weight": normal(inner, hidden),
                    f"{layer}.mlp.fc2.weight": normal(hidden, inner), **norm(f"{layer}.norm1"), **norm(f"{layer}.norm2")}
    return weights


def reference_forward(w: dict, config: dict, input_ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """nomic-bert's forward written out from the published formulas: post-norm blocks, rotary on q and k with
    halves rotated, dynamic NTK base past max_trained_positions, additive mask, SwiGLU = fc11(x) * silu(fc12(x))."""
    hidden, heads = config["n_embd"], config["n_head"]
    head_dim = hidden // heads
    eps = config["layer_norm_epsilon"]
    batch, seq_len = input_ids.shape
    x = w["embeddings.word_embeddings.weight"][input_ids] + w["embeddings.token_type_embeddings.weight"][0]
    x = F.layer_norm(x, (hidden,), w["emb_ln.weight"], w["emb_ln.bias"], eps)
    base, factor, trained = config["rotary_emb_base"], config["rotary_scaling_factor"], config["max_trained_positions"]
    if factor and seq_len > trained:
        base = base * ((factor * seq_len / trained) - (factor - 1)) ** (head_dim / (head_dim - 2))
    inv_freq = 1.0 / base ** (torch.arange(0, head_dim, 2).float() / head_dim)
    freqs = torch.outer(torch.arange(seq_len).float(), inv_freq)
    cos, sin = freqs.cos().repeat(1, 2)[:, None, :], freqs.sin().repeat(1, 2)[:, None, :]

    def rotate(t):  # t: (batch, seq, heads, head_dim)
        half = head_dim // 2
        return t * cos + torch.cat((-t[..., half:], t[..., :half]), dim=-1) * sin

    additive = (1.0 - mask[:, None, None, :].float()) * torch.finfo(torch.float32).min
    def attention(x, p):
        qkv = (x @ w[f"{p}.attn.Wqkv.weight"].T).view(batch, seq_len, 3, heads, head_dim)
        q, k, v = rotate(qkv[:, :, 0]), rotate(qkv[:, :, 1]), qkv[:, :, 2]
        scores = q.permute(0, 2, 1, 3) @ k.permute(0, 2, 3, 1) / math.sqrt(head_dim) + additive
        context = (scores.softmax(-1) @ v.permute(0, 2, 1, 3)).permute(0, 2, 1, 3).reshape(batch, seq_len, hidden)
        return context @ w[f"{p}.attn.out_proj.weight"].T

    def mlp(x, p):
        return ((x @ w[f"{p}.mlp.fc11.weight"].T) * F.silu(x @ w[f"{p}.mlp.fc12.weight"].T)) @ w[f"{p}.mlp.fc2.weight"].T

    def norm(x, name):
        return F.layer_norm(x, (hidden,), w[f"{name}.weight"], w[f"{name}.bias"], eps)

    residual = None
    for i in range(config["n_layer"]):
        p = f"encoder.layers.{i}"
        if config["prenorm"]:  # the reference's Block: the stream carries the sums, x each block's MLP output
            residual = x if residual is None else x + residual
            residual = attention(norm(residual, f"{p}.norm1"), p) + residual
            x = mlp(norm(residual, f"{p}.norm2"), p)
        else:
            x = norm(attention(x, p) + x, f"{p}.norm1")
            x = norm(mlp(x, p) + x, f"{p}.norm2")
    return x


@pytest.fixture(scope="module")
def nomic_dir(tmp_path_factory):
    """A directory in the public nomic layout: config.json, model.safetensors and the bert-base-uncased tokenizer."""
    directory = tmp_path_factory.mktemp("nomic")
    (directory / "config.json").write_text(json.dumps(NOMIC_LAYOUT_CONFIG))
    save_file(nomic_layout_weights(NOMIC_LAYOUT_CONFIG), directory / "model.safetensors")
    copy_bundled_tokenizer(directory)
    return directory


def padded_batch(lengths: list[int], seed: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    input_ids = torch.randint(1000, 30000, (len(lengths), max(lengths)), generator=generator)
    mask = torch.zeros_like(input_ids)
    for row, length in enumerate(lengths):
        mask[row, :length] = 1
    return input_ids, mask


def test_sdpa_matches_a_plain_attention_with_padding():
    generator = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(3, 11, 4, 16, generator=generator) for _ in range(3))
    mask = torch.tensor([[1] * 11, [1] * 7 + [0] * 4, [1] * 2 + [0] * 9])
    scores = torch.einsum("bqhd,bkhd->bhqk", q, k) / 4.0
    scores = scores.masked_fill(~mask.bool()[:, None, None, :], float("-inf"))
    expected = torch.einsum("bhqk,bkhd->bqhd", scores.softmax(-1), v)
    got = attention(q, k, v, mask)
    valid = mask.bool()
    torch.testing.assert_close(got[valid], expected[valid], atol=1e-5, rtol=1e-5)


def test_packing_drops_the_padding_and_puts_every_token_back():
    mask = torch.tensor([[1, 1, 1, 0], [0, 0, 0, 0], [1, 1, 1, 1], [0, 1, 1, 0]])  # empty and left-padded rows too
    packing = Packing.of(mask)
    assert packing.keep.tolist() == [0, 1, 2, 8, 9, 10, 11, 13, 14]
    assert packing.positions.tolist() == [0, 1, 2, 0, 1, 2, 3, 1, 2]
    assert packing.cu_seqlens.tolist() == [0, 3, 3, 7, 9] and packing.max_len == 4
    x = torch.randn(4, 4, 3, 2)
    packed = packing.unpad(x)
    assert packed.shape == (9, 3, 2)
    repadded = packing.repad(packed)
    assert torch.equal(repadded[mask.bool()], x[mask.bool()]) and not repadded[~mask.bool()].any()


def test_the_whole_layer_unpadded_equals_the_padded_pass_forward_and_backward():
    """sdpa_unpadded runs every layer (projections, MLP) on the real tokens only, SDPA as the attention kernel:
    the bookkeeping flash-attn's varlen path uses. Same outputs at real tokens and same gradients as padded SDPA."""
    torch.manual_seed(0)
    padded = NomicBertModel(NomicBertConfig(**TINY, attn_backend="sdpa"))
    unpadded = NomicBertModel(NomicBertConfig(**TINY, attn_backend="sdpa_unpadded"))
    unpadded.load_state_dict(padded.state_dict())
    assert packed_kernel("auto", torch.zeros(1)) is None  # a CPU pass stays padded unless asked
    for lengths in ([13, 5, 1, 9], [100, 30]):  # the second beyond max_trained_positions: NTK-scaled tables
        input_ids, mask = padded_batch(lengths)
        outputs = []
        for model in (padded, unpadded):
            model.zero_grad()
            hidden = model(input_ids, mask).last_hidden_state
            (hidden * mask[..., None]).square().sum().backward()
            outputs.append((hidden, {name: p.grad.clone() for name, p in model.named_parameters()}))
        (a, grads_a), (b, grads_b) = outputs
        valid = mask.bool()
        torch.testing.assert_close(b[valid], a[valid], atol=1e-5, rtol=1e-5)
        assert not b[~valid].any()  # padded positions come back as zeros
        for name in grads_a:
            torch.testing.assert_close(grads_b[name], grads_a[name], atol=1e-4, rtol=1e-4)


def test_public_layout_loads_without_remote_code_and_matches_the_reference(nomic_dir):
    model = load_encoder(nomic_dir)  # trust_remote_code stays off
    assert isinstance(model, NomicBertModel)
    weights = nomic_layout_weights(NOMIC_LAYOUT_CONFIG)
    for lengths in ([9, 5, 2], [100, 70]):  # within and beyond max_trained_positions (64): NTK applies
        compare_to_reference(model, weights, NOMIC_LAYOUT_CONFIG, lengths)


def test_the_pre_norm_variant_matches_the_reference(tmp_path):
    config = {**NOMIC_LAYOUT_CONFIG, "prenorm": True}
    (tmp_path / "config.json").write_text(json.dumps(config))
    weights = nomic_layout_weights(config, seed=3)
    save_file(weights, tmp_path / "model.safetensors")
    model = load_encoder(tmp_path).eval()
    compare_to_reference(model, weights, config, [9, 5, 2])


def compare_to_reference(model, weights: dict, config: dict, lengths: list[int]) -> None:
    """The model's batched outputs at real tokens equal the reference's for each text embedded alone."""
    input_ids, mask = padded_batch(lengths)
    with torch.no_grad():
        got = model(input_ids, attention_mask=mask).last_hidden_state
    for row, length in enumerate(lengths):  # each text as the reference embeds it alone
        expected = reference_forward(weights, config, input_ids[row:row + 1, :length], mask[row:row + 1, :length])
        torch.testing.assert_close(got[row, :length], expected[0], atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("backend", ["sdpa", "sdpa_unpadded"])
def test_a_texts_vectors_do_not_depend_on_its_batchmates_past_the_trained_length(backend):
    """Dynamic NTK scales each sequence's rotary base by its own length, not by the padded batch's."""
    torch.manual_seed(0)
    model = NomicBertModel(NomicBertConfig(**TINY, rotary_scaling_factor=2, attn_backend=backend)).eval()
    input_ids, mask = padded_batch([100, 300, 40])  # 100 and 300 past max_trained_positions (64)
    with torch.no_grad():
        batched = model(input_ids, mask).last_hidden_state
        for row, length in enumerate([100, 300, 40]):
            alone = model(input_ids[row:row + 1, :length], mask[row:row + 1, :length]).last_hidden_state
            torch.testing.assert_close(batched[row, :length], alone[0], atol=1e-5, rtol=1e-5)


def test_dynamic_ntk_is_a_no_op_up_to_the_trained_length_and_scales_beyond():
    torch.manual_seed(0)
    scaled = NomicBertModel(NomicBertConfig(**TINY, rotary_scaling_factor=2)).eval()
    plain = NomicBertModel(NomicBertConfig(**TINY)).eval()
    plain.load_state_dict(scaled.state_dict())
    for length, same in ((64, True), (200, False)):
        input_ids, mask = padded_batch([length])
        with torch.no_grad():
            a = scaled(input_ids, mask).last_hidden_state
            b = plain(input_ids, mask).last_hidden_state
        assert torch.allclose(a, b, atol=1e-6) == same
    assert ntk_base(1000, 64, 64, 64, 2) == 1000
    assert ntk_base(1000, 64, 256, 64, 2) == pytest.approx(1000 * (2 * 4 - 1) ** (64 / 62))


def test_vocab_is_padded_and_the_mlm_head_is_tied():
    config = NomicBertConfig(**TINY, vocab_size=30522)
    assert config.vocab_size == 30528 and config.vocab_size % 64 == 0
    model = NomicBertForMaskedLM(config)
    assert model.cls.predictions.decoder.weight is model.bert.embeddings.word_embeddings.weight


def test_save_and_load_round_trip_with_an_mlm_loss(tmp_path):
    torch.manual_seed(0)
    model = NomicBertForMaskedLM(NomicBertConfig(**TINY)).eval()
    input_ids, mask = padded_batch([12, 8])
    labels = torch.full_like(input_ids, -100)
    labels[0, 3], labels[1, 5] = 2023, 2003
    with torch.no_grad():
        before = model(input_ids, mask, labels=labels)
    model.save_pretrained(tmp_path)
    assert (tmp_path / "model.safetensors").is_file()
    loaded = NomicBertForMaskedLM.from_pretrained(tmp_path).eval()
    with torch.no_grad():
        after = loaded(input_ids, mask, labels=labels)
    assert before.logits.shape == (2, loaded.config.vocab_size)  # logits only at the 2 masked positions
    torch.testing.assert_close(after.loss, before.loss)
    encoder = AutoModel.from_pretrained(tmp_path).eval()  # the encoder alone from an MLM checkpoint
    with torch.no_grad():
        torch.testing.assert_close(encoder(input_ids, mask).last_hidden_state,
                                   model.bert(input_ids, mask).last_hidden_state)


def test_a_checkpoint_with_missing_tensors_fails_listing_them(tmp_path):
    weights = nomic_layout_weights(NOMIC_LAYOUT_CONFIG)
    del weights["encoder.layers.1.mlp.fc2.weight"]
    (tmp_path / "config.json").write_text(json.dumps(NOMIC_LAYOUT_CONFIG))
    save_file(weights, tmp_path / "model.safetensors")
    with pytest.raises(ValueError, match=r"missing_keys: encoder\.layers\.1\.mlp\.fc2\.weight"):
        load_encoder(tmp_path)


def test_bad_config_is_refused_naming_the_keys():
    with pytest.raises(Exception, match="n_embd \\(65\\) must be divisible by n_head \\(4\\)"):
        NomicBertConfig(**{**TINY, "n_embd": 65})
    with pytest.raises(Exception, match="causal"):
        NomicBertConfig(**TINY, causal=True)


def test_embedder_opens_the_layout_and_embeds_8192_tokens(nomic_dir):
    embedder = Embedder(resolve_spec(path=str(nomic_dir), max_length=8192, query_prefix="search_query: ",
                                       document_prefix="search_document: "))
    assert embedder.spec.max_length == 8192 and embedder.spec.pooling == "mean"
    long_text = "retrieval over long documents " * 2500  # > 8192 tokens: truncated to 8192
    assert len(embedder.tokenize([long_text])[0]) == 8192
    vectors = embedder.encode([long_text, "a short one"], batch_tokens=16384)
    assert vectors.shape == (2, 64) and torch.isfinite(torch.from_numpy(vectors)).all()
    query, document = embedder.encode(["sorting"], "query"), embedder.encode(["sorting"], "document")
    assert not (query == document).all()  # the prefixes reach the model


def test_our_model_type_leaves_transformers_nomic_bert_alone():
    assert CONFIG_MAPPING["nomic_bert"] is configuration_nomic_bert.NomicBertConfig
    assert MODEL_MAPPING[configuration_nomic_bert.NomicBertConfig] is modeling_nomic_bert.NomicBertModel
    assert CONFIG_MAPPING["raylib_nomic_bert"] is NomicBertConfig and MODEL_MAPPING[NomicBertConfig] is NomicBertModel


# Run with -I from outside the repository, the editable install's finders removed: raylib cannot be imported.
WITHOUT_RAYLIB = """
import importlib.util, sys
sys.meta_path = [f for f in sys.meta_path if "__editable__" not in getattr(f, "__module__", "")]
sys.path_hooks = [h for h in sys.path_hooks if "__editable__" not in getattr(h, "__module__", "")]
sys.path_importer_cache.clear()
assert importlib.util.find_spec("raylib") is None and importlib.util.find_spec("tests") is None
import numpy as np, torch
from sentence_transformers import SentenceTransformer
from transformers import AutoModel, AutoModelForMaskedLM
inputs, out = np.load(sys.argv[1]), {}
for name, directory in (("st", sys.argv[3]), ("mlm", sys.argv[4])):
    for remote in (False, True):
        model = AutoModel.from_pretrained(directory, trust_remote_code=remote).eval()
        native = type(model).__module__ == "transformers.models.nomic_bert.modeling_nomic_bert"
        assert native != remote, type(model).__module__
        with torch.no_grad():
            for batch in ("short", "long"):
                ids, mask = (torch.from_numpy(inputs[f"{batch}_{part}"]) for part in ("ids", "mask"))
                out[f"{name}_{remote}_{batch}"] = model(input_ids=ids, attention_mask=mask).last_hidden_state.numpy()
with torch.no_grad():
    mlm = AutoModelForMaskedLM.from_pretrained(sys.argv[4]).eval()
    out["logits"] = mlm(input_ids=torch.from_numpy(inputs["short_ids"]),
                        attention_mask=torch.from_numpy(inputs["short_mask"])).logits.numpy()
out["sentences"] = SentenceTransformer(sys.argv[3], device="cpu").encode(list(inputs["texts"]))
np.savez(sys.argv[2], **out)
"""


def run_without_raylib(tmp_path, inputs: dict, st_dir, mlm_dir) -> dict:
    np.savez(tmp_path / "inputs.npz", **inputs)
    env = {"PATH": "/usr/bin:/bin", "HOME": str(tmp_path), "HF_HUB_OFFLINE": "1",
           "HF_MODULES_CACHE": str(tmp_path / "hf_modules")}
    done = subprocess.run([sys.executable, "-I", "-c", WITHOUT_RAYLIB, "inputs.npz", "out.npz", str(st_dir),
                           str(mlm_dir)], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    return dict(np.load(tmp_path / "out.npz"))


def test_exports_open_in_transformers_and_sentence_transformers_without_raylib(tmp_path):
    """The MLM job's export and the contrastive export are transformers' native nomic_bert (AutoModel and
    SentenceTransformer, no remote code) and carry remote code (auto_map) that computes the same; all give our
    vectors: a batch within the trained length, and a text past it (dynamic NTK) alone."""
    torch.manual_seed(0)
    config = NomicBertConfig(**TINY, rotary_scaling_factor=2)
    mlm = NomicBertForMaskedLM(config).eval()
    tokenizer = AutoTokenizer.from_pretrained(resolve_model_path("bundled"))
    with_tokenizer(tokenizer)(mlm, mlm.state_dict(), tmp_path / "mlm")
    assert json.loads((tmp_path / "mlm" / "config.json").read_text())["model_type"] == "nomic_bert"

    spec = resolve_spec(str(tmp_path / "mlm"), pooling="mean", normalize=True)
    biencoder = BiEncoder(spec)  # the contrastive job's model, starting from the MLM job's published one
    assert isinstance(biencoder.backbone, NomicBertModel)
    export_biencoder(biencoder, biencoder.state_dict(), spec, tmp_path / "st")
    exported = Embedder(resolve_spec(str(tmp_path / "st")))
    assert isinstance(exported.model, NomicBertModel)

    texts = ["where are the files stored", "a short one", "sorting a list of numbers in place"]
    short_ids, short_mask = padded_batch([20, 7, 13])
    long_ids, long_mask = padded_batch([150])  # past max_trained_positions (64)
    theirs = run_without_raylib(tmp_path, {"texts": np.array(texts), "short_ids": short_ids.numpy(),
                                           "short_mask": short_mask.numpy(), "long_ids": long_ids.numpy(),
                                           "long_mask": long_mask.numpy()}, tmp_path / "st", tmp_path / "mlm")
    with torch.no_grad():
        ours = {"short": mlm.bert(short_ids, short_mask).last_hidden_state,
                "long": mlm.bert(long_ids, long_mask).last_hidden_state}
        logits = mlm(short_ids, short_mask).logits
    valid = short_mask.bool().numpy()
    for name in ("st", "mlm"):
        for remote in (False, True):
            np.testing.assert_allclose(theirs[f"{name}_{remote}_short"][valid], ours["short"].numpy()[valid],
                                       atol=1e-4, rtol=0)
            np.testing.assert_allclose(theirs[f"{name}_{remote}_long"], ours["long"].numpy(), atol=1e-4, rtol=0)
    np.testing.assert_allclose(theirs["logits"][valid], logits.numpy()[valid], atol=1e-4, rtol=0)
    np.testing.assert_allclose(theirs["sentences"], exported.encode(texts), atol=1e-4, rtol=0)


def test_a_directory_saved_by_transformers_nomic_bert_embeds_as_the_native_class_does(tmp_path):
    """Widths that are not multiples of 256, a vocabulary that is not one of 64, dynamic NTK: read exactly."""
    torch.manual_seed(0)
    native_config = configuration_nomic_bert.NomicBertConfig(
        vocab_size=30522, hidden_size=48, num_hidden_layers=2, num_attention_heads=4, intermediate_size=100,
        max_position_embeddings=64, rope_parameters={"rope_type": "dynamic", "factor": 2.0, "rope_theta": 500.0})
    native = modeling_nomic_bert.NomicBertModel(native_config).eval()
    native.save_pretrained(tmp_path)
    copy_bundled_tokenizer(tmp_path)
    embedder = Embedder(resolve_spec(str(tmp_path), pooling="mean", normalize=False))
    assert isinstance(embedder.model, NomicBertModel) and embedder.spec.hidden_size == 48
    for lengths in ([20, 7, 13], [150]):  # a batch within the trained length; one text past it
        input_ids, mask = padded_batch(lengths)
        with torch.no_grad():
            expected = native(input_ids=input_ids, attention_mask=mask).last_hidden_state
            got = embedder.model(input_ids, mask).last_hidden_state
        torch.testing.assert_close(got[mask.bool()], expected[mask.bool()], atol=1e-5, rtol=1e-5)
    vectors = embedder.embed_batch([[101, 2054, 2003, 102], [101, 7592, 102]])
    input_ids, mask = torch.tensor([[101, 2054, 2003, 102], [101, 7592, 102, 0]]), torch.tensor([[1] * 4, [1] * 3 + [0]])
    with torch.no_grad():
        hidden = native(input_ids=input_ids, attention_mask=mask).last_hidden_state
    pooled = (hidden * mask[..., None]).sum(1) / mask.sum(1, keepdim=True)
    np.testing.assert_allclose(vectors, pooled.numpy(), atol=1e-5, rtol=0)


def test_our_config_survives_the_native_layout_and_what_it_cannot_express_is_refused():
    config = NomicBertConfig(**TINY, rotary_scaling_factor=2)
    back = read_config(native_config(config).to_dict())
    for key in ("n_embd", "n_head", "n_layer", "vocab_size", "max_trained_positions", "rotary_scaling_factor",
                "rotary_emb_base", "n_positions", "activation_function", "mlp_width"):
        assert getattr(back, key) == getattr(config, key), key
    with pytest.raises(ValueError, match="has no prenorm: true; qkv_proj_bias: true"):
        native_config(NomicBertConfig(**TINY, prenorm=True, qkv_proj_bias=True))

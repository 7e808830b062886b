"""nomic-bert's on-disk layouts and the conversions between them: every published layout loads into our
training class (nomic_bert.py), and what we publish is transformers' native layout, which `AutoModel` and
`SentenceTransformer` open without our package.

    native  transformers' `nomic_bert`: config hidden_size, num_attention_heads, intermediate_size, hidden_act,
            rope_parameters ({rope_type: default | dynamic, factor, rope_theta}; max_position_embeddings is the
            trained length dynamic NTK scales from); its modules embeddings.LayerNorm, layers.N.self_attn.q/k/v/o_proj,
            layers.N.mlp.gate/up/down_proj, layers.N.post_attention_layernorm, post_mlp_layernorm (its
            save_pretrained writes them under nomic's names, its loader reads both: we use its loader and saver)
    nomic   nomic-ai's remote-code checkpoints: model_type `nomic_bert` with GPT-2 keys (n_embd, n_head, ...),
            weights emb_ln, encoder.layers.N.attn.Wqkv, mlp.fc11/fc12/fc2, norm1/norm2: our class's own names
    ours    our class's save_pretrained: model_type `raylib_nomic_bert`, the nomic keys and names

Our class has what the native one lacks (pre-norm, biases, plain MLPs, partial or learned positions); such a
model loads here but is refused at export, naming the keys (`native_problems`).
"""

import json
import shutil
from pathlib import Path

import torch
from transformers.models.nomic_bert import configuration_nomic_bert, modeling_nomic_bert

from raylib.models.nomic_bert import NomicBertConfig, NomicBertModel

NATIVE, NOMIC, OURS = "native", "nomic", "ours"
NATIVE_ACTIVATIONS = {"swiglu": "silu", "geglu": "gelu"}  # our gated activation -> native hidden_act
REMOTE_CODE = Path(__file__).with_name("nomic_bert_remote.py")  # shipped as modeling_nomic_bert.py
REMOTE_AUTO_MAP = {"AutoConfig": "modeling_nomic_bert.NomicBertConfig",
                   "AutoModel": "modeling_nomic_bert.NomicBertModel"}


def layout_of(config: dict) -> str | None:
    """Which nomic-bert layout a config.json (as a dict) is in; None: not nomic-bert."""
    if config.get("model_type") == NomicBertConfig.model_type:
        return OURS
    if config.get("model_type") == "nomic_bert":
        return NOMIC if "n_embd" in config else NATIVE
    return None


def read_config(config: dict) -> NomicBertConfig:
    """Our config for a config.json of any layout."""
    if layout_of(config) != NATIVE:
        return NomicBertConfig.from_dict({**config, "model_type": NomicBertConfig.model_type})
    native = configuration_nomic_bert.NomicBertConfig.from_dict(config)
    rope = native.rope_parameters
    problems = []
    if native.hidden_act not in NATIVE_ACTIVATIONS.values():
        problems.append(f"hidden_act {native.hidden_act!r} (use one of {sorted(NATIVE_ACTIVATIONS.values())})")
    if rope["rope_type"] not in ("default", "dynamic"):
        problems.append(f"rope_type {rope['rope_type']!r} (default or dynamic)")
    if rope.get("partial_rotary_factor", 1.0) != 1.0 or native.head_dim * native.num_attention_heads != native.hidden_size:
        problems.append("partial rotary or head_dim * num_attention_heads != hidden_size")
    if problems:
        raise ValueError("nomic_bert config: not supported: " + "; ".join(problems))
    factor = rope.get("factor") if rope["rope_type"] == "dynamic" else None
    trained = native.max_position_embeddings
    return NomicBertConfig(
        vocab_size=native.vocab_size, pad_vocab_size_multiple=1, n_embd=native.hidden_size,
        n_head=native.num_attention_heads, n_layer=native.num_hidden_layers, n_inner=native.intermediate_size,
        mlp_multiple_of=1, activation_function={v: k for k, v in NATIVE_ACTIVATIONS.items()}[native.hidden_act],
        layer_norm_epsilon=native.layer_norm_eps, initializer_range=native.initializer_range,
        type_vocab_size=native.type_vocab_size, pad_token_id=native.pad_token_id,
        rotary_emb_base=rope["rope_theta"], rotary_scaling_factor=factor, max_trained_positions=trained,
        # dynamic NTK has no upper length: accept what our class accepts by default (or more)
        n_positions=max(trained, NomicBertConfig.n_positions) if factor else trained,
    )


def native_problems(config: NomicBertConfig) -> list[str]:
    """What of `config` transformers' native nomic_bert cannot express (empty: it exports exactly)."""
    flags = ("prenorm", "qkv_proj_bias", "mlp_fc1_bias", "mlp_fc2_bias")
    problems = [f"{flag}: true" for flag in flags if getattr(config, flag)]
    if config.activation_function not in NATIVE_ACTIVATIONS:
        problems.append(f"activation_function: {config.activation_function} (use {' or '.join(NATIVE_ACTIVATIONS)})")
    if config.rotary_emb_fraction != 1:
        problems.append(f"rotary_emb_fraction: {config.rotary_emb_fraction} (use 1.0)")
    if config.type_vocab_size < 1:
        problems.append("type_vocab_size: 0 (use 1 or more)")
    return problems


def native_config(config: NomicBertConfig) -> configuration_nomic_bert.NomicBertConfig:
    """transformers' config for our `config`, or ValueError naming what it cannot express."""
    problems = native_problems(config)
    if problems:
        raise ValueError("nomic_bert config: transformers' nomic_bert layout has no " + "; ".join(problems))
    rope = {"rope_type": "default", "rope_theta": float(config.rotary_emb_base)}
    if config.rotary_scaling_factor:
        rope = {**rope, "rope_type": "dynamic", "factor": float(config.rotary_scaling_factor)}
    return configuration_nomic_bert.NomicBertConfig(
        vocab_size=config.vocab_size, hidden_size=config.n_embd, num_hidden_layers=config.n_layer,
        num_attention_heads=config.n_head, intermediate_size=config.mlp_width,
        hidden_act=NATIVE_ACTIVATIONS[config.activation_function], type_vocab_size=config.type_vocab_size,
        max_position_embeddings=config.max_trained_positions if config.rotary_scaling_factor else config.n_positions,
        layer_norm_eps=config.layer_norm_epsilon, initializer_range=config.initializer_range,
        pad_token_id=config.pad_token_id or 0, rope_parameters=rope,
    )


def _names(n_layer: int) -> dict[str, str]:
    """Our encoder's parameter names -> native ones (Wqkv aside: one tensor there, three here)."""
    names = {"embeddings.word_embeddings.weight": "embeddings.word_embeddings.weight",
             "embeddings.token_type_embeddings.weight": "embeddings.token_type_embeddings.weight",
             "emb_ln.weight": "embeddings.LayerNorm.weight", "emb_ln.bias": "embeddings.LayerNorm.bias"}
    parts = {"attn.out_proj.weight": "self_attn.o_proj.weight", "mlp.fc11.weight": "mlp.up_proj.weight",
             "mlp.fc12.weight": "mlp.gate_proj.weight", "mlp.fc2.weight": "mlp.down_proj.weight",
             **{f"norm{i}.{kind}": f"{native}.{kind}" for i, native in ((1, "post_attention_layernorm"),
                                                                      (2, "post_mlp_layernorm"))
                for kind in ("weight", "bias")}}
    for layer in range(n_layer):
        names |= {f"encoder.layers.{layer}.{ours}": f"layers.{layer}.{native}" for ours, native in parts.items()}
    return names


def native_state(state: dict, config: NomicBertConfig, prefix: str = "") -> dict:
    """Our encoder's tensors (names under `prefix`) under native names (no prefix)."""
    native = {theirs: state[prefix + ours] for ours, theirs in _names(config.n_layer).items()}
    for layer in range(config.n_layer):
        q, k, v = state[f"{prefix}encoder.layers.{layer}.attn.Wqkv.weight"].chunk(3)
        native |= {f"layers.{layer}.self_attn.{name}_proj.weight": t for name, t in zip("qkv", (q, k, v))}
    return native


def state_from_native(native: dict, config: NomicBertConfig) -> dict:
    """Native encoder tensors under our names."""
    state = {ours: native[theirs] for ours, theirs in _names(config.n_layer).items()}
    for layer in range(config.n_layer):
        state[f"encoder.layers.{layer}.attn.Wqkv.weight"] = torch.cat(
            [native[f"layers.{layer}.self_attn.{name}_proj.weight"] for name in "qkv"])
    return state


def load_native(directory: Path) -> NomicBertModel:
    """Our encoder with the weights of a native-layout directory, read by transformers' own loader (shards,
    dtypes, an MLM checkpoint's encoder); a checkpoint missing tensors is an error listing them."""
    native, info = modeling_nomic_bert.NomicBertModel.from_pretrained(directory, output_loading_info=True)
    problems = {kind: sorted(info[kind]) for kind in ("missing_keys", "mismatched_keys") if info.get(kind)}
    if problems:
        raise ValueError(f"nomic_bert checkpoint {directory} does not match its config ({problems})")
    config = read_config(json.loads((Path(directory) / "config.json").read_text()))
    model = NomicBertModel(config).to(native.dtype)
    model.load_state_dict(state_from_native(native.state_dict(), config))
    return model.eval()


def save_native(config: NomicBertConfig, state: dict, directory: Path, masked_lm: bool = False) -> None:
    """Write our model's tensors `state` (NomicBertModel's, or NomicBertForMaskedLM's when `masked_lm`) as
    transformers' native nomic_bert directory, saved by its own class, plus remote code (auto_map) for
    transformers versions without that model type."""
    native = native_config(config)
    native.auto_map = REMOTE_AUTO_MAP
    if masked_lm:
        model = modeling_nomic_bert.NomicBertForMaskedLM(native)
        head = {name: state[name] for name in ("cls.predictions.transform.dense.weight",
                                               "cls.predictions.transform.layer_norm.weight",
                                               "cls.predictions.transform.layer_norm.bias")}
        zeros = {name: torch.zeros_like(tensor) for name, tensor in model.state_dict().items()
                 if name in ("cls.predictions.transform.dense.bias", "cls.predictions.bias",
                             "cls.predictions.decoder.bias")}  # native head biases; ours has none
        tensors = {f"nomic_bert.{name}": t for name, t in native_state(state, config, "bert.").items()}
        tensors |= head | zeros | {"cls.predictions.decoder.weight": state["bert.embeddings.word_embeddings.weight"]}
    else:
        model = modeling_nomic_bert.NomicBertModel(native)
        tensors = native_state(state, config)
    model.load_state_dict(tensors)
    model.save_pretrained(directory)
    shutil.copyfile(REMOTE_CODE, Path(directory) / "modeling_nomic_bert.py")

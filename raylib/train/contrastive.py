"""Contrastive bi-encoder training on Ray Train: the Nomic recipe (InfoNCE over in-batch negatives gathered
from every worker plus hard negatives, several datasets mixed by weight with every batch from one dataset) and
the NV-Embed recipe (a bidirectional decoder with LoRA, latent-attention pooling, instructions left out of
pooling, two stages), with the MLM job's engine, checkpoints, resume and metrics."""

import dataclasses
import json
import logging
import random
import shutil
import time
from pathlib import Path

import ray.train
import torch
from safetensors.torch import save_file
from transformers import AutoModel

from raylib.config import ConfigError, ContrastiveJobConfig, InputConfig, StageConfig
from raylib.data.pairs import pairs_dataset
from raylib.data.sources import first_file_columns, list_input_files
from raylib.models.bidirectional import make_bidirectional
from raylib.models.embedder import ModelSpec, fetch_weights, pad_token_ids, resolve_spec
from raylib.models.latent_attention import LatentAttentionPooling, load_head, save_head
from raylib.models.lora import apply_lora, merge_lora_state
from raylib.models.pooling import pool_hidden
from raylib.models.tokenizer import PromptTokenizer
from raylib.runtime import init_ray
from raylib.train.common import (
    MetricsLog,
    StepClock,
    SyncedStream,
    TrainReports,
    all_sum,
    build_trainer,
    check_room_for_data,
    restore,
    set_threads,
    summary_line,
)
from raylib.train.engine import TrainEngine
from raylib.train.grad_cache import grad_cache_step
from raylib.train.losses import LogitScale, matryoshka_info_nce

logger = logging.getLogger(__name__)
WEIGHT_SUFFIXES = (".safetensors", ".bin", ".index.json")  # weights, sharded ones too


class BiEncoder(torch.nn.Module):
    """The backbone (bidirectional and LoRA-adapted when asked), its pooling (mean/cls/last or a latent-attention
    head) and the logit scale; one encoder for queries and documents."""

    def __init__(self, config: ContrastiveJobConfig, spec: ModelSpec):
        super().__init__()
        backbone = AutoModel.from_pretrained(fetch_weights(spec), use_safetensors=True,
                                             trust_remote_code=spec.trust_remote_code)
        pooler = getattr(backbone, "pooler", None)
        if pooler is not None:  # BERT's [CLS] head is not part of the embedding: frozen, exported unchanged
            pooler.requires_grad_(False)
        if config.bidirectional:
            make_bidirectional(backbone)
        self.backbone = apply_lora(backbone, config.lora) if config.lora else backbone
        self.pooling = spec.pooling
        self.head = None
        if spec.pooling == "latent":
            latent = config.latent_attention
            self.head = load_head(spec.latent_head)[0] if spec.latent_head else LatentAttentionPooling(
                spec.hidden_size, latent.latents, latent.heads, latent.mlp_ratio)
        self.scale = LogitScale(config.temperature, config.learnable_temperature)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor,
                prompt_lengths: torch.Tensor | None = None) -> torch.Tensor:
        hidden = self.backbone(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
        return pool_hidden(hidden, attention_mask, prompt_lengths, self.pooling, self.head)


def _part(state: dict, prefix: str) -> dict:
    return {name.removeprefix(prefix): tensor for name, tensor in state.items() if name.startswith(prefix)}


def write_sentence_transformers_files(directory: Path, spec: ModelSpec, has_head: bool) -> None:
    """modules.json and the pooling module's config (and prompts), so SentenceTransformer(directory) pools
    the way training did."""
    if has_head:
        pooling = {"path": "1_LatentAttention", "type": "raylib.models.st_modules.LatentAttention"}
    else:
        pooling = {"path": "1_Pooling", "type": "sentence_transformers.models.Pooling"}
        mode = {"mean": "mean", "cls": "cls", "last": "lasttoken"}[spec.pooling]
        (directory / "1_Pooling").mkdir(exist_ok=True)
        (directory / "1_Pooling" / "config.json").write_text(json.dumps(
            {"embedding_dimension": spec.hidden_size, "pooling_mode": mode, "include_prompt": spec.include_prompt}))
    modules = [{"idx": 0, "name": "0", "path": "", "type": "sentence_transformers.models.Transformer"},
               {"idx": 1, "name": "1", **pooling}]
    if spec.normalize:
        modules.append({"idx": 2, "name": "2", "path": "2_Normalize", "type": "sentence_transformers.models.Normalize"})
    (directory / "modules.json").write_text(json.dumps(modules, indent=2))
    settings_file = directory / "config_sentence_transformers.json"
    settings = json.loads(settings_file.read_text()) if settings_file.is_file() else {}
    settings["prompts"] = {name: prefix for name, prefix in spec.prefixes.items() if prefix}
    settings_file.write_text(json.dumps(settings, indent=2))


def exporter(config: ContrastiveJobConfig, spec: ModelSpec):
    """Writes a trained BiEncoder as a copy of the starting model directory (tokenizer and the rest) with the
    trained weights (LoRA merged in), its pooling head and sentence-transformers files, so
    SentenceTransformer(path) and our Embedder open it."""
    source = spec.directory

    def skip_weights(folder: str, names: list[str]) -> list[str]:  # only the top level's weights are replaced
        top = Path(folder) == Path(source)
        return [name for name in names if top and (name == "config.json" or name.endswith(WEIGHT_SUFFIXES))]

    def export(module: BiEncoder, state: dict, directory: Path) -> None:
        shutil.copytree(source, directory, ignore=skip_weights, dirs_exist_ok=True)
        weights = _part(state, "backbone.")
        if config.lora:
            weights = merge_lora_state(weights, config.lora)
        module.backbone.config.save_pretrained(directory)
        save_file({name: tensor.contiguous() for name, tensor in weights.items()}, directory / "model.safetensors",
                  metadata={"format": "pt"})
        if module.head is not None:
            save_head(module.head, directory / "1_LatentAttention", spec.include_prompt, _part(state, "head."))
        write_sentence_transformers_files(directory, spec, module.head is not None)

    return export


class PairStream:
    """Batches of `batch_size` good rows (query, document, negatives) from one dataset's shard, in step with
    the other workers; bad rows are counted and logged."""

    def __init__(self, shard, batch_size: int, epoch: int = 0, skip: int = 0):
        self.shard, self.batch_size, self.bad_rows = shard, batch_size, 0
        self.batches = SyncedStream(self._batches, epoch, skip)

    def _batches(self):
        rows = []
        for batch in self.shard.iter_batches(batch_size=256, batch_format="pyarrow"):
            for row in batch.to_pylist():
                if row["_error"] is not None:
                    self.bad_rows += 1
                    logger.warning("skipped training row: %s", row["_error"])
                    continue
                rows.append(row)
                if len(rows) == self.batch_size:
                    yield rows
                    rows = []


def dataset_for_step(config: ContrastiveJobConfig, step: int) -> str:
    """The dataset a step draws from: one of its stage's, by weight; every worker computes the same answer."""
    weights = {dataset.name: dataset.weight for dataset in config.datasets}
    names = config.stage_at(step).datasets
    return random.Random(config.seed * 1_000_003 + step).choices(names, [weights[name] for name in names])[0]


def dataset_tokenizers(config: ContrastiveJobConfig, spec: ModelSpec) -> dict[str, PromptTokenizer]:
    """One tokenizer per dataset, carrying that dataset's prefixes or instruction (else the model's)."""
    tokenizers = {}
    for dataset in config.datasets:
        query = dataset.query_prefix
        if dataset.instruction is not None:
            query = config.instruction_template.format(instruction=dataset.instruction)
        prefixes = {
            "query": spec.prefixes["query"] if query is None else query,
            "document": spec.prefixes["document"] if dataset.document_prefix is None else dataset.document_prefix,
        }
        tokenizers[dataset.name] = PromptTokenizer.from_spec(dataclasses.replace(spec, prefixes=prefixes))
    return tokenizers


def tokenized_groups(tokenizer: PromptTokenizer, rows: list[dict], k: int) -> list[list[tuple[list[int], int]]]:
    """(token ids, prompt length) of the batch's queries, documents and, when k > 0, hard negatives."""
    def tokenized(texts: list[str], input_type: str) -> list[tuple[list[int], int]]:
        prompt = tokenizer.prompt_length(input_type)
        return [(ids, prompt) for ids in tokenizer(texts, input_type)]

    groups = [tokenized([row["query"] for row in rows], "query"),
              tokenized([row["document"] for row in rows], "document")]
    if k:
        groups.append(tokenized([text for row in rows for text in row["negatives"][:k]], "document"))
    return groups


def encode_items(model: torch.nn.Module, items: list[tuple[list[int], int]], pad_id: int, device) -> torch.Tensor:
    """Vectors (float32) of (token ids, prompt length) items, padded together into one forward pass."""
    input_ids, attention_mask = pad_token_ids([ids for ids, _ in items], pad_id)
    prompt_lengths = torch.tensor([prompt for _, prompt in items])
    return model(input_ids.to(device), attention_mask.to(device), prompt_lengths.to(device)).float()


def train_micro_batch(engine: TrainEngine, tokenizer: PromptTokenizer, rows: list[dict], config: ContrastiveJobConfig,
                      stage: StageConfig) -> float:
    """InfoNCE of one micro-batch, back-propagated; returns its loss. Queries, documents and negatives go
    through the model as three forward passes, or in grad_cache_chunk-row chunks with GradCache."""
    b, k = len(rows), stage.hard_negatives
    groups = tokenized_groups(tokenizer, rows, k)

    def loss_fn(queries, documents, negatives=None):
        return matryoshka_info_nce(queries, documents, None if negatives is None else negatives.view(b, k, -1),
                                   engine.module.scale(), config.matryoshka_dimensions,
                                   in_batch=stage.in_batch_negatives, symmetric=config.symmetric)

    def encode(model):
        return lambda items: encode_items(model, items, tokenizer.pad_id, engine.device)

    if config.grad_cache_chunk:
        size = config.grad_cache_chunk
        chunks = [[group[i:i + size] for i in range(0, len(group), size)] for group in groups]

        def run(local, last):
            with engine.autocast():
                return grad_cache_step(encode(local), chunks,
                                       lambda *vectors: loss_fn(*vectors) / config.optim.grad_accum, encode(last))

        return engine.accumulate_in_parts(run).item() * config.optim.grad_accum
    with engine.autocast():  # one forward per group, each padded to its own longest text
        loss = loss_fn(*[encode(engine.model)(group) for group in groups])
    engine.accumulate(loss)
    return loss.item()


def train_loop(loop_config: dict) -> None:
    """Runs on every Ray Train worker."""
    config = ContrastiveJobConfig.model_validate(loop_config)
    set_threads(config.scaling)
    spec = resolve_spec(config.model)
    tokenizers = dataset_tokenizers(config, spec)
    torch.manual_seed(config.seed)
    engine = TrainEngine(BiEncoder(config, spec), config.optim, config.strategy, config.batch_size,
                         config.precision, export=exporter(config, spec))
    progress = restore(engine)
    step = progress.get("step", 0)
    streams = {
        dataset.name: PairStream(ray.train.get_dataset_shard(dataset.name), config.batch_size,
                                 **progress.get("data", {}).get(dataset.name, {}))
        for dataset in config.datasets
    }
    log = MetricsLog(config.checkpoint, ray.train.get_context().get_world_rank())
    workers = ray.train.get_context().get_world_size()
    reports, clock = TrainReports(engine), StepClock()
    engine.model.train()
    while step < config.optim.max_steps:
        loss_sum = 0.0
        stage, name = config.stage_at(step), dataset_for_step(config, step)
        for rows in streams[name].batches.take(config.optim.grad_accum):
            loss_sum += train_micro_batch(engine, tokenizers[name], rows, config, stage)
        grad_norm = engine.finish_step()
        step += 1
        loss_sum, bad_rows = all_sum([loss_sum, sum(stream.bad_rows for stream in streams.values())])
        metrics = {"step": step, "stage": stage.name, "dataset": name,
                   "loss": loss_sum / (config.optim.grad_accum * workers), "lr": engine.lr, "grad_norm": grad_norm,
                   "scale": float(engine.module.scale()), "seconds": clock.lap(),
                   "bad_rows": int(bad_rows)}
        save = step % config.checkpoint.every_steps == 0 or step == config.optim.max_steps
        log.write(metrics, checkpointed=save)
        data = {name: {"epoch": stream.batches.epoch, "skip": stream.batches.taken_in_epoch}
                for name, stream in streams.items()}
        reports.step(metrics, {"step": step, "data": data}, save)


def check_datasets(config: ContrastiveJobConfig) -> None:
    """Every dataset has files with the columns its stages need (local or object storage), or ConfigError."""
    for index, dataset in enumerate(config.datasets):
        try:
            fs, files = list_input_files(InputConfig(path=dataset.path, format=dataset.format))
        except ConfigError as exc:
            raise ConfigError(str(exc).replace("input.path", f"datasets[{index}].path")) from None
        columns = first_file_columns(fs, files)
        needed = ["query_column", "document_column"]
        if config.hard_negatives_of(dataset.name):
            needed.append("negatives_column")
        for key in needed:
            column = getattr(dataset, key)
            if columns and column not in columns:
                raise ConfigError(f"datasets[{index}].{key}: {column!r} is not a column of {files[0][0]} "
                                  f"(columns: {columns}); set it to the right column")


def run_contrastive(config: ContrastiveJobConfig) -> ray.train.Result:
    """Check the config, then train; prints one summary line."""
    resolve_spec(config.model)
    check_datasets(config)
    init_ray()
    check_room_for_data(config.scaling)
    datasets = {d.name: pairs_dataset(d, config.hard_negatives_of(d.name), config.scaling.data_cpus)
                for d in config.datasets}
    trainer = build_trainer(train_loop, config.model_dump(), config.scaling, config.checkpoint, datasets)
    started = time.perf_counter()
    result = trainer.fit()
    print(summary_line("trained", result, config.checkpoint, time.perf_counter() - started, ("bad_rows",)))
    return result

"""Contrastive bi-encoder training on Ray Train (the Nomic recipe): InfoNCE over in-batch negatives gathered
from every worker plus hard negatives, several datasets mixed by weight with every batch from one dataset,
and the MLM job's engine, checkpoints, resume and metrics."""

import dataclasses
import logging
import random
import shutil
import time
from pathlib import Path

import pyarrow.fs as pafs
import ray.train
import torch
from transformers import AutoModel

from raylib.config import ConfigError, ContrastiveJobConfig
from raylib.data.filesystem import resolve
from raylib.data.pairs import pairs_dataset
from raylib.models.embedder import ModelSpec, PromptTokenizer, pad_token_ids, resolve_spec
from raylib.models.pooling import pool
from raylib.runtime import init_ray
from raylib.train.common import (
    MetricsLog,
    SyncedStream,
    all_sum,
    build_trainer,
    check_room_for_data,
    report,
    restore,
    set_threads,
)
from raylib.train.engine import TrainEngine
from raylib.train.losses import LogitScale, matryoshka_info_nce

logger = logging.getLogger(__name__)
WEIGHT_FILES = ("model.safetensors", "pytorch_model.bin", "config.json")


class BiEncoder(torch.nn.Module):
    """The backbone and its pooling (one encoder for queries and documents) and the logit scale."""

    def __init__(self, spec: ModelSpec, temperature: float, learnable_temperature: bool):
        super().__init__()
        self.backbone = AutoModel.from_pretrained(spec.directory, use_safetensors=True,
                                                  trust_remote_code=spec.trust_remote_code)
        pooler = getattr(self.backbone, "pooler", None)
        if pooler is not None:  # BERT's [CLS] head is not part of the embedding: frozen, exported unchanged
            pooler.requires_grad_(False)
        self.pooling = spec.pooling
        self.scale = LogitScale(temperature, learnable_temperature)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        hidden = self.backbone(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
        return pool(hidden, attention_mask, self.pooling)


def exporter(source: Path):
    """Writes a trained BiEncoder as a copy of the starting model directory (tokenizer, sentence-transformers
    modules and pooling) with the trained weights, so SentenceTransformer(path) and our Embedder open it."""

    def skip_weights(folder: str, names: list[str]) -> list[str]:  # only the top level: 1_Pooling/config.json stays
        return [name for name in names if Path(folder) == Path(source) and name in WEIGHT_FILES]

    def export(module: BiEncoder, state: dict, directory: Path) -> None:
        shutil.copytree(source, directory, ignore=skip_weights, dirs_exist_ok=True)
        weights = {name.removeprefix("backbone."): tensor for name, tensor in state.items()
                   if name.startswith("backbone.")}
        module.backbone.save_pretrained(directory, state_dict=weights, safe_serialization=True)

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
    """The dataset a step draws from, by weight; every worker computes the same answer."""
    names = [dataset.name for dataset in config.datasets]
    return random.Random(config.seed * 1_000_003 + step).choices(names, [d.weight for d in config.datasets])[0]


def dataset_tokenizers(config: ContrastiveJobConfig, spec: ModelSpec) -> dict[str, PromptTokenizer]:
    """One tokenizer per dataset, carrying that dataset's query/document prefixes (or the model's)."""
    tokenizers = {}
    for dataset in config.datasets:
        prefixes = {
            "query": spec.prefixes["query"] if dataset.query_prefix is None else dataset.query_prefix,
            "document": spec.prefixes["document"] if dataset.document_prefix is None else dataset.document_prefix,
        }
        tokenizers[dataset.name] = PromptTokenizer(dataclasses.replace(spec, prefixes=prefixes))
    return tokenizers


def batch_loss(engine: TrainEngine, tokenizer: PromptTokenizer, rows: list[dict], config: ContrastiveJobConfig):
    """InfoNCE of one batch; queries, documents and negatives go through the model in one forward pass."""
    k = config.hard_negatives
    ids = (tokenizer([row["query"] for row in rows], "query")
           + tokenizer([row["document"] for row in rows], "document")
           + tokenizer([text for row in rows for text in row["negatives"][:k]], "document"))
    input_ids, attention_mask = pad_token_ids(ids, tokenizer.pad_id)
    with engine.autocast():
        vectors = engine.model(input_ids.to(engine.device), attention_mask.to(engine.device)).float()
    b = len(rows)
    negatives = vectors[2 * b:].view(b, k, -1) if k else None
    return matryoshka_info_nce(vectors[:b], vectors[b:2 * b], negatives, engine.module.scale(),
                               config.matryoshka_dimensions, in_batch=config.in_batch_negatives,
                               symmetric=config.symmetric)


def train_loop(loop_config: dict) -> None:
    """Runs on every Ray Train worker."""
    config = ContrastiveJobConfig.model_validate(loop_config)
    set_threads(config.scaling)
    spec = resolve_spec(config.model)
    tokenizers = dataset_tokenizers(config, spec)
    torch.manual_seed(config.seed)
    model = BiEncoder(spec, config.temperature, config.learnable_temperature)
    engine = TrainEngine(model, config.optim, config.strategy, config.batch_size, config.precision == "bf16",
                         export=exporter(spec.directory))
    progress = restore(engine)
    step = progress.get("step", 0)
    streams = {
        dataset.name: PairStream(ray.train.get_dataset_shard(dataset.name), config.batch_size,
                                 **progress.get("data", {}).get(dataset.name, {}))
        for dataset in config.datasets
    }
    log = MetricsLog(config.checkpoint)
    workers = ray.train.get_context().get_world_size()
    engine.model.train()
    while step < config.optim.max_steps:
        started, loss_sum = time.perf_counter(), 0.0
        name = dataset_for_step(config, step)
        for rows in streams[name].batches.take(config.optim.grad_accum):
            loss = batch_loss(engine, tokenizers[name], rows, config)
            engine.accumulate(loss)
            loss_sum += loss.item()
        grad_norm = engine.finish_step()
        step += 1
        loss_sum, bad_rows = all_sum([loss_sum, sum(stream.bad_rows for stream in streams.values())])
        metrics = {"step": step, "dataset": name, "loss": loss_sum / (config.optim.grad_accum * workers),
                   "lr": engine.lr, "grad_norm": grad_norm, "scale": float(engine.module.scale()),
                   "seconds": time.perf_counter() - started, "bad_rows": int(bad_rows)}
        log.write(metrics)
        save = step % config.checkpoint.every_steps == 0 or step == config.optim.max_steps
        data = {name: {"epoch": stream.batches.epoch, "skip": stream.batches.taken_in_epoch}
                for name, stream in streams.items()}
        report(metrics, engine, {"step": step, "data": data}, save)


def check_dataset_paths(config: ContrastiveJobConfig) -> None:
    """Every dataset path exists (local or object storage), or ConfigError naming it."""
    for index, dataset in enumerate(config.datasets):
        fs, path = resolve(dataset.path)
        if fs.get_file_info(path).type == pafs.FileType.NotFound:
            raise ConfigError(f"datasets[{index}].path: {dataset.path} does not exist; point it at parquet/jsonl files")


def run_contrastive(config: ContrastiveJobConfig) -> ray.train.Result:
    """Check the config, then train; prints one summary line."""
    resolve_spec(config.model)
    check_dataset_paths(config)
    init_ray()
    check_room_for_data(config.scaling)
    datasets = {d.name: pairs_dataset(d, config.hard_negatives, config.scaling.data_cpus) for d in config.datasets}
    trainer = build_trainer(train_loop, config.model_dump(), config.scaling, config.checkpoint, datasets)
    started = time.perf_counter()
    result = trainer.fit()
    metrics = result.metrics or {}
    print(f"trained steps={metrics.get('step')} loss={metrics.get('loss', float('nan')):.4f} "
          f"bad_rows={metrics.get('bad_rows')} seconds={time.perf_counter() - started:.1f} "
          f"model={result.checkpoint.path + '/model' if result.checkpoint else None}")
    return result

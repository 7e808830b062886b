"""Contrastive bi-encoder training, the loop on each Ray Train worker: the Nomic recipe (InfoNCE over in-batch
negatives gathered from every worker plus hard negatives, several datasets mixed by weight with every batch
from one dataset) and the NV-Embed recipe (a bidirectional decoder with LoRA, latent-attention pooling,
instructions left out of pooling, two stages). The checks the driver runs first are here too; the driver is
run.py."""

import dataclasses
import random

import ray.train
import torch

from raylib.config import ConfigError, ContrastiveJobConfig, InputConfig, StageConfig
from raylib.data.sources import first_file_columns, list_input_files
from raylib.models.biencoder import BiEncoder, export_biencoder
from raylib.models.embedder import pad_token_ids
from raylib.models.spec import ModelSpec, resolve_spec
from raylib.models.tokenizer import PromptTokenizer
from raylib.train.distributed import all_sum, set_threads
from raylib.train.engine import TrainEngine
from raylib.train.grad_cache import grad_cache_step
from raylib.train.harness import StepLoop, job_config
from raylib.train.losses import matryoshka_info_nce
from raylib.train.streams import ShardStream, batched


def build_biencoder(config: ContrastiveJobConfig, spec: ModelSpec) -> BiEncoder:
    """The model the config asks for, starting from the model directory of `spec`."""
    lora = config.lora
    latent = config.latent_attention
    return BiEncoder(
        spec, bidirectional=config.bidirectional,
        lora=lora and {"rank": lora.rank, "alpha": lora.alpha, "dropout": lora.dropout,
                       "target_modules": lora.target_modules},
        latent={"num_latents": latent.latents, "num_heads": latent.heads, "mlp_ratio": latent.mlp_ratio},
        temperature=config.temperature, learnable_temperature=config.learnable_temperature,
    )


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
                                       lambda *vectors: loss_fn(*vectors) / config.optim.grad_accum, encode(last),
                                       scale=engine.scale)

        return engine.accumulate_in_parts(run).item() * config.optim.grad_accum
    with engine.autocast():  # one forward per group, each padded to its own longest text
        loss = loss_fn(*[encode(engine.model)(group) for group in groups])
    engine.accumulate(loss)
    return loss.item()


def train_loop(loop_config: dict) -> None:
    """Runs on every Ray Train worker."""
    config = job_config(loop_config, ContrastiveJobConfig)
    set_threads(config.scaling)
    spec = resolve_spec(**config.model.model_dump())
    tokenizers = dataset_tokenizers(config, spec)
    torch.manual_seed(config.seed)
    engine = TrainEngine(build_biencoder(config, spec), config.optim, config.strategy, config.batch_size,
                         config.precision, export=lambda module, state, directory: export_biencoder(
                             module, state, spec, directory))
    loop = StepLoop(engine, config.checkpoint, config.optim.max_steps)
    streams = {
        dataset.name: ShardStream(ray.train.get_dataset_shard(dataset.name),
                                  lambda rows: batched(rows, config.batch_size), **loop.data.get(dataset.name, {}))
        for dataset in config.datasets
    }
    for step in loop.steps():
        loss_sum = 0.0
        stage, name = config.stage_at(step), dataset_for_step(config, step)
        for rows in streams[name].take(config.optim.grad_accum):
            loss_sum += train_micro_batch(engine, tokenizers[name], rows, config, stage)
        loop.update()
        loss_sum, bad_rows = all_sum([loss_sum, sum(stream.bad_rows for stream in streams.values())])
        loop.record({"stage": stage.name, "dataset": name, "loss": loss_sum / (config.optim.grad_accum * loop.workers),
                     "scale": float(engine.module.scale()), "bad_rows": int(bad_rows)},
                    {name: stream.position() for name, stream in streams.items()})


def check_datasets(config: ContrastiveJobConfig) -> None:
    """Every dataset has files with the columns its stages need (local or object storage), or ConfigError."""
    for index, dataset in enumerate(config.datasets):
        fs, files = list_input_files(InputConfig(path=dataset.path, format=dataset.format), f"datasets[{index}]")
        columns = first_file_columns(fs, files)
        needed = ["query_column", "document_column"]
        if config.hard_negatives_of(dataset.name):
            needed.append("negatives_column")
        for key in needed:
            column = getattr(dataset, key)
            if columns and column not in columns:
                raise ConfigError(f"datasets[{index}].{key}: {column!r} is not a column of {files[0].path} "
                                  f"(columns: {columns}); set it to the right column")

"""MLM pretraining of nomic-bert, the loop on each Ray Train worker: pieces read and tokenised by Ray Data,
streamed into the worker's shard, packed into windows, masked, and trained with DDP or DeepSpeed (the
checks the driver runs first are here too; the driver is run.py)."""

from pathlib import Path

import ray.train
import torch
from huggingface_hub.errors import StrictDataclassError
from transformers import AutoTokenizer

from raylib.config import BUNDLED_MODEL, ConfigError, MlmJobConfig
from raylib.data.masking import mask_tokens, pack_windows
from raylib.models.nomic_bert import NomicBertConfig, NomicBertForMaskedLM
from raylib.models.nomic_layouts import native_problems, save_native
from raylib.models.spec import resolve_model_path
from raylib.train.distributed import all_sum, set_threads
from raylib.train.engine import TrainEngine
from raylib.train.harness import StepLoop, job_config
from raylib.train.metrics import step_flops_per_token
from raylib.train.streams import ShardStream, batched


def architecture(config: MlmJobConfig) -> NomicBertConfig:
    """The model config from the YAML's `architecture`, or ConfigError naming what is wrong."""
    try:
        model_config = NomicBertConfig(**config.architecture)
    except (TypeError, ValueError, StrictDataclassError) as exc:  # the last line is the validator's own message
        message = str(exc).strip().splitlines()[-1].strip().removeprefix("ValueError: ")
        raise ConfigError(f"architecture: {message}") from None
    problems = native_problems(model_config)
    if problems:  # the published model would not open in transformers' nomic_bert
        raise ConfigError(f"architecture: transformers' nomic_bert layout has no {'; '.join(problems)}")
    if config.seq_len > model_config.n_positions:
        raise ConfigError(f"seq_len: {config.seq_len} is longer than architecture.n_positions "
                          f"({model_config.n_positions}); lower seq_len")
    return model_config


def tokenizer_path(config: MlmJobConfig) -> str:
    """The tokenizer directory ('bundled': bert-base-uncased's, shipped with the bundled model), checked."""
    if config.tokenizer == BUNDLED_MODEL:
        return str(resolve_model_path(BUNDLED_MODEL))
    if not (Path(config.tokenizer) / "tokenizer_config.json").is_file():
        raise ConfigError(f"tokenizer: {config.tokenizer} has no tokenizer_config.json; give a directory saved "
                          "with save_pretrained or 'bundled'")
    return config.tokenizer


def window_batches(rows, seq_len: int, batch_size: int, cls_id: int, sep_id: int):
    """Micro-batches (batch_size, seq_len) of windows packed from the tokenised rows."""
    windows = pack_windows((row["input_ids"] for row in rows), seq_len, cls_id, sep_id)
    for batch in batched(windows, batch_size):
        yield torch.tensor(batch)


def train_loop(loop_config: dict) -> None:
    """Runs on every Ray Train worker."""
    config = job_config(loop_config, MlmJobConfig)
    set_threads(config.scaling)
    tokenizer = AutoTokenizer.from_pretrained(tokenizer_path(config))
    torch.manual_seed(config.seed)
    model_config = architecture(config)
    model = NomicBertForMaskedLM(model_config)
    flops_per_token = step_flops_per_token(sum(p.numel() for p in model.parameters()), model_config.n_layer,
                                           model_config.n_embd, config.seq_len)
    engine = TrainEngine(model, config.optim, config.strategy, config.batch_size, config.precision,
                         export=with_tokenizer(tokenizer))
    loop = StepLoop(engine, config.checkpoint, config.optim.max_steps)

    def group(rows):
        return window_batches(rows, config.seq_len, config.batch_size, tokenizer.cls_token_id, tokenizer.sep_token_id)

    stream = ShardStream(ray.train.get_dataset_shard("train"), group, **loop.data.get("train", {}))
    generator = torch.Generator().manual_seed(config.seed * 1000 + loop.rank + 7919 * loop.step)
    special = [tokenizer.cls_token_id, tokenizer.sep_token_id, tokenizer.pad_token_id]
    for _ in loop.steps():
        loss_sum, tokens = 0.0, 0
        for batch in stream.take(config.optim.grad_accum):
            input_ids, labels = mask_tokens(batch, config.mask_probability, tokenizer.mask_token_id,
                                            len(tokenizer), special, generator)
            with engine.autocast():
                loss = engine.model(input_ids=input_ids.to(engine.device), labels=labels.to(engine.device)).loss
            engine.accumulate(loss)
            loss_sum += loss.item()
            tokens += input_ids.numel()
        seconds = loop.update()
        loss_sum, tokens, bad_rows = all_sum([loss_sum, tokens, stream.bad_rows])
        metrics = {"epoch": stream.epoch, "loss": loss_sum / (config.optim.grad_accum * loop.workers),
                   "tokens_per_s": tokens / seconds, "bad_rows": int(bad_rows)}
        if config.scaling.peak_tflops_per_worker:
            peak = config.scaling.peak_tflops_per_worker * 1e12 * loop.workers
            metrics["mfu"] = flops_per_token * metrics["tokens_per_s"] / peak
        loop.record(metrics, {"train": stream.position()})


def with_tokenizer(tokenizer):
    """The export: the MLM model in transformers' native nomic_bert layout plus the tokenizer, so the
    contrastive job (and AutoModel without our package) can start from it."""

    def export(module: torch.nn.Module, state: dict, directory: Path) -> None:
        save_native(module.config, state, directory, masked_lm=True)
        tokenizer.save_pretrained(directory)

    return export

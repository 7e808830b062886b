"""MLM pretraining of nomic-bert on Ray Train: pieces read and tokenised by Ray Data, streamed into each
worker's shard, packed into windows, masked, and trained with DDP or DeepSpeed, with checkpoints and resume."""

import logging
import time
from pathlib import Path

import ray.train
import torch
from huggingface_hub.errors import StrictDataclassError
from transformers import AutoTokenizer

from raylib.config import BUNDLED_MODEL, ConfigError, MlmJobConfig
from raylib.data.mlm import mask_tokens, pack_windows, text_pieces, token_dataset
from raylib.models.embedder import resolve_model_path
from raylib.models.nomic_bert import NomicBertConfig, NomicBertForMaskedLM
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
from raylib.train.engine import TrainEngine, save_pretrained

logger = logging.getLogger(__name__)


def architecture(config: MlmJobConfig) -> NomicBertConfig:
    """The model config from the YAML's `architecture`, or ConfigError naming what is wrong."""
    try:
        model_config = NomicBertConfig(**config.architecture)
    except (TypeError, ValueError, StrictDataclassError) as exc:  # the last line is the validator's own message
        message = str(exc).strip().splitlines()[-1].strip().removeprefix("ValueError: ")
        raise ConfigError(f"architecture: {message}") from None
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


class WindowStream:
    """Micro-batches of packed windows (batch_size, seq_len) from this worker's dataset shard, in step with
    the other workers (SyncedStream). Bad input rows are counted and logged, never used."""

    def __init__(self, shard, tokenizer, config: MlmJobConfig, epoch: int = 0, skip: int = 0):
        self.shard, self.config = shard, config
        self.cls_id, self.sep_id = tokenizer.cls_token_id, tokenizer.sep_token_id
        self.bad_rows = 0
        self.batches = SyncedStream(self._batches, epoch, skip)

    def _tokens(self):
        for batch in self.shard.iter_batches(batch_size=64, batch_format="pyarrow"):
            errors = batch.column("_error").to_pylist()
            for ids, error, where in zip(batch.column("input_ids").to_pylist(), errors,
                                         batch.column("_where").to_pylist()):
                if error is None:
                    yield ids
                else:
                    self.bad_rows += 1
                    logger.warning("skipped input row %s: %s", where, error)

    def _batches(self):
        windows = []
        for window in pack_windows(self._tokens(), self.config.seq_len, self.cls_id, self.sep_id):
            windows.append(window)
            if len(windows) == self.config.batch_size:
                yield torch.tensor(windows)
                windows = []


def step_flops_per_token(parameters: int, model_config: NomicBertConfig, seq_len: int) -> float:
    """Training FLOPs per token: 6 per parameter plus attention scores (forward + backward, PaLM's estimate)."""
    return 6 * parameters + 12 * model_config.n_layer * model_config.n_embd * seq_len


def train_loop(loop_config: dict) -> None:
    """Runs on every Ray Train worker."""
    config = MlmJobConfig.model_validate(loop_config)
    set_threads(config.scaling)
    context = ray.train.get_context()
    tokenizer = AutoTokenizer.from_pretrained(tokenizer_path(config))
    torch.manual_seed(config.seed)
    model_config = architecture(config)
    model = NomicBertForMaskedLM(model_config)
    flops_per_token = step_flops_per_token(sum(p.numel() for p in model.parameters()), model_config, config.seq_len)
    engine = TrainEngine(model, config.optim, config.strategy, config.batch_size, config.precision,
                         export=with_tokenizer(tokenizer))
    progress = restore(engine)
    step = progress.get("step", 0)
    stream = WindowStream(ray.train.get_dataset_shard("train"), tokenizer, config,
                          epoch=progress.get("epoch", 0), skip=progress.get("batches_in_epoch", 0))
    generator = torch.Generator().manual_seed(config.seed * 1000 + context.get_world_rank() + 7919 * step)
    special = [tokenizer.cls_token_id, tokenizer.sep_token_id, tokenizer.pad_token_id]
    log = MetricsLog(config.checkpoint, context.get_world_rank())
    reports, clock = TrainReports(engine), StepClock()
    engine.model.train()
    while step < config.optim.max_steps:
        loss_sum, tokens = 0.0, 0
        for batch in stream.batches.take(config.optim.grad_accum):
            input_ids, labels = mask_tokens(batch, config.mask_probability, tokenizer.mask_token_id,
                                            len(tokenizer), special, generator)
            with engine.autocast():
                loss = engine.model(input_ids=input_ids.to(engine.device), labels=labels.to(engine.device)).loss
            engine.accumulate(loss)
            loss_sum += loss.item()
            tokens += input_ids.numel()
        grad_norm = engine.finish_step()
        step += 1
        seconds = clock.lap()
        loss_sum, tokens, bad_rows = all_sum([loss_sum, tokens, stream.bad_rows])
        workers = context.get_world_size()
        metrics = {"step": step, "epoch": stream.batches.epoch, "loss": loss_sum / (config.optim.grad_accum * workers),
                   "lr": engine.lr, "grad_norm": grad_norm, "tokens_per_s": tokens / seconds,
                   "bad_rows": int(bad_rows)}
        if config.scaling.peak_tflops_per_worker:
            peak = config.scaling.peak_tflops_per_worker * 1e12 * workers
            metrics["mfu"] = flops_per_token * metrics["tokens_per_s"] / peak
        save = step % config.checkpoint.every_steps == 0 or step == config.optim.max_steps
        log.write(metrics, checkpointed=save)
        progress = {"step": step, "epoch": stream.batches.epoch, "batches_in_epoch": stream.batches.taken_in_epoch}
        reports.step(metrics, progress, save)


def with_tokenizer(tokenizer):
    """The export: the MLM model directory plus the tokenizer, so the contrastive job can start from it."""

    def export(module: torch.nn.Module, state: dict, directory: Path) -> None:
        save_pretrained(module, state, directory)
        tokenizer.save_pretrained(directory)

    return export


def run_mlm(config: MlmJobConfig) -> ray.train.Result:
    """Check the config, then train; prints one summary line."""
    architecture(config)
    tokenizer = tokenizer_path(config)
    pieces = text_pieces(config.data)
    init_ray()
    check_room_for_data(config.scaling)
    dataset = token_dataset(pieces, config.data, tokenizer, config.scaling.data_cpus)
    trainer = build_trainer(train_loop, config.model_dump(), config.scaling, config.checkpoint, {"train": dataset})
    started = time.perf_counter()
    result = trainer.fit()
    seconds = time.perf_counter() - started
    print(summary_line("pretrained", result, config.checkpoint, seconds, ("tokens_per_s", "bad_rows")))
    return result

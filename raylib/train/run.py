"""The training stage's drivers: check the config before any Ray work, start or join Ray, build the
TorchTrainer from the YAML, fit, publish the last checkpoint's model and return a summary the job prints.

    run_mlm(config)          masked-language-model pretraining of nomic-bert (mlm.py)
    run_contrastive(config)  contrastive bi-encoder training (contrastive.py)
"""

import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import ray.train
from ray.train.torch import TorchTrainer

from raylib.config import (
    CheckpointConfig,
    ConfigError,
    ContrastiveJobConfig,
    MlmJobConfig,
    ScalingConfig,
    TrainingJobConfig,
)
from raylib.data.mlm import text_pieces, text_tokenizer, token_dataset
from raylib.data.pairs import pairs_dataset
from raylib.models.spec import resolve_spec
from raylib.runtime import init_ray
from raylib.storage import publish_local, publish_remote, redact, resolve
from raylib.train import contrastive, mlm
from raylib.train.harness import train_loop_config
from raylib.train.metrics import run_dir, run_uri
from raylib.train.record import claim_run, record_published


@dataclass
class TrainSummary:
    """What a training run did; `line()` is the job's last line."""

    verb: str
    metrics: dict  # the last reported step's
    fields: tuple[str, ...]  # metrics named in the line
    seconds: float
    model: str | None  # the published model's URI
    checkpoint: ray.train.Checkpoint | None  # the last one
    error: Exception | None  # what stopped the run after its failure budget, if anything

    def line(self) -> str:
        shown = " ".join(f"{name}={value:.1f}" if isinstance(value, float) else f"{name}={value}"
                         for name, value in ((name, self.metrics.get(name)) for name in self.fields))
        return (f"{self.verb} steps={self.metrics.get('step')} loss={self.metrics.get('loss', float('nan')):.4f} "
                f"{shown} seconds={self.seconds:.1f} model={redact(str(self.model))}")


def publish_model(result: ray.train.Result, checkpoint: CheckpointConfig) -> str | None:
    """Copy the last checkpoint's model/ to <storage_path>/<name>/model, the fixed place where the next job's
    config finds it; returns that URI (None when the run saved no checkpoint). On a local or shared disk the
    switch is atomic: a link to a new version (storage.publish_local); on object storage a pointer file naming the
    new version (storage.publish_remote), which model paths follow."""
    if result.checkpoint is None:
        return None
    fs, source, target = result.checkpoint.filesystem, f"{result.checkpoint.path}/model", f"{result.path}/model"
    if run_dir(checkpoint) is not None:
        publish_local(Path(source), Path(target))
        return run_uri(checkpoint, "model")
    publish_remote(fs, source, target)
    return run_uri(checkpoint, "model")


def check_room_for_data(scaling: ScalingConfig) -> None:
    """On embedded Ray, refuse worker CPU requests that leave Ray Data no CPU to read with (the run would
    wait forever); a cluster may autoscale to fit."""
    if os.environ.get("RAY_ADDRESS"):
        return
    total = ray.cluster_resources().get("CPU", 0)
    wanted = scaling.num_workers * scaling.cpus_per_worker
    if wanted + scaling.data_cpus > total:
        raise ConfigError(
            f"scaling: {scaling.num_workers} workers x {scaling.cpus_per_worker} CPUs + data_cpus "
            f"{scaling.data_cpus} is more than this machine's {total:g} CPUs; lower scaling.cpus_per_worker "
            "or scaling.num_workers"
        )


def build_trainer(loop, loop_config: dict, scaling: ScalingConfig, checkpoint: CheckpointConfig,
                  datasets: dict) -> TorchTrainer:
    """A TorchTrainer whose workers, storage, checkpoint retention and failure budget come from the YAML."""
    directory = run_dir(checkpoint)
    if directory is None:  # object storage: Ray Train gets a filesystem, so a URI's credentials stay out of its state
        filesystem, storage_path = resolve(checkpoint.storage_path)
    else:
        filesystem, storage_path = None, str(directory.parent)
    return TorchTrainer(
        loop,
        train_loop_config=loop_config,
        scaling_config=ray.train.ScalingConfig(
            num_workers=scaling.num_workers, use_gpu=scaling.use_gpu,
            resources_per_worker={"CPU": scaling.cpus_per_worker, **({"GPU": 1} if scaling.use_gpu else {})},
        ),
        run_config=ray.train.RunConfig(
            name=checkpoint.name,
            storage_path=storage_path, storage_filesystem=filesystem,
            failure_config=ray.train.FailureConfig(max_failures=checkpoint.max_failures),
            checkpoint_config=ray.train.CheckpointConfig(num_to_keep=checkpoint.keep),
        ),
        datasets=datasets,
    )


def train_on_ray(loop: Callable[[dict], None], config: TrainingJobConfig,
                 datasets: Callable[[], dict], verb: str, fields: tuple[str, ...]) -> TrainSummary:
    """Start or join Ray, run `loop` on the configured workers over `datasets()` (built once Ray runs), and
    publish the model. A re-run under the same name must be the same training; a finished run notes what it
    published (record.py)."""
    claim_run(config)
    init_ray()
    check_room_for_data(config.scaling)
    trainer = build_trainer(loop, train_loop_config(config), config.scaling, config.checkpoint, datasets())
    started = time.perf_counter()
    result = trainer.fit()
    model = publish_model(result, config.checkpoint)
    if model is not None and result.error is None:
        record_published(config, (result.metrics or {}).get("step"))
    return TrainSummary(verb, result.metrics or {}, fields, time.perf_counter() - started, model, result.checkpoint,
                        result.error)


def run_mlm(config: MlmJobConfig) -> TrainSummary:
    """Check the architecture, tokenizer and data, then pretrain."""
    mlm.architecture(config)
    tokenizer = text_tokenizer(mlm.tokenizer_path(config))
    pieces = text_pieces(config.data)
    return train_on_ray(mlm.train_loop, config,
                        lambda: {"train": token_dataset(pieces, config.data, tokenizer, config.scaling.data_cpus)},
                        "pretrained", ("tokens_per_s", "bad_rows"))


def run_contrastive(config: ContrastiveJobConfig) -> TrainSummary:
    """Check the model and the datasets' files and columns, then train."""
    resolve_spec(**config.model.model_dump())
    contrastive.check_datasets(config)
    return train_on_ray(contrastive.train_loop, config,
                        lambda: {d.name: pairs_dataset(d, config.hard_negatives_of(d.name), config.scaling.data_cpus)
                                 for d in config.datasets},
                        "trained", ("bad_rows",))

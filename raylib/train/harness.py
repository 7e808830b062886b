"""The loop skeleton every training job shares, on each Ray Train worker: restore the latest checkpoint, then
per optimizer step apply the update, log the step's metrics, report them to Ray Train and save a checkpoint
every checkpoint.every_steps. The jobs' own loops (mlm.py, contrastive.py) say only what a step computes.

    loop = StepLoop(engine, config.checkpoint, config.optim.max_steps)
    stream = ShardStream(shard, group, **loop.data.get("train", {}))
    for step in loop.steps():
        ...  # micro-batches: engine.accumulate(loss)
        seconds = loop.update()
        loop.record({"loss": ...}, {"train": stream.position()})
"""

import json
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import ray
import ray.train

from raylib.config import CheckpointConfig, TrainingJobConfig
from raylib.storage import redact
from raylib.train.distributed import all_sum
from raylib.train.engine import TrainEngine
from raylib.train.metrics import MetricsLog, StepClock


class TrainReports:
    """Sends steps to ray.train.report: every checkpoint, and otherwise at most one each SECONDS, decided alike
    on all workers. Ray Train's controller takes one report per worker per poll (every 2 s by default): a
    step that reports before the last report was taken waits for it, so reporting every step would hold a
    fast run to one step per poll. metrics.jsonl and TensorBoard (MetricsLog) still get every step."""

    SECONDS = 5.0

    def __init__(self, engine: TrainEngine):
        self.engine, self.reported_at = engine, None

    def step(self, metrics: dict, progress: dict, save: bool) -> None:
        """Report this step if it saves or is due; when `save`, every rank adds its part of a checkpoint."""
        due = self.reported_at is None or time.monotonic() - self.reported_at >= self.SECONDS
        if not save and all_sum([float(due)])[0] == 0:
            return
        self.reported_at = time.monotonic()
        if not save:
            ray.train.report(metrics)
            return
        with tempfile.TemporaryDirectory() as directory:
            self.engine.save(Path(directory), progress)
            ray.train.report(metrics, checkpoint=ray.train.Checkpoint.from_directory(directory))


def train_loop_config(config: TrainingJobConfig) -> dict:
    """The train loop's config as Ray Train stores it (its state, the dashboard): URIs redacted, and the whole
    config, credentials in URIs included, in Ray's object store for the workers (`job_config`)."""
    return {"config": ray.put(config.model_dump()), "shown": json.loads(redact(config.model_dump_json()))}


def job_config(loop_config: dict, kind: type[TrainingJobConfig]) -> TrainingJobConfig:
    """On a worker: the job's config, as the driver gave it (train_loop_config)."""
    return kind.model_validate(ray.get(loop_config["config"]))


def restore(engine: TrainEngine) -> dict:
    """Load this run's latest checkpoint, if any, into the engine; returns its progress record ({} if none)."""
    checkpoint = ray.train.get_checkpoint()
    if checkpoint is None:
        return {}
    with checkpoint.as_directory() as directory:
        return engine.load(Path(directory))


class StepLoop:
    """One worker's steps from the restored one to max_steps, with logging, reports and checkpoints."""

    def __init__(self, engine: TrainEngine, checkpoint: CheckpointConfig, max_steps: int):
        self.engine, self.checkpoint, self.max_steps = engine, checkpoint, max_steps
        progress = restore(engine)
        self.step, self.data = progress.get("step", 0), progress.get("data", {})  # data: the streams' positions
        if "batches_in_epoch" in progress:  # an MLM checkpoint written before this harness: one stream, "train"
            self.data = {"train": {"epoch": progress["epoch"], "skip": progress["batches_in_epoch"]}}
        context = ray.train.get_context()
        self.rank, self.workers = context.get_world_rank(), context.get_world_size()
        self.log, self.reports, self.clock = MetricsLog(checkpoint, self.rank), TrainReports(engine), StepClock()
        self.grad_norm = self.seconds = float("nan")

    def steps(self) -> Iterator[int]:
        """The steps still to take (0-based); for each, the caller runs its micro-batches, `update` and `record`."""
        self.engine.model.train()
        while self.step < self.max_steps:
            yield self.step

    def update(self) -> float:
        """Apply the step's accumulated update; returns the step's wall-clock seconds."""
        self.grad_norm = self.engine.finish_step()
        self.step += 1
        self.seconds = self.clock.lap()
        return self.seconds

    def record(self, metrics: dict, data: dict) -> None:
        """Log and report the step's metrics (with step, lr, grad_norm, seconds); at checkpoint steps every
        rank saves its part, with `data`, the streams' positions by name."""
        metrics = {"step": self.step, **metrics, "lr": self.engine.lr, "grad_norm": self.grad_norm,
                   "seconds": self.seconds}
        save = self.step % self.checkpoint.every_steps == 0 or self.step == self.max_steps
        self.log.write(metrics, checkpointed=save)
        self.reports.step(metrics, {"step": self.step, "data": data}, save)

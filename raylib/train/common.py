"""What every training job shares around its loop: the TorchTrainer built from the YAML, checkpoint
report/restore through Ray Train, metrics (JSONL + TensorBoard, local or copied to object storage) and
cross-worker sums."""

import json
import math
import os
import tempfile
import time
from pathlib import Path

import pyarrow.fs as pafs
import ray.train
import torch
import torch.distributed as dist
from ray.train.torch import TorchTrainer

from raylib.config import CheckpointConfig, ConfigError, ScalingConfig
from raylib.data.filesystem import is_remote, redact, resolve
from raylib.train.engine import TrainEngine


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


class StepClock:
    """Wall-clock seconds per step: lap() gives the time since the last lap (the first: since creation), so a
    step's figure includes the logging, reporting and checkpointing of the step before it."""

    def __init__(self):
        self._last = time.perf_counter()

    def lap(self) -> float:
        now = time.perf_counter()
        seconds, self._last = now - self._last, now
        return seconds


def restore(engine: TrainEngine) -> dict:
    """Load this run's latest checkpoint, if any, into the engine; returns its progress record ({} if none)."""
    checkpoint = ray.train.get_checkpoint()
    if checkpoint is None:
        return {}
    with checkpoint.as_directory() as directory:
        return engine.load(Path(directory))


class SyncedStream:
    """Items from `epoch_items()` (a fresh iterator per epoch), `count` at a time. An epoch ends for every
    worker when the first one runs out, so all workers take the same number of steps; `epoch` and
    `taken_in_epoch` are the data position a checkpoint records."""

    def __init__(self, epoch_items, epoch: int = 0, skip: int = 0):
        self.epoch_items, self.epoch, self.taken_in_epoch = epoch_items, epoch, 0
        self._start(skip)

    def _start(self, skip: int) -> None:
        self._iterator = self.epoch_items()
        for _ in range(skip):
            self._next()

    def _next(self):
        item = next(self._iterator, None)
        if item is not None:
            self.taken_in_epoch += 1
        return item

    def take(self, count: int) -> list:
        """The next `count` items, starting a new epoch on every worker when any one runs out."""
        items = [self._next() for _ in range(count)]
        if all_sum([float(any(item is None for item in items))])[0] == 0:
            return items
        self.epoch, self.taken_in_epoch = self.epoch + 1, 0
        self._start(0)
        items = [self._next() for _ in range(count)]
        if all_sum([float(any(item is None for item in items))])[0] > 0:
            raise RuntimeError("one epoch of a worker's data is shorter than one step; add data or lower the "
                               "batch size or optim.grad_accum")
        return items


def all_sum(values: list[float]) -> list[float]:
    """Element-wise sum over all workers (the values themselves outside a process group)."""
    if not dist.is_initialized():
        return values
    device = "cuda" if dist.get_backend() == "nccl" else "cpu"  # NCCL reduces GPU tensors only
    tensor = torch.tensor(values, dtype=torch.float64, device=device)
    dist.all_reduce(tensor)
    return tensor.tolist()


def run_dir(checkpoint: CheckpointConfig) -> Path | None:
    """The run's local directory (where Ray Train keeps its checkpoints); None for object storage."""
    if is_remote(checkpoint.storage_path):
        return None
    return Path(checkpoint.storage_path) / checkpoint.name


def run_uri(checkpoint: CheckpointConfig, *parts: str) -> str:
    """<storage_path>/<name>[/parts], written the way a config takes it (a URI keeps its options, such as
    ?endpoint_override=)."""
    base, options = checkpoint.storage_path, ""
    if is_remote(base):
        base, _, options = base.partition("?")
    return "/".join([base.rstrip("/"), checkpoint.name, *parts]) + (f"?{options}" if options else "")


def publish_model(result: ray.train.Result, checkpoint: CheckpointConfig) -> str | None:
    """Copy the last checkpoint's model/ to <storage_path>/<name>/model, the fixed place where the next job's
    config finds it; returns that URI (None when the run saved no checkpoint)."""
    if result.checkpoint is None:
        return None
    fs, target = result.checkpoint.filesystem, f"{result.path}/model"
    if fs.get_file_info(target).type != pafs.FileType.NotFound:
        fs.delete_dir(target)
    fs.create_dir(target, recursive=True)
    pafs.copy_files(f"{result.checkpoint.path}/model", target, source_filesystem=fs, destination_filesystem=fs)
    return run_uri(checkpoint, "model")


def summary_line(verb: str, result: ray.train.Result, checkpoint: CheckpointConfig, seconds: float,
                 fields: tuple[str, ...]) -> str:
    """The job's last line: steps, loss, the named metrics, seconds and the published model's URI."""
    metrics = result.metrics or {}
    values = {name: metrics.get(name) for name in fields}
    shown = " ".join(f"{name}={value:.1f}" if isinstance(value, float) else f"{name}={value}"
                     for name, value in values.items())
    return (f"{verb} steps={metrics.get('step')} loss={metrics.get('loss', float('nan')):.4f} {shown} "
            f"seconds={seconds:.1f} model={redact(str(publish_model(result, checkpoint)))}")


class MetricsLog:
    """Rank 0 appends each step's metrics to metrics.jsonl and TensorBoard event files (tensorboard/) in the
    run's directory. On object storage they are written to a local folder and copied to
    <storage_path>/<name>/ at each checkpoint and at least every SYNC_SECONDS; a restarted run continues the
    stored metrics.jsonl."""

    SYNC_SECONDS = 60

    def __init__(self, checkpoint: CheckpointConfig, rank: int):
        self.path, self.board, self.remote = None, None, None
        if rank != 0:
            return
        from torch.utils.tensorboard import SummaryWriter

        directory = run_dir(checkpoint)
        if directory is None:
            self.remote = fs, run = resolve(run_uri(checkpoint))
            directory = Path(tempfile.mkdtemp(prefix="metrics-"))
            stored = f"{run}/metrics.jsonl"
            if fs.get_file_info(stored).type == pafs.FileType.File:
                pafs.copy_files(stored, str(directory / "metrics.jsonl"), source_filesystem=fs,
                                destination_filesystem=pafs.LocalFileSystem())
        directory.mkdir(parents=True, exist_ok=True)
        self.directory, self.path = directory, directory / "metrics.jsonl"
        self.board = SummaryWriter(str(directory / "tensorboard"))
        self.synced_at = time.monotonic()

    def write(self, metrics: dict, checkpointed: bool = False) -> None:
        """Log one step's metrics; `checkpointed`: the step saved a checkpoint (object storage: copy up now)."""
        if self.path is None:
            return
        with open(self.path, "a") as log:
            log.write(json.dumps(metrics) + "\n")
        for name, value in metrics.items():
            if name != "step" and isinstance(value, (int, float)):
                self.board.add_scalar(f"train/{name}", value, metrics["step"])
        self.board.flush()
        if self.remote and (checkpointed or time.monotonic() - self.synced_at > self.SYNC_SECONDS):
            fs, run = self.remote
            fs.create_dir(run, recursive=True)
            pafs.copy_files(str(self.directory), run, source_filesystem=pafs.LocalFileSystem(),
                            destination_filesystem=fs)
            self.synced_at = time.monotonic()


def set_threads(scaling: ScalingConfig) -> None:
    """Torch intra-op threads of this worker, from the YAML (default: its CPUs rounded up)."""
    threads = scaling.threads_per_worker or math.ceil(scaling.cpus_per_worker)
    torch.set_num_threads(threads)
    os.environ["OMP_NUM_THREADS"] = str(threads)


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
    return TorchTrainer(
        loop,
        train_loop_config=loop_config,
        scaling_config=ray.train.ScalingConfig(
            num_workers=scaling.num_workers, use_gpu=scaling.use_gpu,
            resources_per_worker={"CPU": scaling.cpus_per_worker, **({"GPU": 1} if scaling.use_gpu else {})},
        ),
        run_config=ray.train.RunConfig(
            name=checkpoint.name,
            storage_path=checkpoint.storage_path if directory is None else str(directory.parent),
            failure_config=ray.train.FailureConfig(max_failures=checkpoint.max_failures),
            checkpoint_config=ray.train.CheckpointConfig(num_to_keep=checkpoint.keep),
        ),
        datasets=datasets,
    )

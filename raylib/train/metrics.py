"""Where a run lives and what it logs: the run's directory or URI under the storage path, per-step metrics
(metrics.jsonl and TensorBoard, local or copied to object storage) and step times."""

import json
import tempfile
import time
from pathlib import Path

import pyarrow.fs as pafs

from raylib.config import CheckpointConfig
from raylib.storage import is_remote, resolve


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


class StepClock:
    """Wall-clock seconds per step: lap() gives the time since the last lap (the first: since creation), so a
    step's figure includes the logging, reporting and checkpointing of the step before it."""

    def __init__(self):
        self._last = time.perf_counter()

    def lap(self) -> float:
        now = time.perf_counter()
        seconds, self._last = now - self._last, now
        return seconds


def step_flops_per_token(parameters: int, layers: int, hidden: int, seq_len: int) -> float:
    """Training FLOPs per token of a transformer encoder: 6 per parameter plus attention scores (forward +
    backward, PaLM's estimate)."""
    return 6 * parameters + 12 * layers * hidden * seq_len

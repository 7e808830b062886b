"""Each stage's record, <output>/stages/<name>.json: the fingerprint of what the stage was last started with (its
job's config and the fingerprints of the stages it reads, so a changed stage changes every stage after it that
reads it), the fingerprints of those inputs alone, whether it finished, and what it reported (steps, seconds,
eval results). A training stage's own part is its run's training identity (raylib/train/record.py), so where it
lives or how many CPUs it takes does not count."""

import hashlib
import json
from pathlib import Path

import pyarrow.fs as pafs

from raylib.recipe.config import TRAINING_JOBS, Stage
from raylib.storage import resolve
from raylib.train.record import published_identity


def _files(path: str) -> list:
    """(path, size, modification time) of the files at `path`: your own pairs count as changed when these do."""
    fs, root = resolve(path)
    info = fs.get_file_info(root)
    infos = fs.get_file_info(pafs.FileSelector(root, recursive=True)) if info.type == pafs.FileType.Directory \
        else [info]
    return sorted([item.path, item.size, item.mtime_ns] for item in infos if item.type == pafs.FileType.File)


def identity(stage: Stage) -> dict:
    """What decides the stage's product, as JSON values."""
    if stage.job in TRAINING_JOBS:
        return published_identity(stage.config)
    values = stage.config.model_dump(mode="json")
    if stage.job == "pairs" and stage.config.source == "files":
        values["files"] = _files(stage.config.path)
    return values


def fingerprint(stage: Stage, inputs: list[str]) -> str:
    """A hash of the stage's job, identity and its inputs' fingerprints."""
    text = json.dumps({"job": stage.job, "identity": identity(stage), "inputs": inputs}, sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def record_path(output: str, name: str) -> Path:
    return Path(output) / "stages" / f"{name}.json"


def read_record(output: str, name: str) -> dict | None:
    """The stage's last record, or None when it never started."""
    path = record_path(output, name)
    return json.loads(path.read_text()) if path.is_file() else None


def write_record(output: str, name: str, record: dict) -> None:
    """Replace the stage's record in one rename."""
    path = record_path(output, name)
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_suffix(".tmp")
    temporary.write_text(json.dumps(record, indent=1))
    temporary.replace(path)

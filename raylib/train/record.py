"""The run's record: `<storage_path>/<name>/run_config.json` holds the training a run was started with, so that a
job re-run under the same name resumes only that training (a longer `max_steps`, other failure or checkpoint
settings, more CPUs per worker are the same training) and refuses any other before Ray starts.

`checkpoint.resume: false` starts the name over: its checkpoints, metrics and published model are deleted first.

`<storage_path>/<name>/published.json` says what the published model is: the training and max_steps it was trained
with and the step it reached, so a caller (the recipe) can tell that a run needs no more training.
"""

import json
import posixpath

import pyarrow.fs as pafs

from raylib.config import ConfigError, TrainingJobConfig
from raylib.storage import redact, resolve
from raylib.train.metrics import run_uri

RECORD = "run_config.json"
PUBLISHED = "published.json"
# keys that say how long or on what a run goes on, not what it trains: they may change between a run and its resume
FREE_KEYS = {"checkpoint", "optim.max_steps", "scaling.cpus_per_worker", "scaling.threads_per_worker",
             "scaling.data_cpus", "scaling.peak_tflops_per_worker"}


def flat(values: dict, prefix: str = "") -> dict:
    """{"a.b": value} for nested dicts; lists stay values."""
    items = {}
    for key, value in values.items():
        name = f"{prefix}{key}"
        items |= flat(value, f"{name}.") if isinstance(value, dict) else {name: value}
    return items


def training_identity(config: TrainingJobConfig) -> dict:
    """The config's keys that decide what is trained, flattened (a.b.c: value), as JSON values; secrets in URIs
    redacted."""
    return {key: redact(value) if isinstance(value, str) else value
            for key, value in flat(config.model_dump(mode="json")).items()
            if key not in FREE_KEYS and key.split(".")[0] not in FREE_KEYS}


def _has_checkpoints(fs: pafs.FileSystem, run: str) -> bool:
    infos = fs.get_file_info(pafs.FileSelector(run, allow_not_found=True))
    return any(posixpath.basename(info.path).startswith("checkpoint_") for info in infos)


def _read_json(fs: pafs.FileSystem, path: str) -> dict | None:
    if fs.get_file_info(path).type != pafs.FileType.File:
        return None
    with fs.open_input_stream(path) as stream:
        return json.loads(stream.read())


def claim_run(config: TrainingJobConfig) -> None:
    """Refuse to resume a run started with another training (ConfigError naming the keys that differ and the
    fix); with checkpoint.resume false, delete the run first. Then record this config as the run's."""
    fs, run = resolve(run_uri(config.checkpoint))
    if not config.checkpoint.resume and fs.get_file_info(run).type == pafs.FileType.Directory:
        fs.delete_dir(run)
    identity, path = training_identity(config), f"{run}/{RECORD}"
    recorded = _read_json(fs, path)
    if recorded is not None and _has_checkpoints(fs, run):
        differing = [f"{key}: {recorded.get(key)!r} -> {identity.get(key)!r}"
                     for key in sorted(recorded.keys() | identity.keys()) if recorded.get(key) != identity.get(key)]
        if differing:
            shown = "; ".join(differing[:5]) + (f"; and {len(differing) - 5} more" if len(differing) > 5 else "")
            raise ConfigError(
                f"checkpoint: {redact(run_uri(config.checkpoint))} holds a run started with another config ({shown}); "
                "give checkpoint.name a new name, or set checkpoint.resume: false to start this one over")
    fs.create_dir(run, recursive=True)
    with fs.open_output_stream(path) as stream:
        stream.write(json.dumps(identity, indent=1, sort_keys=True).encode())


def published_identity(config: TrainingJobConfig) -> dict:
    """What a finished run's model is: its training identity and how many steps it was to take."""
    return training_identity(config) | {"optim.max_steps": config.optim.max_steps}


def record_published(config: TrainingJobConfig, step: int) -> None:
    """Note, after publishing, which training made the run's published model and the step it reached."""
    fs, run = resolve(run_uri(config.checkpoint))
    with fs.open_output_stream(f"{run}/{PUBLISHED}") as stream:
        stream.write(json.dumps({"training": published_identity(config), "step": step}, indent=1,
                                sort_keys=True).encode())


def published_step(config: TrainingJobConfig) -> int | None:
    """The step of the run's published model when it was trained with exactly this config to its max_steps;
    None when there is none, or it is another training's or an unfinished one's."""
    fs, run = resolve(run_uri(config.checkpoint))
    record = _read_json(fs, f"{run}/{PUBLISHED}")
    if (record is None or record["training"] != published_identity(config) or record["step"] != config.optim.max_steps
            or fs.get_file_info(f"{run}/model").type != pafs.FileType.Directory):
        return None
    return record["step"]

"""Each job as a recipe stage: run it with its config and say what it reported, and tell whether the product
of a finished run is still where the next stages read it."""

from pathlib import Path

import pyarrow.fs as pafs

from raylib import console
from raylib.config import ConfigError, JobError
from raylib.data.sample_pairs import write_pairs
from raylib.eval.run import run_eval
from raylib.mine.run import run_mining
from raylib.recipe.config import TRAINING_JOBS, PairsConfig, Stage
from raylib.storage import is_remote, resolve
from raylib.train.record import published_step
from raylib.train.run import run_contrastive, run_mlm


def _exists(path: str) -> bool:
    fs, where = resolve(path)
    return fs.get_file_info(where).type != pafs.FileType.NotFound


def prepare_pairs(config: PairsConfig) -> dict:
    """Write the sample pairs, or check that your own are there."""
    if config.source == "sample":
        return {"rows": write_pairs(config.path, "retrieval", config.limit, config.negatives)}
    if not _exists(config.path):
        raise ConfigError(f"path: {config.path} does not exist; point it at your pairs files")
    return {}


def train(stage: Stage) -> dict:
    """Pretrain or train; a run stopped by failures is a JobError (a re-run resumes it)."""
    summary = (run_mlm if stage.job == "pretrain" else run_contrastive)(stage.config)
    print(summary.line(), file=console.stdout(), flush=True)
    if summary.error is not None:
        raise JobError(f"training stopped at step {summary.metrics.get('step')}: {summary.error}; run the recipe "
                       "again to resume it")
    return {"steps": published_step(stage.config)}


def run_stage(stage: Stage) -> dict:
    """Run the stage's job; what it reported, for its record (steps, rows, eval results)."""
    if stage.job == "pairs":
        return prepare_pairs(stage.config)
    if stage.job == "mine":
        summary = run_mining(stage.config)
        print(summary.line(), file=console.stdout(), flush=True)
        return {"rows": summary.pairs}
    if stage.job == "eval":
        return {"results": run_eval(stage.config).results}
    return train(stage)


def product_exists(stage: Stage) -> bool:
    """A finished stage's product is still there: a training stage's published model is this config's (its run's
    published.json), the other outputs exist."""
    if stage.job in TRAINING_JOBS:
        return published_step(stage.config) is not None
    if stage.job == "eval":
        return (Path(stage.config.output) / "results.json").is_file()
    return _exists(stage.output)


def product_version(stage: Stage) -> str:
    """Which copy of a training stage's published model the next stages read: on a local disk the version its
    link points to (storage.publish_local), so a model published again with the same config counts as changed;
    '' elsewhere."""
    if stage.job not in TRAINING_JOBS or is_remote(stage.output):
        return ""
    return Path(stage.output).resolve().name

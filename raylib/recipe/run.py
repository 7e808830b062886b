"""The recipe's driver: each stage in order, skipped when its record has the fingerprint of its current config
and inputs, says it finished, and its product is still there; then one table (stage, steps, seconds, NDCG@10 and
MRR@10 of its model) and a chart, written to the recipe's output directory. A stage that fails stops the recipe;
running it again resumes there (a training stage from its run's last checkpoint)."""

import json
import time
from dataclasses import dataclass, replace
from pathlib import Path

from raylib import console
from raylib.config import ConfigError, JobError
from raylib.recipe.config import TRAINING_JOBS, RecipeConfig, Stage
from raylib.recipe.record import fingerprint, read_record, write_record
from raylib.recipe.report import table, with_metrics, write_chart
from raylib.recipe.stages import product_exists, product_version, run_stage


@dataclass
class RecipeSummary:
    """What the recipe did: one row per stage (run: ran | skipped) with its model's metrics."""

    rows: list[dict]
    output: Path
    seconds: float

    def line(self) -> str:
        ran = sum(row["run"] == "ran" for row in self.rows)
        skipped = sum(row["run"] == "skipped" for row in self.rows)
        return (f"{table(self.rows)}\nrecipe ran={ran} skipped={skipped} seconds={self.seconds:.1f} "
                f"table={self.output / 'table.txt'} chart={self.output / 'chart.png'}")


def started_over(stage: Stage, prior: dict | None, inputs: list[str]) -> Stage:
    """A training stage whose inputs changed since its run began starts that run over: its checkpoints were
    trained from other inputs. (A changed config of its own is the run's to refuse or resume, record.py.)"""
    if stage.job not in TRAINING_JOBS or prior is None or prior["inputs"] == inputs:
        return stage
    print(f"recipe: {stage.name}: the stages it reads changed since its run began; starting it over",
          file=console.stdout(), flush=True)
    checkpoint = stage.config.checkpoint.model_copy(update={"resume": False})
    return replace(stage, config=stage.config.model_copy(update={"checkpoint": checkpoint}))


def run_or_skip(stage: Stage, output: str, inputs: list[str], current: str) -> dict:
    """The stage's record after this run: the finished prior one when nothing changed, else a new one."""
    prior = read_record(output, stage.name)
    if prior and prior["fingerprint"] == current and prior["done"] and product_exists(stage):
        print(f"recipe: {stage.name} ({stage.job}) skipped: finished with this config and inputs",
              file=console.stdout(), flush=True)
        return {**prior, "run": "skipped"}
    stage = started_over(stage, prior, inputs)
    print(f"recipe: {stage.name} ({stage.job}) running", file=console.stdout(), flush=True)
    write_record(output, stage.name, {"fingerprint": current, "inputs": inputs, "done": False})
    began = time.perf_counter()
    try:
        reported = run_stage(stage)
    except ConfigError as exc:
        raise ConfigError(f"stages.{stage.name}: {exc}") from None
    except JobError as exc:
        raise JobError(f"stages.{stage.name}: {exc}") from None
    record = {"fingerprint": current, "inputs": inputs, "done": True, "seconds": time.perf_counter() - began,
              **reported}
    write_record(output, stage.name, record)
    return {**record, "run": "ran"}


def run_recipe(config: RecipeConfig) -> RecipeSummary:
    """Run or skip every stage in order; write table.txt, results.json and chart.png to config.output."""
    began = time.perf_counter()
    fingerprints: dict[str, str] = {}
    rows, results = [], []
    for planned in config.plan():
        stage = planned.reread()
        inputs = [fingerprints[name] for name in stage.upstream]
        record = run_or_skip(stage, config.output, inputs, fingerprint(stage, inputs))
        fingerprints[stage.name] = f"{record['fingerprint']}@{product_version(stage)}"
        rows.append({"stage": stage.name, "job": stage.job, "run": record["run"], "steps": record.get("steps"),
                     "seconds": record["seconds"]})
        results += record.get("results", [])
    rows = with_metrics(rows, results)
    output = Path(config.output)
    output.mkdir(parents=True, exist_ok=True)
    (output / "table.txt").write_text(table(rows) + "\n")
    (output / "results.json").write_text(json.dumps({"stages": rows}, indent=1))
    write_chart(rows, output / "chart.png")
    return RecipeSummary(rows, output, time.perf_counter() - began)

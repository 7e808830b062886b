"""The recipe schema: named stages run in the order written, each the config of one job (`job:` plus that job's
own keys). Any string in a stage may name the recipe's directory, `${output}`, or an earlier stage's output,
`${stages.<name>.output}`; references are resolved and every stage is checked against its job's schema before
any stage runs, so a mistake anywhere is one line naming the stage and the key.

    output: out/recipes/nomic-embed
    stages:
      pairs: {job: pairs, path: "${output}/pairs"}
      mlm: {job: pretrain, data: {path: "${stages.pairs.output}", text_column: document}, ...}
      contrastive: {job: train, model: {path: "${stages.mlm.output}"}, ...}

A stage's output is what the next one reads: pairs -> its path; pretrain, train -> the published model
(<storage_path>/<name>/model); mine -> its output.path; eval -> its output directory.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, Field, PrivateAttr, field_validator, model_validator

from raylib.config import (
    ConfigError,
    ContrastiveJobConfig,
    EvalJobConfig,
    MineJobConfig,
    MlmJobConfig,
    Strict,
    validate_config,
)
from raylib.storage import is_remote
from raylib.train.metrics import run_uri

REFERENCE = re.compile(r"\$\{([^}]*)\}")
STAGE_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_-]*$")


class PairsConfig(Strict):
    """Training pairs (query, document, negatives) for the stages after it: the sample docstring pairs (train
    split, disjoint from the eval job's docstrings set) written as jsonl, or your own files."""

    source: Literal["sample", "files"] = "sample"
    path: str  # sample: the directory pairs.jsonl is written to; files: your parquet/jsonl pairs (local, s3://, gs://)
    limit: int | None = Field(None, gt=0)  # sample: the first N pairs; None: all (~2,400)
    negatives: int = Field(0, ge=0)  # sample: neighbouring docstrings per pair as 'negatives' (mine finds better)

    @field_validator("path")
    @classmethod
    def _absolute(cls, value: str) -> str:
        return value if is_remote(value) else str(Path(value).expanduser().resolve())


JOB_SCHEMAS: dict[str, type[BaseModel]] = {
    "pairs": PairsConfig, "pretrain": MlmJobConfig, "train": ContrastiveJobConfig, "mine": MineJobConfig,
    "eval": EvalJobConfig,
}
TRAINING_JOBS = ("pretrain", "train")


@dataclass(frozen=True)
class Stage:
    """One checked stage: its job's config with references resolved."""

    name: str
    job: str
    body: dict  # the job's keys, references resolved
    config: BaseModel
    upstream: tuple[str, ...]  # the earlier stages it names, in order of first mention

    def reread(self) -> Stage:
        """The stage with its config read again now that the stages before it ran: a local model directory is
        then made absolute as it is now (a published model: the version its link points to), as a job would
        read it, so the stage's record names the very model it was trained or evaluated from."""
        return replace(self, config=validate_config(self.body, JOB_SCHEMAS[self.job], f"stages.{self.name}"))

    @property
    def output(self) -> str:
        """What the next stages read: the pairs' path, the published model, the mined shards, the eval results."""
        if self.job in TRAINING_JOBS:
            return run_uri(self.config.checkpoint, "model")
        if self.job == "mine":
            return self.config.output.path
        if self.job == "eval":
            return self.config.output
        return self.config.path


def resolve_references(value, known: dict[str, str], key: str, found: list[str]):
    """`value` with every ${...} in its strings replaced from `known` (reference -> text); the stages it names
    are appended to `found`. An unknown reference is a ValueError naming `key` (the dotted path to the string)."""
    if isinstance(value, dict):
        return {name: resolve_references(item, known, f"{key}.{name}", found) for name, item in value.items()}
    if isinstance(value, list):
        return [resolve_references(item, known, f"{key}[{index}]", found) for index, item in enumerate(value)]
    if not isinstance(value, str):
        return value

    def substitute(match: re.Match) -> str:
        reference = match.group(1).strip()
        if reference not in known:
            raise ValueError(f"{key}: ${{{reference}}} names nothing this stage can read; use "
                             f"{', '.join('${' + name + '}' for name in known)}")
        stage = reference.split(".")[1] if reference.startswith("stages.") else None
        if stage and stage not in found:
            found.append(stage)
        return known[reference]

    return REFERENCE.sub(substitute, value)


def plan_stages(output: str, stages: dict[str, dict]) -> list[Stage]:
    """Resolve each stage's references from the stages before it, then check it against its job's schema."""
    known, plan = {"output": output}, []
    for name, body in stages.items():
        where = f"stages.{name}"
        if not STAGE_NAME.match(name):
            raise ValueError(f"{where}: a stage name is letters, digits, - and _; rename it")
        if "job" not in body:
            raise ValueError(f"{where}.job: required key is missing; add it (one of {', '.join(JOB_SCHEMAS)})")
        job = body["job"]
        if job not in JOB_SCHEMAS:
            raise ValueError(f"{where}.job: {job!r} is not a job; use one of {', '.join(JOB_SCHEMAS)}")
        upstream: list[str] = []
        keys = {key: value for key, value in body.items() if key != "job"}
        resolved = resolve_references(keys, known, where, upstream)
        try:
            config = validate_config(resolved, JOB_SCHEMAS[job], where)
        except ConfigError as exc:
            raise ValueError(str(exc)) from None
        stage = Stage(name, job, resolved, config, tuple(upstream))
        known[f"stages.{name}.output"] = stage.output
        plan.append(stage)
    return plan


class RecipeConfig(Strict):
    """Stages run in order as one chain, each stage's output feeding the next by reference."""

    output: str  # a local directory: the table, results.json, chart.png and each stage's record (stages/)
    # stage name -> {job: pairs|pretrain|train|mine|eval, then that job's keys (`raylib <job> --help`; pairs:
    # source, path, limit, negatives)}, run in the order written. Any string may hold ${output} or
    # ${stages.<earlier stage>.output}
    stages: dict[str, dict] = Field(min_length=1)

    _plan: list[Stage] = PrivateAttr(default_factory=list)

    @field_validator("output")
    @classmethod
    def _local(cls, value: str) -> str:
        if is_remote(value):
            raise ValueError("the recipe writes its table and chart to a local directory; give a local path")
        return str(Path(value).expanduser().resolve())

    @model_validator(mode="after")
    def _plan_stages(self):
        self._plan = plan_stages(self.output, self.stages)
        return self

    def plan(self) -> list[Stage]:
        """The stages in order, references resolved and each checked."""
        return self._plan

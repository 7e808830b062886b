"""The `raylib` command: one subcommand per job, each run exactly as its `ray job submit` entrypoint runs it.

    raylib embed --config jobs/configs/embed.yaml     # likewise pretrain, train, mine, eval
    raylib embed --help                               # every config key: type, default, comment
    raylib config embed > my.yaml                     # a commented starter config

jobs/<job>.py call `run_job`, the CLI calls `launch`; both end in `raylib.config.job_main` (one-line errors,
exit 2 on a bad config). Config key comments are read from raylib/config.py's source, where they stay beside
the fields they describe."""

from __future__ import annotations

import argparse
import ast
import importlib
import inspect
import io
import json
import sys
import textwrap
import tokenize
import types
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Literal, Union, get_args, get_origin

from pydantic import BaseModel
from pydantic.fields import FieldInfo

from raylib.config import (
    ContrastiveJobConfig,
    EmbedJobConfig,
    EvalJobConfig,
    MineJobConfig,
    MlmJobConfig,
    job_main,
)

STARTERS = Path(__file__).resolve().parents[1] / "jobs" / "configs"  # the shipped, commented example configs


@dataclass(frozen=True)
class Job:
    description: str
    schema: type[BaseModel]
    driver: str  # "module:function", imported once the config is valid, so --help and errors stay fast
    starter: str  # its starter config in jobs/configs/

    def run(self, config: BaseModel):
        module, function = self.driver.split(":")
        return getattr(importlib.import_module(module), function)(config)


JOBS = {
    "embed": Job("Batch-embed parquet/jsonl files with Ray Data.", EmbedJobConfig,
                 "raylib.embed.run:run_embed", "embed.yaml"),
    "pretrain": Job("Pretrain nomic-bert with masked language modelling on Ray Train.", MlmJobConfig,
                    "raylib.train.run:run_mlm", "pretrain_mlm_cpu.yaml"),
    "train": Job("Contrastive (bi-encoder) training on Ray Train: InfoNCE with in-batch and hard negatives.",
                 ContrastiveJobConfig, "raylib.train.run:run_contrastive", "contrastive_finetune_cpu.yaml"),
    "mine": Job("Mine hard negatives for (query, document) pairs: triplet shards for the train job.",
                MineJobConfig, "raylib.mine.run:run_mining", "mine_negatives_cpu.yaml"),
    "eval": Job("Retrieval evaluation (NDCG@10, MRR@10, recall@1/10/100) of models, checkpoints or context lengths.",
                EvalJobConfig, "raylib.eval.run:run_eval", "eval.yaml"),
}


def source_comments(schema: type[BaseModel]) -> dict[str, str]:
    """Field name -> its `# comment` in the source of `schema` and its config base classes: the comment lines
    right above the field, then the comment on its line(s)."""
    comments: dict[str, str] = {}
    for klass in reversed(schema.__mro__):
        if klass.__module__ != schema.__module__:
            continue
        source = textwrap.dedent(inspect.getsource(klass))
        found = {token.start[0]: (token.string.lstrip("# ").strip(), token.line.lstrip().startswith("#"))
                 for token in tokenize.generate_tokens(io.StringIO(source).readline) if token.type == tokenize.COMMENT}
        for node in ast.parse(source).body[0].body:
            if isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name):
                above, line = [], node.lineno - 1
                while found.get(line, ("", False))[1]:
                    above.insert(0, found[line][0])
                    line -= 1
                own = [found[n][0] for n in range(node.lineno, node.end_lineno + 1) if n in found]
                comments[node.target.id] = " ".join(above + own)
    return comments


def _section(annotation) -> tuple[type[BaseModel] | None, bool]:
    """(the config section inside a field's type, whether the field is a list of them)."""
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation, False
    for arg in get_args(annotation):
        section, many = _section(arg)
        if section:
            return section, many or get_origin(annotation) is list
    return None, False


def _type(annotation) -> str:
    origin, args = get_origin(annotation), get_args(annotation)
    if origin is Literal:
        return "|".join(str(arg) for arg in args)
    if origin in (Union, types.UnionType):
        return "|".join(_type(arg) for arg in args)
    if origin is Annotated:
        return _type(args[0])
    if origin is not None:
        return f"{origin.__name__}[{', '.join(_type(arg) for arg in args)}]" if args else origin.__name__
    if annotation is type(None):
        return "null"
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return "section"
    return getattr(annotation, "__name__", str(annotation))


def _bounds(field: FieldInfo) -> str:
    bounds = [f"{symbol}{getattr(rule, name)}" for rule in field.metadata
              for name, symbol in (("gt", ">"), ("ge", ">="), ("lt", "<"), ("le", "<="), ("min_length", "length>="))
              if getattr(rule, name, None) is not None]
    return "".join(f" {bound}" for bound in bounds)


def _default(field: FieldInfo) -> str:
    if field.is_required():
        return ", required"
    value = field.get_default(call_default_factory=True)
    return "" if isinstance(value, BaseModel) else f" = {json.dumps(value)}"


def config_keys(schema: type[BaseModel], prefix: str = "") -> list[tuple[str, str, str]]:
    """(dotted key, `type = default` or `type, required`, comment) of every key of `schema`, each section
    followed by its own keys; `a[].b` is key b of each item of list a."""
    comments = source_comments(schema)
    rows = []
    for name, field in schema.model_fields.items():
        section, many = _section(field.annotation)
        doc = " ".join((section.__doc__ or "").split()) if section else ""
        comment = field.description or comments.get(name) or doc
        rows.append((prefix + name, _type(field.annotation) + _bounds(field) + _default(field), comment))
        if section:
            rows += config_keys(section, prefix + name + ("[]." if many else "."))
    return rows


def key_table(schema: type[BaseModel]) -> str:
    rows = config_keys(schema)
    width = max(len(key) for key, _, _ in rows)
    lines = [f"  {key:<{width}}  {kind}" + (f"  # {comment}" if comment else "") for key, kind, comment in rows]
    return "config keys (YAML; a.b: key b of section a; a[].b: of each item of list a):\n" + "\n".join(lines)


def job_parser(name: str, parser: argparse.ArgumentParser | None = None) -> argparse.ArgumentParser:
    """`--config FILE`, with every config key of the job in the help."""
    parser = parser or argparse.ArgumentParser()
    parser.description, parser.epilog = JOBS[name].description, key_table(JOBS[name].schema)
    parser.formatter_class = argparse.RawDescriptionHelpFormatter
    parser.add_argument("--config", required=True, metavar="FILE",
                        help=f"YAML config file (`raylib config {name}` prints a commented starter)")
    return parser


def launch(name: str, config: str) -> int:
    """Load `config` and run job `name`'s driver; the process's exit code (2: bad config)."""
    job = JOBS[name]
    return job_main(job.description, job.schema, job.run, ["--config", config])


def run_job(name: str, argv: list[str] | None = None) -> int:
    """The entrypoint of jobs/<job>.py: parse its arguments and launch it."""
    return launch(name, job_parser(name).parse_args(argv).config)


def starter(name: str) -> str:
    """The commented starter config of job `name`: its shipped example."""
    return f"# raylib {name} --config FILE; `raylib {name} --help` lists every key\n" + \
        (STARTERS / JOBS[name].starter).read_text()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="raylib", description=__doc__.splitlines()[0],
                                     epilog=__doc__.split("\n\n")[1],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name, job in JOBS.items():
        job_parser(name, commands.add_parser(name, help=job.description))
    commands.add_parser("config", help="print a commented starter config for a job").add_argument("job", choices=JOBS)
    args = parser.parse_args(argv)
    if args.command != "config":
        return launch(args.command, args.config)
    try:
        print(starter(args.job), end="")
    except OSError as exc:
        print(f"error: no starter config ({exc.strerror}: {exc.filename}); it ships in a source checkout's "
              "jobs/configs/", file=sys.stderr)
        return 2
    return 0

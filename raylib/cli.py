"""The `raylib` command: one subcommand per job, each run exactly as its `ray job submit` entrypoint runs it.

    raylib embed --config jobs/configs/embed.yaml     # likewise pretrain, train, mine, eval
    raylib embed --help                               # every config key: type, default, comment
    raylib config embed > my.yaml                     # a commented starter config
    raylib search --index out/index --query "..."     # the nearest documents in the table the embed job indexed

jobs/<job>.py call `run_job`, the CLI calls `launch`; both end in `raylib.config.job_main` (one-line errors,
exit 2 on a bad config), and their processes in `end_process`. Config key comments are read from
raylib/config.py's source, where they stay beside the fields they describe."""

from __future__ import annotations

import argparse
import ast
import importlib
import inspect
import io
import json
import logging
import os
import sys
import textwrap
import tokenize
import types
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Literal, NoReturn, Union, get_args, get_origin

from pydantic import BaseModel
from pydantic.fields import FieldInfo

from raylib.config import (
    ConfigError,
    ContrastiveJobConfig,
    EmbedJobConfig,
    EvalJobConfig,
    MineJobConfig,
    MlmJobConfig,
    job_main,
)
from raylib.console import VERBOSE_HELP
from raylib.recipe.config import RecipeConfig

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
    "recipe": Job("Run a recipe: pairs, pretrain, train, mine and eval stages as one chain; finished stages are skipped.",
                  RecipeConfig, "raylib.recipe.run:run_recipe", "../recipes/nomic_embed_cpu.yaml"),
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
    parser.add_argument("--verbose", action="store_true", help=VERBOSE_HELP)
    return parser


def launch(name: str, config: str, verbose: bool = False) -> int:
    """Load `config` and run job `name`'s driver; the process's exit code (2: bad config)."""
    job = JOBS[name]
    argv = ["--config", config, "--verbose"] if verbose else ["--config", config]
    return job_main(job.description, job.schema, job.run, argv, name=name)


def run_job(name: str, argv: list[str] | None = None) -> int:
    """The entrypoint of jobs/<job>.py: parse its arguments and launch it."""
    args = job_parser(name).parse_args(argv)
    return launch(name, args.config, args.verbose)


def end_process(code: int) -> NoReturn:
    """Exit a job's process with `code` now: Ray stopped (the one this process started, or its connection),
    logs and streams flushed, then os._exit, skipping the interpreter's teardown of torch's, transformers' and
    Ray's modules, which writes nothing (~1 s per job on a 2-core machine)."""
    ray = sys.modules.get("ray")
    if ray is not None and ray.is_initialized():
        ray.shutdown()
    logging.shutdown()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


def starter(name: str) -> str:
    """The commented starter config of job `name`: its shipped example."""
    return f"# raylib {name} --config FILE; `raylib {name} --help` lists every key\n" + \
        (STARTERS / JOBS[name].starter).read_text()


SEARCH_HELP = "nearest documents to a query in the table an embed job indexed (its index: section)"


def search_parser(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """`--index URI --query TEXT [--top N] [--filter SQL] [--table NAME]`."""
    parser.description = (SEARCH_HELP[0].upper() + SEARCH_HELP[1:] + ". The query is embedded with the model "
                          "settings the job recorded with the table (model, pooling, prefix, dimensions).")
    parser.add_argument("--index", required=True, metavar="URI", help="the LanceDB database: the config's index.path")
    parser.add_argument("--query", required=True, help="the text to search for")
    parser.add_argument("--top", type=_positive, default=10, metavar="N", help="results to print (default 10)")
    parser.add_argument("--filter", metavar="SQL",
                        help="a Lance SQL filter on the stored columns, e.g. \"lang = 'en'\"")
    parser.add_argument("--table", default="documents", help="the config's index.table (default documents)")
    return parser


def _positive(value: str) -> int:
    if not value.isdigit() or int(value) < 1:
        raise argparse.ArgumentTypeError(f"{value!r} is not a positive integer")
    return int(value)


def search(args: argparse.Namespace) -> int:
    """Print the ranked ids, scores and stored text of `args.query`'s nearest rows; errors are one line, exit 2."""
    from transformers.utils import logging as transformers_logging

    from raylib.embed.index import open_index  # torch and LanceDB load only for this command

    transformers_logging.disable_progress_bar()  # no "Loading weights" bar above the results

    try:
        index = open_index(args.index, args.table)
        (found,) = index.search([args.query], args.top, args.filter)
    except ConfigError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except (ValueError, RuntimeError) as exc:  # LanceDB's answer to a filter it cannot parse or apply
        print(f"error: --filter: {str(exc).strip().splitlines()[0][:300]}; fix the SQL expression", file=sys.stderr)
        return 2
    ids, text = found.column(index.record["id_column"]).to_pylist(), index.record.get("text_column")
    texts = found.column(text).to_pylist() if text else [""] * len(ids)
    print(f"query: {args.query}")
    for rank, (doc_id, score, body) in enumerate(zip(ids, found.column("score").to_pylist(), texts), start=1):
        first_line = next((line.strip() for line in (body or "").splitlines() if line.strip()), "")
        print(f"{rank:>3}. {score:.3f}  {doc_id}  {first_line[:100]}")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="raylib", description=__doc__.splitlines()[0],
                                     epilog=__doc__.split("\n\n")[1],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name, job in JOBS.items():
        job_parser(name, commands.add_parser(name, help=job.description))
    commands.add_parser("config", help="print a commented starter config for a job").add_argument("job", choices=JOBS)
    search_parser(commands.add_parser("search", help=SEARCH_HELP))
    args = parser.parse_args(argv)
    if args.command == "search":
        return search(args)
    if args.command != "config":
        return launch(args.command, args.config, args.verbose)
    try:
        print(starter(args.job), end="")
    except OSError as exc:
        print(f"error: no starter config ({exc.strerror}: {exc.filename}); it ships in a source checkout's "
              "jobs/configs/", file=sys.stderr)
        return 2
    return 0


def entrypoint() -> NoReturn:
    """The `raylib` console script."""
    end_process(main())

"""The batch-embedding stage's driver, one Ray Data chain: the piece reader's tasks tokenise each piece
(tokenize.py) -> model actors embed it (actor.py) -> writer actors commit it (writer.py, store.py). An int8
output is calibrated first, once (calibrate.py).

Each input piece travels whole through the stages (one block), so the writer can commit it atomically:
vectors, bad rows, then its manifest entry. A re-run skips committed pieces, which makes the output hold
every valid input id exactly once, whatever killed the previous run.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass, field
from importlib.metadata import version

import numpy as np
import pyarrow.compute as pc
import ray

from raylib.config import ComputeConfig, ConfigError, EmbedJobConfig, JobError
from raylib.data.sources import (
    InputPlan,
    file_digest,
    file_key,
    key_file_digest,
    list_input_files,
    plan_input,
    read_pieces,
)
from raylib.embed.actor import embed_with_actors
from raylib.embed.calibrate import output_ranges
from raylib.embed.index import check_index, write_index
from raylib.embed.progress import EmbedProgress
from raylib.embed.store import OutputStore
from raylib.embed.tokenize import tokenize_piece
from raylib.embed.unique import remove_duplicates
from raylib.embed.vectors import schema_metadata, vector_bytes
from raylib.embed.writer import PieceWriter
from raylib.models.spec import model_fingerprint, resolve_spec
from raylib.models.tokenizer import PromptTokenizer
from raylib.runtime import init_ray
from raylib.storage import redact

LAYOUT = 2  # of piece keys: <file stem>-<file digest>-<file fingerprint>-<first row or byte>
PIECE_OUTPUT_BYTES = 64 << 20  # a piece's vectors at most (besides input.rows_per_piece)
UNREADABLE_EXIT = 3  # the job finished, but some inputs could not be read (listed in <output>/_errors)


@dataclass
class EmbedSummary:
    rows: int
    errors: int
    tokens: int
    pieces: int
    skipped_pieces: int
    seconds: float
    output: str
    removed_pieces: int = 0  # committed pieces of files that changed or went away since, removed
    duplicates: list[dict] = field(default_factory=list)  # rows removed: an earlier row holds their id
    unreadable: dict[str, str] = field(default_factory=dict)  # key: where and why
    index: str | None = None  # the index step's line (index.py), when the config has an index: section
    # what a cluster owner pays: the model actors, the CPUs and GPUs the stages hold, the seconds they ran
    actors: int = 0
    cpus: float = 0.0
    gpus: float = 0.0
    embed_seconds: float = 0.0

    @property
    def exit_code(self) -> int:
        return UNREADABLE_EXIT if self.unreadable else 0

    def line(self) -> str:
        rate = self.seconds or 1e-9
        line = (
            f"embedded rows={self.rows} errors={self.errors} pieces={self.pieces} skipped={self.skipped_pieces} "
            f"removed={self.removed_pieces} duplicates={len(self.duplicates)} seconds={self.seconds:.1f} rows/s={self.rows / rate:.1f} "
            f"tokens/s={self.tokens / rate:.0f} {self.cost()}output={redact(self.output)}"
        )
        if self.duplicates:
            line += (f"\nduplicate ids: {len(self.duplicates)} later rows removed, the first of each id kept (e.g. "
                     f"{str(self.duplicates[0]['id'])[:100]!r} at {self.duplicates[0]['where']}); listed in "
                     f"{redact(self.output)}/_errors/*.duplicates.jsonl")
        if self.unreadable:
            first = next(iter(self.unreadable.values()))
            line += (f"\nfinished with unreadable inputs: {len(self.unreadable)} (e.g. {first}); listed in "
                     f"{redact(self.output)}/_errors/*.unreadable.jsonl; fix or remove them and run again")
        if self.index:
            line += f"\n{self.index}"
        return line

    def cost(self) -> str:
        """`key=value ` figures for sizing a cluster, over the seconds the Ray Data chain ran (model loads
        included): rows/s per model actor, tokens per CPU-second (and GPU-second) the stages held."""
        seconds = self.embed_seconds or 1e-9
        cost = (f"embed_seconds={self.embed_seconds:.1f} actors={self.actors} "
                f"rows/s/actor={self.rows / seconds / max(self.actors, 1):.1f} cpus={self.cpus:g} "
                f"tokens/cpu-s={self.tokens / seconds / (self.cpus or 1):.0f} ")
        if self.gpus:
            cost += f"gpus={self.gpus:g} tokens/gpu-s={self.tokens / seconds / self.gpus:.0f} "
        return cost


def _settings(config: EmbedJobConfig, model: str) -> dict:
    """What the vectors depend on: a re-run into the same output must not change any of it (the model's files
    included: `model` is their fingerprint). Credentials in URIs are left out (stored in the output; rotating
    them changes nothing)."""
    keep = ("path", "format", "id_column", "text_column", "rows_per_piece", "bytes_per_piece")
    settings = {
        **{f"input.{key}": getattr(config.input, key) for key in keep},
        **{f"model.{key}": value for key, value in config.model.model_dump().items()},
        "model.files": model,
        "input_type": config.input_type,
        "output.dtype": config.output.dtype,
        "layout": LAYOUT,
    }
    return {key: redact(value) if key.endswith(".path") else value for key, value in settings.items()}


def _made_with(settings: dict) -> dict:
    """Provenance for every output file: the model settings and files' fingerprint from `settings`, the input
    type and the project's version."""
    made_with = {key: value for key, value in settings.items() if key.startswith("model.") or key == "input_type"}
    return {**made_with, "raylib_version": version("raylib-embeddings")}


def _stage_cpus(compute: ComputeConfig) -> float:
    """The CPUs the stages hold at least: the model actors, a tokenising task and a writer."""
    return compute.actors * compute.cpus_per_actor + compute.tokenizer_cpus + compute.writer_cpus


def _check_resources(config: EmbedJobConfig) -> None:
    """On embedded Ray, fail early when the stages cannot all be scheduled on this machine."""
    if os.environ.get("RAY_ADDRESS"):
        return  # a cluster may autoscale to fit
    needed = _stage_cpus(config.compute)
    available = ray.cluster_resources().get("CPU", 0)
    if needed > available:
        raise ConfigError(
            f"compute: actors x cpus_per_actor + tokenizer_cpus + writer_cpus = {needed:g} CPUs, but local Ray has "
            f"{available:g}; lower compute.actors or compute.cpus_per_actor"
        )


def _prepare_output(store: OutputStore, plan: InputPlan) -> set[str]:
    """Clear what a killed run left, report the unreadable files and remove the committed pieces of files that
    changed or went away (not of files unreadable now: they may come back), and then also every piece that gave
    up rows as duplicates (their first holder may be among the removed); returns the removed keys."""
    store.discard_temporary()
    for path, reason in plan.unreadable:
        store.report_unreadable(file_key(path), path, reason)
    unreadable_files = {file_digest(path) for path, _ in plan.unreadable}
    planned = {piece.key for piece in plan.pieces}
    stale = {key for key in store.finished() - planned if key_file_digest(key) not in unreadable_files}
    if stale:
        stale |= store.deduplicated() & store.finished()
    store.remove_pieces(stale)
    return stale


def run_embed(config: EmbedJobConfig) -> EmbedSummary:
    """Embed every piece of the input not yet in the output's manifest; returns the run's counts.

    Pieces of files that changed or went away since they were committed are removed first, so the output holds
    exactly the rows the input holds now. Files that cannot be read are reported, the rest is embedded."""
    started = time.perf_counter()
    # a bad config, input or model fails here, before Ray starts
    spec = resolve_spec(**config.model.model_dump())
    tokenizer = PromptTokenizer.from_spec(spec)
    fs, files = list_input_files(config.input)
    max_rows = PIECE_OUTPUT_BYTES // vector_bytes(config.output.dtype, spec.dimensions)
    plan = plan_input(fs, files, config.input, max_rows=max_rows)
    check_index(config, spec, fs, files)
    store = OutputStore(config.output.path)
    settings = _settings(config, model_fingerprint(spec))
    with store.lease(config.output.lease_timeout_s) as lease:
        store.claim(settings)
        stale = _prepare_output(store, plan)
        finished = store.finished()
        todo = [piece for piece in plan.pieces if piece.key not in finished]

        init_ray()
        _check_resources(config)
        totals = {"rows": 0, "errors": 0, "tokens": 0}
        embedding = time.perf_counter()
        if todo:
            ranges = output_ranges(store, plan.pieces, config, tokenizer)
            lease.check()
            totals = _embed(todo, config, tokenizer, ranges, spec.dimensions, _made_with(settings))
        embed_seconds = time.perf_counter() - embedding
        lease.check()
        finished = store.finished()  # now, with this run's pieces
        committed = [piece.key for piece in plan.pieces if piece.key in finished]
        duplicates = remove_duplicates(store, config.input.id_column, committed,
                                       len(committed) * min(max_rows, config.input.rows_per_piece),
                                       config.compute.writer_cpus)
        lease.check()
        index = write_index(config, spec, store, plan.pieces) if config.index else None

    unreadable = store.unreadable()
    missing = {piece.key for piece in plan.pieces} - store.finished() - unreadable.keys()
    if missing:
        raise JobError(
            f"{len(missing)} input pieces were not committed (e.g. {sorted(missing)[0]}); re-run the job"
        )
    return EmbedSummary(
        rows=totals["rows"], errors=totals["errors"], tokens=totals["tokens"], pieces=len(plan.pieces),
        skipped_pieces=len(plan.pieces) - len(todo), seconds=time.perf_counter() - started,
        output=store.uri, removed_pieces=len(stale), duplicates=duplicates, unreadable=unreadable, index=index,
        actors=config.compute.actors, cpus=_stage_cpus(config.compute),
        gpus=config.compute.actors * config.compute.gpus_per_actor, embed_seconds=embed_seconds,
    )


def _embed(todo: list, config: EmbedJobConfig, tokenizer: PromptTokenizer, ranges: np.ndarray | None,
           dimensions: int, made_with: dict) -> dict[str, int]:
    """Run the pieces through the Ray Data chain (vectors in output.dtype, int8 with `ranges`); returns the
    committed rows, bad rows and tokens."""
    compute, dtype = config.compute, config.output.dtype
    pieces = read_pieces(todo, compute.tokenizer_cpus, tokenize_piece, config=config.input, tokenizer=tokenizer,
                         input_type=config.input_type, output_uri=config.output.path)
    dataset = (
        embed_with_actors(pieces, config, dtype, ranges)
        .map_batches(
            PieceWriter,
            batch_size=None,
            batch_format="pyarrow",
            fn_constructor_kwargs={"output_uri": config.output.path, "id_column": config.input.id_column,
                                   "metadata": schema_metadata(dtype, dimensions, ranges, made_with)},
            compute=ray.data.ActorPoolStrategy(min_size=1, max_size=compute.actors),
            num_cpus=compute.writer_cpus,
        )
    )
    totals = {"rows": 0, "errors": 0, "tokens": 0}
    with EmbedProgress(todo) as progress:
        for batch in dataset.iter_batches(batch_size=None, batch_format="pyarrow"):
            for key in totals:
                totals[key] += int(pc.sum(batch.column(key)).as_py() or 0)
            progress.add(batch)
    return totals

"""The batch-embedding stage's driver, one Ray Data chain: the piece reader's tasks tokenise each piece
(tokenize.py) -> model actors embed it (actor.py) -> writer actors commit it (writer.py, store.py).

Each input piece travels whole through the stages (one block), so the writer can commit it atomically:
vectors, bad rows, then its manifest entry. A re-run skips committed pieces, which makes the output hold
every valid input id exactly once, whatever killed the previous run.
"""

from __future__ import annotations

import math
import os
import time
from dataclasses import dataclass

import pyarrow.compute as pc
import ray

from raylib.config import ConfigError, EmbedJobConfig
from raylib.data.sources import list_input_files, plan_pieces, read_pieces
from raylib.embed.actor import EmbedActor
from raylib.embed.store import OutputStore
from raylib.embed.tokenize import tokenize_piece
from raylib.embed.writer import PieceWriter
from raylib.models.spec import resolve_spec
from raylib.models.tokenizer import PromptTokenizer
from raylib.runtime import init_ray
from raylib.storage import redact


@dataclass
class EmbedSummary:
    rows: int
    errors: int
    tokens: int
    pieces: int
    skipped_pieces: int
    seconds: float
    output: str

    def line(self) -> str:
        rate = self.seconds or 1e-9
        return (
            f"embedded rows={self.rows} errors={self.errors} pieces={self.pieces} skipped={self.skipped_pieces} "
            f"seconds={self.seconds:.1f} rows/s={self.rows / rate:.1f} tokens/s={self.tokens / rate:.0f} "
            f"output={redact(self.output)}"
        )


def _settings(config: EmbedJobConfig) -> dict:
    """What the vectors depend on: a re-run into the same output must not change any of it. Credentials in
    URIs are left out (stored in the output; rotating them changes nothing)."""
    keep = ("path", "format", "id_column", "text_column", "rows_per_piece", "bytes_per_piece")
    settings = {
        **{f"input.{key}": getattr(config.input, key) for key in keep},
        **{f"model.{key}": value for key, value in config.model.model_dump().items()},
        "input_type": config.input_type,
        "output.dtype": config.output.dtype,
    }
    return {key: redact(value) if key.endswith(".path") else value for key, value in settings.items()}


def _check_resources(config: EmbedJobConfig) -> None:
    """On embedded Ray, fail early when the stages cannot all be scheduled on this machine."""
    if os.environ.get("RAY_ADDRESS"):
        return  # a cluster may autoscale to fit
    compute = config.compute
    needed = compute.actors * compute.cpus_per_actor + compute.tokenizer_cpus + compute.writer_cpus
    available = ray.cluster_resources().get("CPU", 0)
    if needed > available:
        raise ConfigError(
            f"compute: actors x cpus_per_actor + tokenizer_cpus + writer_cpus = {needed:g} CPUs, but local Ray has "
            f"{available:g}; lower compute.actors or compute.cpus_per_actor"
        )


def run_embed(config: EmbedJobConfig) -> EmbedSummary:
    """Embed every piece of the input not yet in the output's manifest; returns the run's counts."""
    started = time.perf_counter()
    fs, files = list_input_files(config.input)
    pieces = plan_pieces(fs, files, config.input)
    # a bad model fails here, before Ray starts
    tokenizer = PromptTokenizer.from_spec(resolve_spec(**config.model.model_dump()))
    store = OutputStore(config.output.path)
    store.claim(_settings(config))
    store.discard_temporary()
    finished = store.finished()
    todo = [piece for piece in pieces if piece.key not in finished]

    init_ray()
    _check_resources(config)
    totals = {"rows": 0, "errors": 0, "tokens": 0}
    if todo:
        compute, model_json = config.compute, config.model.model_dump_json()
        dataset = (
            read_pieces(todo, compute.tokenizer_cpus, tokenize_piece, config=config.input, tokenizer=tokenizer,
                        input_type=config.input_type, output_uri=config.output.path)
            .map_batches(
                EmbedActor,
                batch_size=None,
                batch_format="pyarrow",
                fn_constructor_kwargs={
                    "model_json": model_json,
                    "input_type": config.input_type,
                    "batch_tokens": compute.batch_tokens,
                    "threads": compute.threads_per_actor or math.ceil(compute.cpus_per_actor),
                },
                compute=ray.data.ActorPoolStrategy(size=compute.actors),
                num_cpus=compute.cpus_per_actor,
                num_gpus=compute.gpus_per_actor,
            )
            .map_batches(
                PieceWriter,
                batch_size=None,
                batch_format="pyarrow",
                fn_constructor_kwargs={"output_uri": config.output.path, "id_column": config.input.id_column,
                                       "dtype": config.output.dtype},
                compute=ray.data.ActorPoolStrategy(min_size=1, max_size=compute.actors),
                num_cpus=compute.writer_cpus,
            )
        )
        for batch in dataset.iter_batches(batch_size=None, batch_format="pyarrow"):
            for key in totals:
                totals[key] += int(pc.sum(batch.column(key)).as_py() or 0)

    missing = {piece.key for piece in pieces} - store.finished()
    if missing:
        raise RuntimeError(
            f"{len(missing)} input pieces were not committed (e.g. {sorted(missing)[0]}); re-run the job"
        )
    return EmbedSummary(
        rows=totals["rows"], errors=totals["errors"], tokens=totals["tokens"], pieces=len(pieces),
        skipped_pieces=len(pieces) - len(todo), seconds=time.perf_counter() - started,
        output=store.uri,
    )

"""Hard-negative mining's driver: every step runs in Ray tasks and actors over the work folder (work.py), and the
driver holds only counts (per input piece, per bucket), so the job scales with the cluster, not the driver:

1. the piece reader's tasks split the pairs and the corpus into buckets by text key (inputs.py); a task per bucket
   keeps each document and query once
2. the Ray Data embed pipeline (raylib.embed.run_embed) embeds the documents and the queries
3. a Ray task builds the faiss index of the documents once (index.py): exact below search.exact_below, else IVF
4. search actors mine one query bucket at a time (search.py): nearest documents, every labelled positive of the
   query left out, the positive-aware filter, the best `negatives` kept
5. a task per document bucket gives the negatives their texts; a task per output shard writes part-<n>.<format>
   (shards.py), in the pairs' input order

Bad rows go to <output>.errors.jsonl with their reason."""

import math
import posixpath
import time
from dataclasses import dataclass, field

import numpy as np
import pyarrow.fs as pafs
import ray

from raylib.config import ConfigError, EmbedJobConfig, InputConfig, JobError, MineJobConfig
from raylib.data.pairs import pairs_pieces
from raylib.data.sources import Piece, list_input_files, plan_pieces, read_pieces
from raylib.embed.run import run_embed
from raylib.mine.index import build_index
from raylib.mine.inputs import split_corpus_piece, split_pairs_piece, unique_texts
from raylib.mine.search import QuerySearcher, split_query_vectors
from raylib.mine.shards import attach_negative_texts, write_shard
from raylib.mine.work import WorkFolder, with_suffix
from raylib.models.spec import resolve_spec
from raylib.runtime import init_ray
from raylib.storage import redact, resolve

BUCKET_ROWS = 1_000_000  # pairs (and candidate documents) per bucket at most, about: what one task holds
FILES_PER_TASK = 64  # embed output files split by bucket in one task


@dataclass
class MiningSummary:
    pairs: int = 0
    errors: int = 0
    short: int = 0  # rows that got fewer than k negatives
    filtered: int = 0  # candidates dropped as likely false negatives
    seconds: float = 0.0
    output: str = ""
    shards: list[str] = field(default_factory=list)

    def line(self) -> str:
        return (f"mined pairs={self.pairs} errors={self.errors} short={self.short} filtered={self.filtered} "
                f"seconds={self.seconds:.1f} output={redact(self.output)}")


def errors_path(config: MineJobConfig) -> str:
    """Beside the output directory (not in it, where training would read it as pairs)."""
    return with_suffix(config.output.path, ".errors.jsonl")


def work_path(config: MineJobConfig) -> str:
    """The work folder, beside the output directory too."""
    return with_suffix(config.output.path, ".work")


def plan_inputs(config: MineJobConfig) -> tuple[list[Piece], list[Piece]]:
    """The pieces of the pairs and of the corpus, or ConfigError naming the key."""
    pairs = config.pairs
    fs, path = resolve(pairs.path)
    if fs.get_file_info(path).type == pafs.FileType.NotFound:
        raise ConfigError(f"pairs.path: {pairs.path} does not exist; point it at parquet/jsonl files")
    corpus = [] if config.corpus is None else plan_pieces(*list_input_files(config.corpus, "corpus"), config.corpus,
                                                          "corpus")
    return pairs_pieces(pairs.path, pairs.format, pairs.query_column), corpus


def _read_counts(pieces: list[Piece], read, cpus: float, **read_kwargs) -> dict[int, tuple[int, int]]:
    """{piece number: (good rows, bad rows)} of the pieces, each split into the work folder by `read`."""
    numbers = {piece.key: number for number, piece in enumerate(pieces)}
    counts = {}
    for batch in read_pieces(pieces, cpus, read, numbers=numbers, **read_kwargs).iter_batches(
            batch_size=None, batch_format="pyarrow"):
        counts.update({row["piece"]: (row["rows"], row["errors"]) for row in batch.to_pylist()})
    return counts


def _embed(work: WorkFolder, texts: str, vectors: str, input_type: str, config: MineJobConfig) -> None:
    """Embed work/<texts> into work/<vectors> with the Ray Data embed pipeline."""
    summary = run_embed(EmbedJobConfig(
        input=InputConfig(path=work.uri_of(texts), format="parquet", id_column="key", text_column="text"),
        model=config.model, input_type=input_type, output={"path": work.uri_of(vectors)}, compute=config.compute))
    if summary.unreadable:
        raise JobError(f"the embed job could not read {len(summary.unreadable)} of its inputs in "
                       f"{redact(work.uri_of(texts))}; run the mining job again")


def _search(work: WorkFolder, config: MineJobConfig, offsets: np.ndarray, buckets: int) -> dict[str, int]:
    """Build the index in a task, split the query vectors by bucket, mine every bucket with the search actors;
    returns the summed counts."""
    search = config.search
    index = ray.remote(build_index).options(num_cpus=search.cpus_per_actor).remote(
        work.uri_of("document_vectors"), search)
    files = work.files("query_vectors")
    split = ray.remote(split_query_vectors).options(num_cpus=config.compute.writer_cpus)
    ray.get([split.remote(work, files[start:start + FILES_PER_TASK], start, buckets)
             for start in range(0, len(files), FILES_PER_TASK)])
    mined = ray.data.from_items([{"bucket": bucket} for bucket in range(buckets)], override_num_blocks=buckets)
    mined = mined.map_batches(
        QuerySearcher, batch_size=1, batch_format="pyarrow", num_cpus=search.cpus_per_actor,
        compute=ray.data.ActorPoolStrategy(min_size=1, max_size=search.actors),
        fn_constructor_kwargs={"index": [index], "work": work, "config": config, "offsets": offsets,
                               "buckets": buckets})
    totals = {"pairs": 0, "errors": 0, "short": 0, "filtered": 0}
    for batch in mined.iter_batches(batch_size=None, batch_format="pyarrow"):
        for key in totals:
            totals[key] += sum(batch.column(key).to_pylist())
    return totals


def _clear_output(config: MineJobConfig) -> None:
    """The output directory made, without the part files of a previous run."""
    fs, root = resolve(config.output.path)
    fs.create_dir(root, recursive=True)
    for info in fs.get_file_info(pafs.FileSelector(root)):
        if posixpath.basename(info.path).startswith("part-") and info.type == pafs.FileType.File:
            fs.delete_file(info.path)


def _write_shards(work: WorkFolder, config: MineJobConfig, offsets: np.ndarray, buckets: int) -> list[str]:
    """The negatives' texts attached, then one task per shard; the shards' paths in order."""
    cpus = config.compute.writer_cpus
    attach = ray.remote(attach_negative_texts).options(num_cpus=cpus)
    ray.get([attach.remote(work, bucket, offsets, config.output.rows_per_shard) for bucket in range(buckets)])
    shards = sorted({int(posixpath.basename(posixpath.dirname(path))) for path in work.files("triplets")})
    write = ray.remote(write_shard).options(num_cpus=cpus)
    return ray.get([write.remote(work, shard, config.output) for shard in shards])


def _gather_errors(work: WorkFolder, config: MineJobConfig) -> None:
    """Every step's bad rows into <output>.errors.jsonl, a file at a time."""
    fs, path = resolve(errors_path(config))
    with fs.open_output_stream(path) as out:
        for name in work.files("errors", suffix=".jsonl"):
            with work.fs.open_input_stream(name) as rows:
                out.write(rows.read())


def run_mining(config: MineJobConfig) -> MiningSummary:
    """Mine, write the shards and errors.jsonl; returns the run's counts."""
    started = time.perf_counter()
    resolve_spec(**config.model.model_dump())  # a bad model fails here, before Ray starts
    pair_pieces, corpus_pieces = plan_inputs(config)
    init_ray()
    work = WorkFolder(work_path(config))
    work.clear()  # what a previous run left
    bound = (len(pair_pieces) * InputConfig.model_fields["rows_per_piece"].default
             + len(corpus_pieces) * (config.corpus.rows_per_piece if config.corpus else 0))
    buckets = max(1, math.ceil(bound / BUCKET_ROWS))
    cpus = config.compute.tokenizer_cpus
    pairs = config.pairs
    pair_counts = _read_counts(pair_pieces, split_pairs_piece, cpus, buckets=buckets, work=work, path=pairs.path,
                               query_column=pairs.query_column, document_column=pairs.document_column)
    corpus_counts = _read_counts(corpus_pieces, split_corpus_piece, cpus, buckets=buckets, work=work,
                                 config=config.corpus) if corpus_pieces else {}
    good = np.array([pair_counts.get(number, (0, 0))[0] for number in range(len(pair_pieces))], np.int64)
    offsets = np.concatenate([[0], np.cumsum(good)[:-1]]).astype(np.int64)
    summary = MiningSummary(output=config.output.path,
                            errors=sum(bad for _, bad in [*pair_counts.values(), *corpus_counts.values()]))
    _clear_output(config)
    if good.sum():
        unique = ray.remote(unique_texts).options(num_cpus=cpus)
        summary.errors += sum(counts["errors"] for counts in ray.get([unique.remote(work, bucket)
                                                                      for bucket in range(buckets)]))
        _embed(work, "documents", "document_vectors", "document", config)
        _embed(work, "queries", "query_vectors", "query", config)
        totals = _search(work, config, offsets, buckets)
        summary.pairs, summary.short, summary.filtered = totals["pairs"], totals["short"], totals["filtered"]
        summary.errors += totals["errors"]
        summary.shards = _write_shards(work, config, offsets, buckets)
    _gather_errors(work, config)
    work.clear()
    summary.seconds = time.perf_counter() - started
    return summary

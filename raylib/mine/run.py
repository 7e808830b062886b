"""Hard-negative mining: embed the pairs' queries and the candidate documents (in process, or with the Ray Data
embed pipeline for large sets), find each query's nearest documents (exact chunked matmul, or faiss), keep the
top k that are neither a labelled positive of the query (in any row) nor score above max_positive_ratio x the
positive's score (the positive-aware false-negative filter of NV-Retriever), and write (query, document,
negatives) shards that the contrastive job reads; rows it cannot use go to <output>.errors.jsonl. Candidate
vectors are held in memory, as a flat faiss index holds them."""

import hashlib
import json
import time
from dataclasses import dataclass, field

import numpy as np
import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from raylib.config import ConfigError, MineJobConfig
from raylib.data.pairs import pairs_pieces, read_pairs_piece
from raylib.data.sources import list_input_files, plan_pieces, read_pieces
from raylib.embed.search import top_k
from raylib.embed.texts import embed_texts
from raylib.models.embedder import Embedder
from raylib.models.spec import resolve_spec
from raylib.runtime import init_ray
from raylib.storage import redact, resolve


def text_id(text: str) -> str:
    return hashlib.sha1(text.encode()).hexdigest()


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


def read_pairs(config: MineJobConfig) -> tuple[list[dict], list[dict]]:
    """(good rows {query, document}, bad rows {where, error}) of the pairs files, read by the piece reader."""
    pairs = config.pairs
    rows = read_pieces(pairs_pieces(pairs.path, pairs.format, pairs.query_column), config.compute.tokenizer_cpus,
                       read_pairs_piece, path=pairs.path, query_column=pairs.query_column,
                       document_column=pairs.document_column)
    good, bad = [], []
    for batch in rows.iter_batches(batch_format="pyarrow"):
        for row in batch.to_pylist():
            if row["_error"] is None:
                good.append({"query": row["query"], "document": row["document"]})
            else:
                bad.append({"where": row["_where"], "error": row["_error"]})
    return good, bad


def read_corpus(config: MineJobConfig) -> tuple[list[str], list[dict]]:
    """(texts, bad rows {where, error}) of the extra candidate documents in config.corpus."""
    if config.corpus is None:
        return [], []
    pieces = plan_pieces(*list_input_files(config.corpus, "corpus"), config.corpus, "corpus")
    rows = read_pieces(pieces, config.compute.tokenizer_cpus, config=config.corpus).select_columns(
        ["text", "_error", "_where"])
    texts, bad = [], []
    for batch in rows.iter_batches(batch_format="pyarrow"):
        for row in batch.to_pylist():
            if row["_error"] is None:
                texts.append(row["text"])
            else:
                bad.append({"where": row["_where"], "error": row["_error"]})
    return texts, bad


def choose_negatives(scores: np.ndarray, candidates: np.ndarray, positives: set[int], positive_score: float, k: int,
                     max_positive_ratio: float) -> tuple[list[int], int]:
    """(up to k candidate indices best first, how many were dropped as too close to the positive): never one of
    the query's labelled positives, nothing scoring above max_positive_ratio x positive_score."""
    chosen, dropped = [], 0
    for score, candidate in zip(scores, candidates):
        if candidate in positives or candidate < 0:
            continue
        if score > max_positive_ratio * positive_score:
            dropped += 1
            continue
        chosen.append(int(candidate))
        if len(chosen) == k:
            break
    return chosen, dropped


def write_shards(rows: list[dict], config: MineJobConfig) -> list[str]:
    """The triplets as shards of rows_per_shard rows: part-00000.<format>, ..."""
    fs, root = resolve(config.output.path)
    fs.create_dir(root, recursive=True)
    paths = []
    for number, start in enumerate(range(0, len(rows), config.output.rows_per_shard)):
        part = rows[start:start + config.output.rows_per_shard]
        path = f"{root}/part-{number:05d}.{config.output.format}"
        if config.output.format == "parquet":
            pq.write_table(pa.Table.from_pylist(part), path, filesystem=fs)
        else:
            with fs.open_output_stream(path) as out:
                out.write("".join(json.dumps(row) + "\n" for row in part).encode())
        paths.append(path)
    return paths


def errors_path(config: MineJobConfig) -> str:
    """Beside the output directory (not in it, where training would read it as pairs)."""
    return config.output.path.rstrip("/") + ".errors.jsonl"


def write_errors(bad: list[dict], config: MineJobConfig) -> None:
    fs, path = resolve(errors_path(config))
    with fs.open_output_stream(path) as out:
        out.write("".join(json.dumps(row) + "\n" for row in bad).encode())


def check_paths(config: MineJobConfig) -> None:
    """The pairs exist and the corpus's files and columns are readable, or ConfigError naming the key."""
    fs, path = resolve(config.pairs.path)
    if fs.get_file_info(path).type == pafs.FileType.NotFound:
        raise ConfigError(f"pairs.path: {config.pairs.path} does not exist; point it at parquet/jsonl files")
    if config.corpus is not None:
        list_input_files(config.corpus, "corpus")


def run_mining(config: MineJobConfig) -> MiningSummary:
    """Mine, write the shards and errors.jsonl; returns the run's counts."""
    started = time.perf_counter()
    spec = resolve_spec(**config.model.model_dump())
    check_paths(config)
    init_ray()
    pairs, bad = read_pairs(config)
    corpus, bad_corpus = read_corpus(config)
    documents = {text_id(text): text for text in [row["document"] for row in pairs] + corpus}
    embedder = Embedder(spec)
    document_vectors = embed_texts(config.model, embedder, documents, "document", config.pipeline_above,
                                   config.compute)
    queries = {str(index): row["query"] for index, row in enumerate(pairs)}
    query_vectors = embed_texts(config.model, embedder, queries, "query", config.pipeline_above, config.compute)
    scores, candidates = top_k(query_vectors, document_vectors, config.search_depth, config.search)
    row_of = {doc_id: row for row, doc_id in enumerate(documents)}
    texts = list(documents.values())
    positives_of: dict[str, set[int]] = {}  # every document labelled a positive of the query, in any row
    for pair in pairs:
        positives_of.setdefault(pair["query"], set()).add(row_of[text_id(pair["document"])])
    summary = MiningSummary(pairs=len(pairs), errors=len(bad) + len(bad_corpus), output=config.output.path)
    triplets = []
    for index, pair in enumerate(pairs):
        positive = row_of[text_id(pair["document"])]
        positive_score = float(query_vectors[index] @ document_vectors[positive])
        chosen, dropped = choose_negatives(scores[index], candidates[index], positives_of[pair["query"]],
                                           positive_score, config.negatives, config.max_positive_ratio)
        summary.filtered += dropped
        summary.short += len(chosen) < config.negatives
        triplets.append({**pair, "negatives": [texts[row] for row in chosen]})
    summary.shards = write_shards(triplets, config)
    write_errors(bad + bad_corpus, config)
    summary.seconds = time.perf_counter() - started
    return summary

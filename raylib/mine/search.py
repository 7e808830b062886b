"""The search step: Ray Data actors, each holding a copy of the index (index.py), mine one query bucket of the
work folder (work.py) per call. Every pair of a query sees the query's nearest documents without any of the
query's labelled positives (all of its rows are in the bucket) and without candidates that score above
max_positive_ratio x the pair's own positive (NV-Retriever's positive-aware filter); the best `negatives` left are
its negatives. A pair whose query or positive has no vector is reported, not dropped."""

import math

import faiss
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import ray

from raylib.config import MineJobConfig
from raylib.mine.inputs import PAIRS
from raylib.mine.work import WorkFolder, float_vectors, rows_of

SEARCH_ROWS = 4096  # queries searched at a time
TRIPLETS = pa.schema([("order", pa.int64()), ("query", pa.string()), ("document", pa.string())])
NEGATIVE_KEYS = pa.schema([("order", pa.int64()), ("rank", pa.int32()), ("key", pa.int64())])
COUNTS = pa.schema([("bucket", pa.int64()), ("pairs", pa.int64()), ("errors", pa.int64()), ("short", pa.int64()),
                    ("filtered", pa.int64())])


def choose_negatives(scores: np.ndarray, candidates: np.ndarray, positives: set[int], positive_score: float, k: int,
                     max_positive_ratio: float) -> tuple[list[int], int]:
    """(up to k candidates best first, how many were dropped as too close to the positive): never one of the
    query's labelled positives, nothing scoring above max_positive_ratio x positive_score."""
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


def split_query_vectors(work: WorkFolder, files: list[str], number: int, buckets: int) -> int:
    """Some of the embed job's query vector files again, split by query bucket; returns their rows."""
    table = pa.concat_tables([pq.read_table(file, filesystem=work.fs) for file in files])
    work.write_buckets(table, table.column("key").to_numpy() % buckets, "query_vectors_by_bucket", f"{number:06d}")
    return len(table)


class QuerySearcher:
    """A search actor: `index` is [the object-store reference of the serialised index]; offsets[piece number] is
    the number of good pairs before the piece (output rows, hence shards)."""

    def __init__(self, index: list, work: WorkFolder, config: MineJobConfig, offsets: np.ndarray, buckets: int):
        faiss.omp_set_num_threads(max(1, math.ceil(config.search.cpus_per_actor)))
        self.index = faiss.deserialize_index(ray.get(index[0]))
        if hasattr(self.index, "nprobe"):
            self.index.nprobe = config.search.nprobe
        self.work, self.config, self.offsets, self.buckets = work, config, offsets, buckets

    def __call__(self, batch: pa.Table) -> pa.Table:
        return pa.Table.from_pylist([self.mine(bucket) for bucket in batch.column("bucket").to_pylist()],
                                    schema=COUNTS)

    def _query_vectors(self, name: str, queries: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(vectors of `queries`, whether each has one) from query_vectors_by_bucket/<name>."""
        table = self.work.read(None, "query_vectors_by_bucket", name)
        if table is None:
            return np.zeros((len(queries), 1), np.float32), np.zeros(len(queries), bool)
        keys = table.column("key").to_numpy()
        by_key = np.argsort(keys)
        at = by_key[np.searchsorted(keys, queries, sorter=by_key).clip(max=len(keys) - 1)]
        return float_vectors(table)[at], keys[at] == queries

    def _positive_scores(self, document_keys: np.ndarray, query_vectors: np.ndarray) -> np.ndarray:
        """Each pair's query . positive (the positive's vector from the index), NaN where the index has none."""
        scores = np.full(len(document_keys), np.nan, np.float32)
        for row, (key, vector) in enumerate(zip(document_keys.tolist(), query_vectors)):
            try:
                scores[row] = self.index.reconstruct(key) @ vector
            except RuntimeError:  # not in the index
                pass
        return scores

    def mine(self, bucket: int) -> dict:
        """Mine the pairs of one query bucket: triplets/ and negative_keys/ by shard and document bucket,
        errors/search-<bucket>.jsonl; returns the bucket's counts."""
        name, config = f"{bucket:05d}", self.config
        pairs = self.work.read(PAIRS, "pairs", name)
        document_keys = pairs.column("document_key").to_numpy()
        queries, query_of_row = np.unique(pairs.column("query_key").to_numpy(), return_inverse=True)
        vectors, has_vector = self._query_vectors(name, queries)
        positive_scores = np.full(len(pairs), np.nan, np.float32)
        rows = np.flatnonzero(has_vector[query_of_row])
        positive_scores[rows] = self._positive_scores(document_keys[rows], vectors[query_of_row[rows]])
        by_query = np.argsort(query_of_row, kind="stable")
        starts = np.searchsorted(query_of_row[by_query], np.arange(len(queries) + 1))
        orders = pairs.column("order").to_numpy()
        mined, negatives, counts = [], [], {"bucket": bucket, "short": 0, "filtered": 0}
        for first in range(0, len(queries), SEARCH_ROWS):
            chunk = np.arange(first, min(first + SEARCH_ROWS, len(queries)))
            chunk = chunk[has_vector[chunk]]
            if not len(chunk):
                continue
            scores, candidates = self.index.search(np.ascontiguousarray(vectors[chunk]), config.search_depth)
            for query, query_scores, query_candidates in zip(chunk, scores, candidates):
                query_rows = by_query[starts[query]:starts[query + 1]]
                positives = set(document_keys[query_rows].tolist())  # every labelled positive of the query
                for row in query_rows[~np.isnan(positive_scores[query_rows])]:
                    chosen, dropped = choose_negatives(query_scores, query_candidates, positives,
                                                       positive_scores[row], config.negatives,
                                                       config.max_positive_ratio)
                    mined.append(row)
                    negatives.extend((orders[row], rank, key) for rank, key in enumerate(chosen))
                    counts["filtered"] += dropped
                    counts["short"] += len(chosen) < config.negatives
        self._write(name, pairs, np.sort(np.array(mined, np.int64)), negatives)
        errors = [{"where": where, "error": "the query has no vector" if not has_vector[query] else
                   "the document has no vector"}
                  for where, query, score in zip(pairs.column("where").to_pylist(), query_of_row, positive_scores)
                  if np.isnan(score)]
        self.work.write_errors(errors, f"search-{name}")
        return {**counts, "pairs": len(mined), "errors": len(errors)}

    def _write(self, name: str, pairs: pa.Table, mined: np.ndarray, negatives: list[tuple]) -> None:
        """The mined rows to triplets/<shard>/<name>, their negatives' keys to negative_keys/<document bucket>/<name>."""
        triplets = pa.table([pairs.column(column).take(mined) for column in TRIPLETS.names], schema=TRIPLETS)
        shards = rows_of(triplets.column("order").to_numpy(), self.offsets) // self.config.output.rows_per_shard
        self.work.write_buckets(triplets, shards, "triplets", name)
        keys = pa.Table.from_arrays([pa.array(column, type) for column, type in
                                     zip(zip(*negatives) if negatives else ([], [], []), NEGATIVE_KEYS.types)],
                                    schema=NEGATIVE_KEYS)
        self.work.write_buckets(keys, keys.column("key").to_numpy() % self.buckets, "negative_keys", name)

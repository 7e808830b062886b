"""Each id once in the output. After the pieces are committed, a map-reduce over their ids finds the ids written
more than once: Ray tasks hash the ids of a few pieces each and split the hashes into partitions, one task per
partition names the rows whose hash it saw twice (a job of at most one task's pieces does both in the driver).
The driver reads only those rows' ids, keeps the first row of each id by input order (the plan's piece order,
then row) and removes the later ones from their pieces, listed in _errors/<key>.duplicates.jsonl. A marker holds
the committed pieces last checked: a run that committed nothing checks nothing."""

from __future__ import annotations

import hashlib
import json

import numpy as np
import pyarrow as pa
import ray

from raylib.embed.store import OutputStore

ROWS_PER_PARTITION = 20_000_000  # hashes one reducing task sorts (16 bytes each)
PIECES_PER_TASK = 64
CHECKED = "_unique.json"


def _hashes(ids: list) -> np.ndarray:
    return np.array([int.from_bytes(hashlib.blake2b(repr(value).encode(), digest_size=8).digest(), "little",
                                    signed=True) for value in ids], np.int64)


def _hash_pieces(output_uri: str, id_column: str, ranked: list[tuple[int, str]], partitions: int):
    """(hash, order) pairs of the pieces' ids, one int64 array of shape (n, 2) per partition of the hashes;
    order = piece rank << 32 | row."""
    store = OutputStore(output_uri)
    hashes, orders = [], []
    for rank, key in ranked:
        vectors = store.read_vectors(key, [id_column])
        ids = [] if vectors is None else vectors.column(id_column).to_pylist()
        hashes.append(_hashes(ids))
        orders.append((rank << 32) | np.arange(len(ids), dtype=np.int64))
    pairs = np.stack([np.concatenate(hashes), np.concatenate(orders)], axis=1)
    parts = [pairs[pairs[:, 0] % partitions == part] for part in range(partitions)]
    return parts if partitions > 1 else parts[0]


def _repeated(*parts: np.ndarray) -> np.ndarray:
    """Orders of the rows whose hash appears more than once in the partition."""
    pairs = np.concatenate(parts)
    pairs = pairs[np.argsort(pairs[:, 0], kind="stable")]
    same = pairs[1:, 0] == pairs[:-1, 0]
    repeated = np.zeros(len(pairs), bool)
    repeated[1:] |= same
    repeated[:-1] |= same
    return pairs[repeated, 1]


def _candidate_orders(store: OutputStore, id_column: str, keys: list[str], rows_bound: int, cpus: float) -> np.ndarray:
    partitions = max(1, -(-rows_bound // ROWS_PER_PARTITION))
    ranked = list(enumerate(keys))
    if partitions == 1 and len(keys) <= PIECES_PER_TASK:  # one map task then one reduce task: no parallelism to gain
        return _repeated(_hash_pieces(store.uri, id_column, ranked, 1))
    hash_task = ray.remote(_hash_pieces).options(num_cpus=cpus, num_returns=partitions)
    mapped = [hash_task.remote(store.uri, id_column, ranked[start:start + PIECES_PER_TASK], partitions)
              for start in range(0, len(ranked), PIECES_PER_TASK)]
    mapped = [refs if partitions > 1 else [refs] for refs in mapped]
    reduce_task = ray.remote(_repeated).options(num_cpus=cpus)
    return np.concatenate(ray.get([reduce_task.remote(*(refs[part] for refs in mapped))
                                   for part in range(partitions)]))


def remove_duplicates(store: OutputStore, id_column: str, keys: list[str], rows_bound: int,
                      cpus: float) -> list[dict]:
    """Remove every row of the committed pieces `keys` (in input order) whose id an earlier row holds; returns
    the removed rows' reports {id, where, error}."""
    checked = hashlib.sha256(json.dumps(sorted(keys)).encode()).hexdigest()
    if not keys or store.read_marker(CHECKED) == checked:
        return []
    orders = np.sort(_candidate_orders(store, id_column, keys, rows_bound, cpus))
    rows: dict[str, list[tuple[int, object]]] = {}
    for rank in np.unique(orders >> 32):
        key = keys[rank]
        ids = store.read_vectors(key, [id_column]).column(id_column)
        wanted = (orders[(orders >> 32) == rank] & 0xFFFFFFFF).tolist()
        rows[key] = list(zip(wanted, ids.take(pa.array(wanted)).to_pylist()))
    first: dict[str, str] = {}
    removed: dict[str, dict[int, dict]] = {}  # key: {row: report}
    for key in keys:  # input order
        for row, value in rows.get(key, []):
            where = f"{key} row {row}"
            if repr(value) in first:
                removed.setdefault(key, {})[row] = {
                    "id": value, "where": where, "error": f"duplicate id; kept the first, {first[repr(value)]}"}
            else:
                first[repr(value)] = where
    for key, reports in removed.items():
        store.drop_rows(key, list(reports), list(reports.values()))
    store.write_marker(CHECKED, checked)
    return [report for reports in removed.values() for report in reports.values()]


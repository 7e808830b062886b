"""The last steps of mining, in tasks: one per document bucket gives the chosen negatives their texts (a join of
negative_keys/ with documents/), then one per output shard gathers its rows and their negatives in input order and
writes part-<shard>.<format> (at most rows_per_shard rows, query, document, negatives)."""

import json
import posixpath

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from raylib.config import MineOutputConfig
from raylib.mine.inputs import TEXTS
from raylib.mine.search import NEGATIVE_KEYS, TRIPLETS
from raylib.mine.work import WorkFolder, rows_of
from raylib.storage import resolve

NEGATIVE_TEXTS = pa.schema([("order", pa.int64()), ("rank", pa.int32()), ("text", pa.string())])


def attach_negative_texts(work: WorkFolder, bucket: int, offsets: np.ndarray, rows_per_shard: int) -> int:
    """The texts of the negatives whose keys are in document bucket `bucket`, to negative_texts/<shard>/; returns
    how many."""
    name = f"{bucket:05d}"
    keys = work.read(NEGATIVE_KEYS, "negative_keys", name)
    texts = keys.join(work.read(TEXTS, "documents", f"{name}.parquet"), "key", join_type="inner").select(NEGATIVE_TEXTS.names)
    shards = rows_of(texts.column("order").to_numpy(), offsets) // rows_per_shard
    work.write_buckets(texts.cast(NEGATIVE_TEXTS), shards, "negative_texts", name)
    return len(texts)


def write_shard(work: WorkFolder, shard: int, output: MineOutputConfig) -> str:
    """part-<shard>.<format> of the shard's mined rows in input order, with their negatives best first; its path."""
    name = f"{shard:05d}"
    triplets = work.read(TRIPLETS, "triplets", name).sort_by("order")
    negatives = work.read(NEGATIVE_TEXTS, "negative_texts", name).sort_by([("order", "ascending"),
                                                                          ("rank", "ascending")])
    ends = np.searchsorted(negatives.column("order").to_numpy(), triplets.column("order").to_numpy(), side="right")
    lists = pa.ListArray.from_arrays(np.concatenate([[0], ends]).astype(np.int32), negatives.column("text").combine_chunks())
    table = pa.table({"query": triplets.column("query"), "document": triplets.column("document"), "negatives": lists})
    fs, root = resolve(output.path)
    path = posixpath.join(root, f"part-{name}.{output.format}")
    if output.format == "parquet":
        pq.write_table(table, path, filesystem=fs)
    else:
        with fs.open_output_stream(path) as out:
            out.write("".join(json.dumps(row) + "\n" for row in table.to_pylist()).encode())
    return path

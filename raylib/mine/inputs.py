"""The mining job's inputs into the work folder (work.py): the piece reader's tasks split each piece of the pairs
and of the corpus into buckets by text key, and one task per bucket keeps each text once. A key that two different
texts share (63 bits: rare) is unusable: its texts are reported and left out, and so are the pairs that use it."""

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from raylib.config import InputConfig
from raylib.data.pairs import read_pairs_piece
from raylib.data.sources import Piece, read_piece
from raylib.mine.work import ROW_BITS, WorkFolder, text_keys

PAIRS = pa.schema([("order", pa.int64()), ("query", pa.string()), ("document", pa.string()),
                   ("query_key", pa.int64()), ("document_key", pa.int64()), ("where", pa.string())])
TEXTS = pa.schema([("key", pa.int64()), ("text", pa.string())])
COUNTS = pa.schema([("piece", pa.int64()), ("rows", pa.int64()), ("errors", pa.int64())])


def _bad_rows(table: pa.Table) -> tuple[pa.Table, list[dict]]:
    """(good rows, bad rows {where, error}) of a piece read with its row checks."""
    good = pc.is_null(table.column("_error"))
    bad = table.filter(pc.invert(good)).select(["_where", "_error"]).to_pylist()
    return table.filter(good), [{"where": row["_where"], "error": row["_error"]} for row in bad]


def split_pairs_piece(piece: Piece, numbers: dict[str, int], buckets: int, work: WorkFolder, path: str,
                      query_column: str, document_column: str) -> pa.Table:
    """Read a piece of pairs; its good pairs go to pairs/ by query key and their documents to document_rows/ by
    document key, its bad rows to errors/; returns its counts (piece number, good rows, bad rows)."""
    number = numbers[piece.key]
    good, bad = _bad_rows(read_pairs_piece(piece, path, query_column, document_column))
    query_keys, document_keys = text_keys(good.column("query").to_pylist()), text_keys(good.column("document").to_pylist())
    pairs = pa.table([(number << ROW_BITS) | np.arange(len(good), dtype=np.int64), good.column("query"),
                      good.column("document"), query_keys, document_keys, good.column("_where")], schema=PAIRS)
    work.write_buckets(pairs, query_keys % buckets, "pairs", f"{number:06d}")
    documents = pa.table([document_keys, good.column("document")], schema=TEXTS)
    work.write_buckets(documents, document_keys % buckets, "document_rows", f"pairs-{number:06d}")
    work.write_errors(bad, f"pairs-{number:06d}")
    return pa.table([[number], [len(good)], [len(bad)]], schema=COUNTS)


def split_corpus_piece(piece: Piece, numbers: dict[str, int], buckets: int, work: WorkFolder,
                       config: InputConfig) -> pa.Table:
    """Read a piece of the corpus; its good texts go to document_rows/ by key, its bad rows to errors/."""
    number = numbers[piece.key]
    good, bad = _bad_rows(read_piece(piece, config))
    keys = text_keys(good.column("text").to_pylist())
    work.write_buckets(pa.table([keys, good.column("text")], schema=TEXTS), keys % buckets, "document_rows",
                       f"corpus-{number:06d}")
    work.write_errors(bad, f"corpus-{number:06d}")
    return pa.table([[number], [len(good)], [len(bad)]], schema=COUNTS)


def unique_texts(work: WorkFolder, bucket: int) -> dict[str, int]:
    """Each document and query of a bucket once: documents/<bucket>.parquet and queries/<bucket>.parquet;
    returns how many of each and the bad rows (texts whose key another text holds)."""
    name = f"{bucket:05d}"
    pairs = work.read(PAIRS, "pairs", name)
    queries = pa.table([pairs.column("query_key"), pairs.column("query")], schema=TEXTS)
    counts = {"errors": 0}
    for kind, rows in (("documents", work.read(TEXTS, "document_rows", name)), ("queries", queries)):
        distinct = rows.group_by(["key", "text"], use_threads=False).aggregate([])
        shared = distinct.group_by("key").aggregate([("text", "count")]).filter(pc.field("text_count") > 1)
        clash = pc.is_in(distinct.column("key"), shared.column("key"))
        errors = [{"where": f"{kind} key {row['key']}",
                   "error": f"another text has the same 63-bit key; left out (text starts {row['text'][:80]!r})"}
                  for row in distinct.filter(clash).to_pylist()]
        kept = distinct.filter(pc.invert(clash)).sort_by("key")
        if len(kept):
            work.write(kept, kind, f"{name}.parquet")
        work.write_errors(errors, f"{kind}-{name}")
        counts[kind], counts["errors"] = len(kept), counts["errors"] + len(errors)
    return counts

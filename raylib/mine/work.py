"""The mining job's work folder, <output>.work beside the output (training reads every file in the output, so
nothing else goes there). A run clears it first and removes it once the shards are written. Every text has a
63-bit key (`text_keys`) and every step's files are split into buckets by key (or into output shards by row), so
each task holds one bucket or one shard, never the whole set:

    pairs/<query bucket>/<piece>.parquet              the good pairs: order, query, document, query_key,
                                                      document_key, where (order: piece number << 32 | row)
    document_rows/<document bucket>/<name>.parquet    candidate documents as read (key, text), repeats included
    documents/<document bucket>.parquet               each candidate once (key, text): the embed job's input and
                                                      the negatives' text lookup
    queries/<query bucket>.parquet                    each query once (key, text)
    document_vectors/, query_vectors/                 the embed job's outputs (key, embedding)
    query_vectors_by_bucket/<query bucket>/<n>.parquet  the query vectors again, split by bucket for the search
    triplets/<shard>/<query bucket>.parquet           order, query, document of each mined row
    negative_keys/<document bucket>/<query bucket>.parquet  order, rank, key of each chosen negative
    negative_texts/<shard>/<document bucket>.parquet  order, rank, text of each chosen negative
    errors/<step>-<number>.jsonl                      bad rows {where, error}, gathered into <output>.errors.jsonl
"""

import hashlib
import json
import posixpath

import numpy as np
import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from raylib.storage import resolve

ROW_BITS = 32  # an order is piece number << ROW_BITS | row within the piece's good rows


def join_uri(uri: str, *parts: str) -> str:
    """`uri`/parts, keeping a URI's ?query (endpoint, region) at the end."""
    base, mark, query = uri.partition("?")
    return "/".join([base.rstrip("/"), *parts]) + mark + query


def with_suffix(uri: str, suffix: str) -> str:
    """`uri` + suffix, keeping a URI's ?query at the end: the errors file and work folder beside the output."""
    base, mark, query = uri.partition("?")
    return base.rstrip("/") + suffix + mark + query


def text_keys(texts: list[str]) -> np.ndarray:
    """int64 keys of the texts (blake2b, 63 bits: never negative, as faiss's -1 means no result)."""
    return np.array([int.from_bytes(hashlib.blake2b(text.encode(), digest_size=8).digest(), "little") >> 1
                     for text in texts], np.int64)


def float_vectors(table: pa.Table) -> np.ndarray:
    """The `embedding` column of the embed job's float32 output (the mining job asks for float32) as (rows, dims)."""
    column = table.column("embedding").combine_chunks()
    return column.flatten().to_numpy().reshape(len(table), column.type.list_size)


def rows_of(orders: np.ndarray, offsets: np.ndarray) -> np.ndarray:
    """Output row numbers of pair orders: the good pairs before the piece (offsets) + the row within it."""
    return offsets[orders >> ROW_BITS] + (orders & ((1 << ROW_BITS) - 1))


class WorkFolder:
    def __init__(self, uri: str):
        self.uri = uri
        self.fs, self.root = resolve(uri)

    def uri_of(self, *parts: str) -> str:
        """A folder's URI, for jobs that take one (the embed job)."""
        return join_uri(self.uri, *parts)

    def path(self, *parts: str) -> str:
        return posixpath.join(self.root, *parts)

    def clear(self) -> None:
        if self.fs.get_file_info(self.root).type != pafs.FileType.NotFound:
            self.fs.delete_dir(self.root)

    def write(self, table: pa.Table, *parts: str) -> None:
        """One parquet file (written whole: a retried task replaces it)."""
        path = self.path(*parts)
        self.fs.create_dir(posixpath.dirname(path), recursive=True)
        pq.write_table(table, path, filesystem=self.fs)

    def write_buckets(self, table: pa.Table, buckets: np.ndarray, folder: str, name: str) -> None:
        """The rows of each bucket to <folder>/<bucket>/<name>.parquet (rows keep their order)."""
        for bucket in np.unique(buckets):
            self.write(table.filter(pa.array(buckets == bucket)), folder, f"{bucket:05d}", f"{name}.parquet")

    def files(self, *parts: str, suffix: str = ".parquet") -> list[str]:
        """The files under a folder, sorted (none when it does not exist)."""
        folder = self.path(*parts)
        infos = self.fs.get_file_info(pafs.FileSelector(folder, allow_not_found=True, recursive=True))
        return sorted(info.path for info in infos if info.type == pafs.FileType.File and info.path.endswith(suffix)
                      and not any(part.startswith(("_", ".")) for part in posixpath.relpath(info.path, folder).split("/")))

    def read(self, schema: pa.Schema | None, *parts: str) -> pa.Table | None:
        """Every parquet file under a folder (or the one file) as one table of `schema`: empty when there are
        none (None without a schema)."""
        path = self.path(*parts)
        files = [path] if path.endswith(".parquet") and self.fs.get_file_info(path).is_file else self.files(*parts)
        tables = [pq.read_table(file, filesystem=self.fs, schema=schema) for file in files]
        if not tables:
            return None if schema is None else schema.empty_table()
        return pa.concat_tables(tables)

    def write_errors(self, rows: list[dict], name: str) -> None:
        """Bad rows {where, error} of one step's piece or bucket: errors/<name>.jsonl."""
        if rows:
            path = self.path("errors", f"{name}.jsonl")
            self.fs.create_dir(posixpath.dirname(path), recursive=True)
            with self.fs.open_output_stream(path) as out:
                out.write("".join(json.dumps(row) + "\n" for row in rows).encode())

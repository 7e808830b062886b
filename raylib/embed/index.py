"""The embed job's vectors as a LanceDB table with an ANN index, and that table opened for search.

    <index.path>/<index.table>.lance   <id column>, embedding (fixed-size list of float32: int8 and binary outputs as
                                       the floats they stand for, vectors.read_floats), then index.columns
    schema metadata RECORD_KEY         JSON: the resolved model settings and model files' fingerprint the vectors were
                                       made with, input_type, id and text columns, and `source`: a hash of the
                                       committed pieces (and settings) the table holds
    embedding field metadata RECORD_KEY  JSON: the ANN index built on it ("exact": none) and the search defaults

The table is written from the committed pieces, one piece at a time (its vectors, and the chosen columns re-read
from the piece's input rows and matched by id, first row of an id wins as in the output), streamed into one Lance
commit that overwrites the whole table; the ANN index is the next commit, and its settings a third. A kill during
any of them leaves the version before it: a table whose `source` is not this output's is written again, a table
without the configured index gets it, so a re-run ends with the same table, each id once (the pieces hold each id
once). Older versions and the files of killed writes are removed at the end: one embed output writes a table.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
import warnings
from dataclasses import dataclass
from datetime import timedelta
from itertools import chain
from typing import TYPE_CHECKING

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from raylib.config import ConfigError, EmbedJobConfig, IndexConfig, JobError
from raylib.data.sources import UnreadableInput, as_list, first_file_columns, read_rows
from raylib.embed.store import OutputStore
from raylib.embed.vectors import read_floats
from raylib.models.spec import ModelSpec, model_fingerprint, resolve_spec
from raylib.storage import bucket_uri, redact

if TYPE_CHECKING:
    from raylib.models.embedder import Embedder

RECORD_KEY = "raylib.index"
VECTOR = "embedding"
DEFAULT_TABLE = "documents"
EXACT = "exact"


def lance_location(uri: str) -> tuple[str, dict[str, str]]:
    """(URI, storage options) for LanceDB from a URI as the rest of the project writes it (storage.bucket_uri)."""
    parsed = bucket_uri(uri)
    if parsed is None:
        return uri, {}
    options = {}
    if parsed.access_key:
        options.update(aws_access_key_id=parsed.access_key, aws_secret_access_key=parsed.secret_key or "")
    if parsed.endpoint:
        options.update(aws_endpoint=parsed.endpoint, allow_http=str(parsed.endpoint.startswith("http://")).lower())
    if parsed.region:
        options["aws_region"] = parsed.region
    return parsed.location, options


def connect(uri: str):
    """The LanceDB database at `uri`. LanceDB is imported here, not with the module: once loaded it warns at every
    fork, and the job forks while Ray starts."""
    os.environ.setdefault("LANCEDB_LOG", "error")  # its own warnings ("will be created") stay off the terminal
    import lancedb

    location, options = lance_location(uri)
    return lancedb.connect(location, storage_options=options or None)


def _open(db, name: str):
    """The table, or None where there is none (also a first write killed before its commit)."""
    try:
        return db.open_table(name)
    except (ValueError, FileNotFoundError):
        return None


def _record(table, field: str | None = None) -> dict:
    """The JSON that RECORD_KEY holds in the table's (or a field's) schema metadata; {} where there is none."""
    schema = table.schema
    metadata = (schema.field(field).metadata if field else schema.metadata) or {}
    return json.loads(metadata.get(RECORD_KEY.encode(), b"{}"))


def check_index(config: EmbedJobConfig, spec: ModelSpec, fs, files) -> None:
    """Before any work: the index section fits the model and the input (ConfigError naming the key)."""
    index = config.index
    if index is None:
        return
    if index.num_sub_vectors and spec.dimensions % index.num_sub_vectors:
        raise ConfigError(f"index.num_sub_vectors: {index.num_sub_vectors} does not divide the model's "
                          f"{spec.dimensions} dimensions; use a divisor such as {spec.dimensions // 8} or null")
    found = first_file_columns(fs, files)
    missing = [name for name in index.columns if name not in found]
    if missing:
        raise ConfigError(f"index.columns: {missing} not in {files[0].path} (it has {found}); list input columns")


def model_record(config: EmbedJobConfig, spec: ModelSpec) -> dict:
    """How the vectors were made, as resolve_spec's arguments (queries are embedded with these) and the model
    files' fingerprint; credentials in the model path are left out."""
    return {
        "model": {"path": redact(config.model.path), "pooling": spec.pooling, "include_prompt": spec.include_prompt,
                  "normalize": spec.normalize, "max_length": spec.max_length, "dimensions": spec.dimensions,
                  "query_prefix": spec.prefixes["query"], "document_prefix": spec.prefixes["document"],
                  "trust_remote_code": spec.trust_remote_code, "precision": config.model.precision},
        "model_files": model_fingerprint(spec),
        "input_type": config.input_type,
    }


def _input_columns(piece, config: EmbedJobConfig, ids: pa.ChunkedArray) -> dict[str, pa.Array]:
    """index.columns of the piece's input rows that hold `ids` (the first row of an id, as the output keeps it);
    parquet columns keep their type, jsonl values are strings (others as JSON text)."""
    id_column, names = config.input.id_column, config.index.columns
    try:
        values, _, _ = read_rows(piece, config.input.path, [id_column, *names])
    except UnreadableInput as exc:
        raise JobError(f"index: {exc}; run the job again") from None
    typed = piece.format == "parquet"
    first: dict = {}
    for row, value in enumerate(as_list(values[id_column])):
        first.setdefault(value if typed or value is None else str(value), row)
    rows = pa.array([first.get(value) for value in ids.to_pylist()], pa.int64())
    if typed:
        return {name: values[name].take(rows) for name in names}
    taken = {name: [None if row is None else values[name][row] for row in rows.to_pylist()] for name in names}
    return {name: pa.array([value if value is None or isinstance(value, str) else json.dumps(value)
                            for value in column], pa.string()) for name, column in taken.items()}


def _piece_table(store: OutputStore, piece, config: EmbedJobConfig) -> pa.Table | None:
    """A committed piece's rows as the index table holds them (None for a piece without rows)."""
    vectors = store.read_vectors(piece.key)
    if vectors is None or not len(vectors):
        return None
    ids = vectors.column(config.input.id_column)
    floats = read_floats(vectors)
    columns = {config.input.id_column: ids,
               VECTOR: pa.FixedSizeListArray.from_arrays(floats.reshape(-1), floats.shape[1])}
    if config.index.columns:
        columns.update(_input_columns(piece, config, ids))
    return pa.table(columns)


def _rows(store: OutputStore, pieces: list, config: EmbedJobConfig, dimensions: int,
          metadata: dict) -> pa.RecordBatchReader:
    """The committed pieces' rows as one stream (one piece in memory at a time), in the first piece's schema."""
    tables = filter(None, (_piece_table(store, piece, config) for piece in pieces))
    first = next(tables, None)
    schema = first.schema if first is not None else pa.schema(
        [(config.input.id_column, pa.string()), (VECTOR, pa.list_(pa.float32(), dimensions))]
        + [(name, pa.string()) for name in config.index.columns])
    schema = schema.with_metadata({RECORD_KEY: json.dumps(metadata)})
    batches = (batch for table in chain([first] if first is not None else [], tables)
               for batch in table.cast(schema).to_batches())
    return pa.RecordBatchReader.from_batches(schema, batches)


def ann_settings(index: IndexConfig, rows: int) -> dict:
    """The index the table gets at `rows` rows (kind "exact" below index.exact_below) and the search defaults."""
    if rows < index.exact_below:
        return {"kind": EXACT}
    return {"kind": index.kind, "num_partitions": index.num_partitions, "num_sub_vectors": index.num_sub_vectors,
            "nprobes": index.nprobes, "refine_factor": index.refine_factor}


def build_ann_index(table, settings: dict) -> None:
    """Build the ANN index of `settings` (ann_settings) on the vectors by inner product, replacing any, and
    record the settings on the vector field; "exact" drops any index instead."""
    for existing in table.list_indices():
        if VECTOR in existing.columns and settings["kind"] == EXACT:
            table.drop_index(existing.name)
    if settings["kind"] != EXACT:
        from lancedb.index import IvfHnswSq, IvfPq

        partitions = settings["num_partitions"]
        config = (IvfPq(distance_type="dot", num_partitions=partitions, num_sub_vectors=settings["num_sub_vectors"])
                  if settings["kind"] == "ivf_pq" else IvfHnswSq(distance_type="dot", num_partitions=partitions))
        table.create_index(VECTOR, config=config, replace=True)
    table.update_field_metadata({"path": VECTOR, "metadata": {RECORD_KEY: json.dumps(settings)}})


def write_index(config: EmbedJobConfig, spec: ModelSpec, store: OutputStore, pieces: list) -> str:
    """Make index.table hold exactly the committed ones of the planned `pieces` (in input order) with the
    configured ANN index, doing only what the table lacks; returns the summary line."""
    started, index = time.perf_counter(), config.index
    finished = store.finished()
    pieces = [piece for piece in pieces if piece.key in finished]
    record = {**model_record(config, spec), "id_column": config.input.id_column, "columns": index.columns,
              "text_column": config.input.text_column if config.input.text_column in index.columns else None}
    record["source"] = hashlib.sha256(json.dumps({
        **record, "output": redact(store.uri), "dtype": config.output.dtype, "pieces": [piece.key for piece in pieces],
    }, sort_keys=True).encode()).hexdigest()
    db = connect(index.path)
    table = _open(db, index.table)
    written = table is None or _record(table).get("source") != record["source"]
    if written:
        table = db.create_table(index.table, mode="overwrite",
                                data=_rows(store, pieces, config, spec.dimensions, record))
    rows = table.count_rows()
    settings = ann_settings(index, rows)
    built = _record(table, VECTOR) != settings
    if built:
        build_ann_index(table, settings)
    if written or built:
        with warnings.catch_warnings():  # removing every older version is the point: this run is the writer
            warnings.simplefilter("ignore", UserWarning)
            table.optimize(cleanup_older_than=timedelta(0), delete_unverified=True)
    state = "written" if written else "index built" if built else "up to date"
    return (f"indexed rows={rows} index={settings['kind']} ({state}) seconds={time.perf_counter() - started:.1f} "
            f"table={redact(index.path)}/{index.table}")


@dataclass
class SearchIndex:
    """A table written by write_index, opened for queries."""

    table: object  # lancedb Table
    record: dict  # the table's RECORD_KEY metadata
    settings: dict  # the vector field's: ANN index and search defaults

    def __post_init__(self):
        self.columns = [name for name in self.table.schema.names if name != VECTOR]  # what results hold

    def nearest(self, vectors: np.ndarray, top: int, where: str | None = None, nprobes: int | None = None,
                refine_factor: int | None = None) -> list[pa.Table]:
        """The `top` rows nearest to each query vector by inner product, best first, with a `score` column;
        `where`: a Lance SQL filter applied before the search (results stay exact among the rows it keeps)."""
        results = []
        for vector in np.asarray(vectors, np.float32):
            query = (self.table.search(vector, vector_column_name=VECTOR).distance_type("dot").limit(top)
                     .select(self.columns))
            if self.settings.get("kind", EXACT) != EXACT:
                query = query.nprobes(nprobes or self.settings["nprobes"])
                refine = refine_factor or self.settings["refine_factor"]
                query = query.refine_factor(refine) if refine else query
            if where:
                query = query.where(where, prefilter=True)
            found = query.to_arrow()
            score = pc.subtract(1.0, found.column("_distance"))  # Lance's dot distance is 1 - x.y
            results.append(found.drop_columns(["_distance"]).append_column("score", score))
        return results

    def embedder(self) -> Embedder:
        """The model with the settings the vectors were made with; refused when its files changed since."""
        spec = resolve_spec(**self.record["model"])
        if model_fingerprint(spec) != self.record["model_files"]:
            raise ConfigError(f"--index: the table's vectors were made with other files at model path "
                              f"{self.record['model']['path']}; run the embed job again to re-index")
        from raylib.models.embedder import Embedder  # the model classes: only where a query is embedded

        return Embedder(spec)

    def search(self, queries: list[str], top: int, where: str | None = None) -> list[pa.Table]:
        """Embed the queries as the job recorded (input_type query) and return each one's nearest rows."""
        return self.nearest(self.embedder().encode(queries, input_type="query"), top, where)


def open_index(uri: str, table: str = DEFAULT_TABLE) -> SearchIndex:
    """The table `table` of the LanceDB database at `uri`; ConfigError when it is not there or not ours."""
    found = _open(connect(uri), table)
    if found is None:
        raise ConfigError(f"--index: no table {table!r} in {redact(uri)}; run the embed job with an index: section "
                          "or pass the database (index.path) and --table")
    record = _record(found)
    if "model" not in record:
        raise ConfigError(f"--index: table {table!r} in {redact(uri)} was not written by the embed job (no "
                          f"{RECORD_KEY} metadata); index it with the embed job's index: section")
    return SearchIndex(found, record, _record(found, VECTOR))

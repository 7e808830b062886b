"""Input pieces for streaming jobs: parquet row-group ranges and jsonl byte ranges, read with row checks.

A piece is the unit of work and of resume: small enough to embed in one go, found without reading the data
(parquet footers and file sizes only), and named by a stable key. `read_pieces` is the one Ray Data reader of
every job that streams text: a task per piece reads it and hands its table to the job's next step.
"""

from __future__ import annotations

import hashlib
import io
import json
import posixpath
from collections.abc import Callable
from dataclasses import asdict, dataclass

import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq
import ray.data

from raylib.config import ConfigError, InputConfig
from raylib.storage import resolve

SUFFIXES = {".parquet": "parquet", ".jsonl": "jsonl", ".json": "jsonl", ".ndjson": "jsonl"}
READ_AHEAD = 1 << 16


@dataclass(frozen=True)
class Piece:
    uri: str  # the file, as a path of the input's filesystem
    format: str  # parquet | jsonl
    start: int  # parquet: first row group; jsonl: first byte
    stop: int  # exclusive
    first_row: int  # parquet: row number in the file of the first row (for error reports)
    key: str

    def to_dict(self) -> dict:
        return asdict(self)


def _piece_key(path: str, fmt: str, start: int) -> str:
    stem = posixpath.basename(path).split(".")[0]
    digest = hashlib.sha1(path.encode()).hexdigest()[:10]
    return f"{stem}-{digest}-{'rg' if fmt == 'parquet' else 'b'}{start}"


def list_input_files(config: InputConfig, section: str = "input") -> tuple[pafs.FileSystem, list[tuple[str, str]]]:
    """(filesystem, [(path, format)]) of the input, or ConfigError naming <section>.path (the config section
    that holds these input settings)."""
    fs, root = resolve(config.path)
    info = fs.get_file_info(root)
    if info.type == pafs.FileType.NotFound:
        raise ConfigError(f"{section}.path: {config.path} does not exist; give a file or directory of parquet/jsonl")
    infos = [info] if info.type == pafs.FileType.File else fs.get_file_info(pafs.FileSelector(root, recursive=True))
    files = []
    for item in sorted(infos, key=lambda i: i.path):
        hidden = any(part.startswith(("_", ".")) for part in posixpath.relpath(item.path, root).split("/"))
        if item.type != pafs.FileType.File or (hidden and item.path != root):
            continue
        fmt = config.format if config.format != "auto" else SUFFIXES.get(posixpath.splitext(item.path)[1].lower())
        if fmt:
            files.append((item.path, fmt))
    if not files:
        raise ConfigError(
            f"{section}.path: no .parquet or .jsonl files in {config.path}; point it at your data or set "
            f"{section}.format"
        )
    return fs, files


def first_file_columns(fs: pafs.FileSystem, files: list[tuple[str, str]], sample_rows: int = 100) -> list[str]:
    """The column names of the first file (a jsonl file: every key of its first `sample_rows` rows)."""
    path, fmt = files[0]
    if fmt == "parquet":
        with fs.open_input_file(path) as source:
            return pq.read_schema(source).names
    keys: dict[str, None] = {}
    with fs.open_input_stream(path) as source:
        lines = (line for line in io.TextIOWrapper(source, encoding="utf-8") if line.strip())
        for _, line in zip(range(sample_rows), lines):
            try:
                row = json.loads(line)
            except ValueError:
                continue
            if isinstance(row, dict):
                keys.update(dict.fromkeys(row))
    return list(keys)


def plan_pieces(fs: pafs.FileSystem, files: list[tuple[str, str]], config: InputConfig,
                section: str = "input") -> list[Piece]:
    """Split files into pieces: whole parquet row groups up to rows_per_piece rows, jsonl bytes_per_piece ranges;
    a parquet file without the configured columns is a ConfigError naming <section>.<key>."""
    pieces = []
    for path, fmt in files:
        if fmt == "jsonl":
            size = fs.get_file_info(path).size
            for start in range(0, size, config.bytes_per_piece):
                stop = min(start + config.bytes_per_piece, size)
                pieces.append(Piece(path, fmt, start, stop, 0, _piece_key(path, fmt, start)))
            continue
        with fs.open_input_file(path) as handle:
            metadata = pq.ParquetFile(handle).metadata
        names = set(metadata.schema.names)
        for key in ("id_column", "text_column"):
            if getattr(config, key) is not None and getattr(config, key) not in names:
                raise ConfigError(
                    f"{section}.{key}: {path} has no column {getattr(config, key)!r} (columns: {sorted(names)}); "
                    f"set {section}.{key}"
                )
        group, rows, first_row = 0, 0, 0
        for index in range(metadata.num_row_groups):
            rows += metadata.row_group(index).num_rows
            last = index == metadata.num_row_groups - 1
            if last or rows + metadata.row_group(index + 1).num_rows > config.rows_per_piece:
                pieces.append(Piece(path, fmt, group, index + 1, first_row, _piece_key(path, fmt, group)))
                group, first_row, rows = index + 1, first_row + rows, 0
    return pieces


def _check_text(text) -> str | None:
    if text is None:
        return "text is missing or null"
    if not isinstance(text, str):
        return f"text is a {type(text).__name__}, not a string"
    if not text.strip():
        return "text is empty"
    return None


def _byte_range_lines(fs, piece: Piece):
    """(offset, line) of every line that starts inside [start, stop): a line belongs to the piece it starts in."""
    begin = max(piece.start - 1, 0)
    with fs.open_input_file(piece.uri) as handle:
        handle.seek(begin)
        data = handle.read(piece.stop - begin)
        while data and not data.endswith(b"\n"):
            more = handle.read(READ_AHEAD)
            if not more:
                break
            end = more.find(b"\n")
            data += more if end < 0 else more[: end + 1]
            if end >= 0:
                break
    offset = begin
    if piece.start > 0:
        skip = data.find(b"\n") + 1
        data, offset = (data[skip:], begin + skip) if skip else (b"", begin)
    for line in data.splitlines(keepends=True):
        yield offset, line
        offset += len(line)


def _parse_line(line: bytes) -> tuple[dict | None, str | None]:
    """(row, error) of one jsonl line: a JSON object, or the reason it is not one."""
    try:
        row = json.loads(line)
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        return None, f"line is not valid JSON ({exc.msg if hasattr(exc, 'msg') else exc})"
    if not isinstance(row, dict):
        return None, "line is not a JSON object"
    return row, None


def read_rows(piece: Piece, path: str, columns: list[str]) -> tuple[dict, list[str | None], list[str]]:
    """(values, errors, where) of a piece's rows: the named columns as the file holds them (parquet: arrow
    columns, null where the file has no such column; jsonl: lists of parsed values, None where a row lacks
    the key), the reason a row cannot be read at all (a jsonl line that is not a JSON object) and where each
    row is (file and row number or byte offset). `path` is the input's configured path (its filesystem)."""
    fs, _ = resolve(path)
    if piece.format == "parquet":
        with fs.open_input_file(piece.uri) as handle:
            file = pq.ParquetFile(handle)
            present = [name for name in dict.fromkeys(columns) if name in file.schema_arrow.names]
            table = file.read_row_groups(range(piece.start, piece.stop), columns=present)
        rows = len(table)
        values = {name: table.column(name) if name in present else pa.nulls(rows) for name in columns}
        return values, [None] * rows, [f"{piece.uri} row {piece.first_row + row}" for row in range(rows)]
    values, errors, where = {name: [] for name in columns}, [], []
    for offset, line in _byte_range_lines(fs, piece):
        if not line.strip():
            continue
        row, error = _parse_line(line)
        for name in values:
            values[name].append(None if row is None else row.get(name))
        errors.append(error)
        where.append(f"{piece.uri} byte {offset}")
    return values, errors, where


def as_list(column) -> list:
    """A column from read_rows as a Python list."""
    return column if isinstance(column, list) else column.to_pylist()


def _id_error(doc_id, typed: bool) -> str | None:
    """Why a row's id is unusable: missing, or (untyped jsonl values) neither a string nor an integer; a
    parquet column's type is the file's own."""
    if doc_id is None:
        return "id is missing or null"
    if not typed and (isinstance(doc_id, bool) or not isinstance(doc_id, (str, int))):
        return f"id is a {type(doc_id).__name__}, not a string or integer"
    return None


def read_piece(piece: Piece, config: InputConfig) -> pa.Table:
    """Rows of a piece as a table (id, text, _error, _where); a bad row keeps its place with text null and
    the reason in _error. Parquet ids keep their column's type; jsonl ids become strings."""
    id_column, text_column = config.id_column, config.text_column
    values, errors, where = read_rows(piece, config.path, [name for name in (id_column, text_column) if name])
    texts = as_list(values[text_column])
    ids = [None] * len(texts) if id_column is None else as_list(values[id_column])
    typed = piece.format == "parquet"
    id_errors = [error or (id_column and _id_error(doc_id, typed)) for error, doc_id in zip(errors, ids)]
    errors = [id_error or _check_text(text) for id_error, text in zip(id_errors, texts)]
    if id_column is None:
        id_array = pa.nulls(len(texts), pa.string())
    elif piece.format == "parquet":
        id_array = values[id_column]
    else:
        id_array = pa.array([None if error else str(doc_id) for doc_id, error in zip(ids, id_errors)], pa.string())
    return pa.table({
        "id": id_array,
        "text": pa.array([text if error is None else None for text, error in zip(texts, errors)], pa.string()),
        "_error": pa.array(errors, pa.string()),
        "_where": pa.array(where, pa.string()),
    })


def _read_piece_task(batch: pa.Table, read: Callable[..., pa.Table], read_kwargs: dict) -> pa.Table:
    (fields,) = batch.to_pylist()
    return read(Piece(**fields), **read_kwargs)


def read_pieces(pieces: list[Piece], cpus: float, read: Callable[..., pa.Table] = read_piece,
                **read_kwargs) -> ray.data.Dataset:
    """The one Ray Data reader of the jobs that stream input: a dataset with one block per piece, made by a
    task (asking for `cpus`) that returns read(piece, **read_kwargs) -- read_piece, or a job's function that
    reads the piece with it (or with read_rows) and goes on, so that a piece travels whole to the next stage."""
    blocks = max(len(pieces), 1)  # no pieces (only empty files): an empty dataset
    return ray.data.from_items([piece.to_dict() for piece in pieces], override_num_blocks=blocks).map_batches(
        _read_piece_task, batch_size=1, batch_format="pyarrow", num_cpus=cpus,
        fn_kwargs={"read": read, "read_kwargs": read_kwargs})

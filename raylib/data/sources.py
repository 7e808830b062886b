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


def list_input_files(config: InputConfig) -> tuple[pafs.FileSystem, list[tuple[str, str]]]:
    """(filesystem, [(path, format)]) of the input, or ConfigError naming input.path."""
    fs, root = resolve(config.path)
    info = fs.get_file_info(root)
    if info.type == pafs.FileType.NotFound:
        raise ConfigError(f"input.path: {config.path} does not exist; give a file or directory of parquet/jsonl")
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
            f"input.path: no .parquet or .jsonl files in {config.path}; point it at your data or set input.format"
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


def plan_pieces(fs: pafs.FileSystem, files: list[tuple[str, str]], config: InputConfig) -> list[Piece]:
    """Split files into pieces: whole parquet row groups up to rows_per_piece rows, jsonl bytes_per_piece ranges."""
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
                    f"input.{key}: {path} has no column {getattr(config, key)!r} (columns: {sorted(names)}); "
                    f"set input.{key}"
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


def _read_parquet(fs, piece: Piece, config: InputConfig) -> pa.Table:
    columns = [name for name in (config.id_column, config.text_column) if name is not None]
    with fs.open_input_file(piece.uri) as handle:
        table = pq.ParquetFile(handle).read_row_groups(range(piece.start, piece.stop), columns=columns)
    texts = table.column(config.text_column).to_pylist()
    if config.id_column is None:
        ids = pa.nulls(len(texts), pa.string())
        errors = [_check_text(text) for text in texts]
    else:
        ids = table.column(config.id_column)
        errors = ["id is missing or null" if doc_id is None else _check_text(text)
                  for doc_id, text in zip(ids.to_pylist(), texts)]
    where = [f"{piece.uri} row {piece.first_row + row}" for row in range(len(texts))]
    texts = [text if error is None else None for text, error in zip(texts, errors)]
    return pa.table(
        {"id": ids, "text": pa.array(texts, pa.string()), "_error": pa.array(errors, pa.string()),
         "_where": pa.array(where, pa.string())}
    )


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


def _row_id(row: dict, id_column: str | None) -> tuple[str | int | None, str | None]:
    """(id, error) of a parsed jsonl row; rows have no id when id_column is None."""
    if id_column is None:
        return None, None
    doc_id = row.get(id_column)
    if doc_id is None:
        return None, f"id is missing or null (key {id_column!r})"
    if isinstance(doc_id, bool) or not isinstance(doc_id, (str, int)):
        return None, f"id is a {type(doc_id).__name__}, not a string or integer"
    return doc_id, None


def _parse_jsonl_row(line: bytes, config: InputConfig) -> tuple[str | None, str | None, str | None]:
    """(id, text, error) of one jsonl line."""
    try:
        row = json.loads(line)
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        return None, None, f"line is not valid JSON ({exc.msg if hasattr(exc, 'msg') else exc})"
    if not isinstance(row, dict):
        return None, None, "line is not a JSON object"
    doc_id, error = _row_id(row, config.id_column)
    if error:
        return None, None, error
    text = row.get(config.text_column)
    error = _check_text(text)
    return (None if doc_id is None else str(doc_id)), (text if error is None else None), error


def _read_jsonl(fs, piece: Piece, config: InputConfig) -> pa.Table:
    ids, texts, errors, where = [], [], [], []
    for offset, line in _byte_range_lines(fs, piece):
        if not line.strip():
            continue
        doc_id, text, error = _parse_jsonl_row(line, config)
        ids.append(doc_id)
        texts.append(text)
        errors.append(error)
        where.append(f"{piece.uri} byte {offset}")
    return pa.table(
        {"id": pa.array(ids, pa.string()), "text": pa.array(texts, pa.string()),
         "_error": pa.array(errors, pa.string()),
         "_where": pa.array(where, pa.string())}
    )


def read_piece(piece: Piece, config: InputConfig) -> pa.Table:
    """Rows of a piece as a table (id, text, _error, _where); a bad row keeps its place with text null and
    the reason in _error."""
    fs, _ = resolve(config.path)
    reader = _read_parquet if piece.format == "parquet" else _read_jsonl
    return reader(fs, piece, config)


def _read_piece_task(batch: pa.Table, input_config: dict, then: Callable | None, then_kwargs: dict) -> pa.Table:
    (fields,) = batch.to_pylist()
    piece = Piece(**fields)
    table = read_piece(piece, InputConfig.model_validate(input_config))
    return table if then is None else then(table, piece, **then_kwargs)


def read_pieces(pieces: list[Piece], config: InputConfig, cpus: float, then: Callable | None = None,
                **then_kwargs) -> ray.data.Dataset:
    """A dataset with one block per piece: a task (asking for `cpus`) reads the piece (read_piece) and, when
    given, returns then(table, piece, **then_kwargs) instead, so a piece travels whole to the next stage."""
    return ray.data.from_items([piece.to_dict() for piece in pieces], override_num_blocks=len(pieces)).map_batches(
        _read_piece_task, batch_size=1, batch_format="pyarrow", num_cpus=cpus,
        fn_kwargs={"input_config": config.model_dump(), "then": then, "then_kwargs": then_kwargs})

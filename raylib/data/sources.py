"""Input pieces for streaming jobs: parquet row ranges and jsonl byte ranges, read with row checks.

A piece is the unit of work and of resume: bounded in rows (and jsonl bytes) whatever the file's layout, found
without embedding anything (parquet footers, jsonl line ends), and named by a stable key that includes its
files' fingerprints (size and modification time), so a changed file makes new pieces. A piece is one row range
of a large file, or several small files whole (`group_small_files`): each piece costs the same fixed work
whatever it holds, and a corpus of millions of tiny files must not pay it per file. `read_pieces` is the one
Ray Data reader of every job that streams text: a task per piece reads it and hands its table to the job's next
step. A file that cannot be read at all is reported (`InputPlan.unreadable`, `UnreadableInput`), never a
traceback; a row that cannot be used keeps its place with the reason.
"""

from __future__ import annotations

import bisect
import functools
import hashlib
import io
import json
import posixpath
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field

import numpy as np
import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq
import ray
import ray.data
from ray.data.block import BlockMetadata
from ray.data.datasource import Datasource, ReadTask

from raylib.config import ConfigError, InputConfig
from raylib.storage import resolve

SUFFIXES = {".parquet": "parquet", ".jsonl": "jsonl", ".json": "jsonl", ".ndjson": "jsonl"}
READ_AHEAD = 1 << 16
READ_BATCH_ROWS = 65536  # parquet rows decoded at a time when a piece is a range inside a row group
# what pyarrow raises for a file it cannot decode (ArrowInvalid: no footer, bad magic; OSError: corrupt pages) --
# and for an object store that fails: either way the file is reported and retried by the next run, not committed
UNREADABLE_ERRORS = (pa.ArrowInvalid, pa.ArrowNotImplementedError, OSError)
PLANNING_THREADS = 32  # files whose footers (parquet) or line ends (jsonl) are read at once while planning
GROUP_FILES = 256  # small files per piece on average, at most (a boundary every ~256 files, by path)
GROUP_MAX_FILES = 1024  # small files per piece at most (a long run without a boundary)


class UnreadableInput(Exception):
    """A file or piece that cannot be read at all (corrupt, not the format, changed since planning)."""


@dataclass(frozen=True)
class InputFile:
    path: str  # as a path of the input's filesystem
    format: str  # parquet | jsonl
    size: int
    fingerprint: str  # changes when the file is appended to, rewritten or replaced


@dataclass(frozen=True)
class Span:
    """Rows of one file: parquet rows [start, stop), or the jsonl lines that start in bytes [start, stop)."""

    uri: str  # the file, as a path of the input's filesystem
    format: str  # parquet | jsonl
    start: int
    stop: int  # exclusive
    fingerprint: str  # the file's when the span was planned


@dataclass(frozen=True)
class Piece:
    key: str
    spans: tuple[Span, ...]  # a range of one file, or several small files whole (one format), read in order

    @property
    def format(self) -> str:
        return self.spans[0].format

    def describe(self) -> str:
        """Where the piece is, for reports: its first span, and how many files follow."""
        first = self.spans[0]
        more = f" and {len(self.spans) - 1} more files" if len(self.spans) > 1 else ""
        return f"{first.uri} [{first.start}, {first.stop}){more}"

    def to_dict(self) -> dict:
        return {"key": self.key, "spans": [asdict(span) for span in self.spans]}

    @classmethod
    def from_dict(cls, fields: dict) -> Piece:
        return cls(fields["key"], tuple(Span(**span) for span in fields["spans"]))


@dataclass
class InputPlan:
    pieces: list[Piece] = field(default_factory=list)
    unreadable: list[tuple[str, str]] = field(default_factory=list)  # (path, reason) of files not planned


def fingerprint(info: pafs.FileInfo, fs: pafs.FileSystem) -> str:
    """Size and modification time; on object stores in whole seconds (a listing and a HEAD of the same object
    can give the time at different precisions)."""
    mtime = info.mtime_ns if isinstance(fs, pafs.LocalFileSystem) else info.mtime_ns // 10**9
    return hashlib.sha1(f"{info.size}:{mtime}".encode()).hexdigest()[:8]


def file_digest(path: str) -> str:
    """The part of a piece key that names its file."""
    return hashlib.sha1(path.encode()).hexdigest()[:10]


def key_file_digest(key: str) -> str:
    """The (first) file part of a piece key: keys are <stem>-<file digest>-<fingerprint>-<start>, and for a group
    of small files <first file's stem>-<its digest>-<digest of every span>-g<files>."""
    return key.rsplit("-", 3)[1]


def file_key(path: str) -> str:
    """A file's name in reports: <stem>-<file digest>."""
    return f"{posixpath.basename(path).split('.')[0].lstrip('_.') or 'file'}-{file_digest(path)}"


def _piece_key(spans: list[Span]) -> str:
    first = spans[0]
    if len(spans) == 1:
        return f"{file_key(first.uri)}-{first.fingerprint}-{first.start}"
    members = "|".join(f"{span.uri}:{span.fingerprint}:{span.start}:{span.stop}" for span in spans)
    return f"{file_key(first.uri)}-{hashlib.sha1(members.encode()).hexdigest()[:8]}-g{len(spans)}"


def list_input_files(config: InputConfig, section: str = "input") -> tuple[pafs.FileSystem, list[InputFile]]:
    """(filesystem, files) of the input, or ConfigError naming <section>.path (the config section that holds
    these input settings)."""
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
            files.append(InputFile(item.path, fmt, item.size, fingerprint(item, fs)))
    if not files:
        raise ConfigError(
            f"{section}.path: no .parquet or .jsonl files in {config.path}; point it at your data or set "
            f"{section}.format"
        )
    return fs, files


def first_file_columns(fs: pafs.FileSystem, files: list[InputFile], sample_rows: int = 100) -> list[str]:
    """The column names of the first file (a jsonl file: every key of its first `sample_rows` rows)."""
    path = files[0].path
    if files[0].format == "parquet":
        try:
            with fs.open_input_file(path) as source:
                return pq.read_schema(source).names
        except UNREADABLE_ERRORS as exc:
            raise ConfigError(f"{path} cannot be read: {_reason(exc)}; replace or remove the file") from None
    keys: dict[str, None] = {}
    try:
        with fs.open_input_stream(path) as source:
            lines = (line for line in io.TextIOWrapper(source, encoding="utf-8", errors="replace") if line.strip())
            for _, line in zip(range(sample_rows), lines):
                row, _ = _parse_line(line.encode())
                if row is not None:
                    keys.update(dict.fromkeys(row))
    except OSError as exc:
        raise ConfigError(f"{path} cannot be read: {_reason(exc)}; replace or remove the file") from None
    return list(keys)


def _row_ranges(group_rows: list[int], max_rows: int) -> list[tuple[int, int]]:
    """Row ranges of a parquet file: whole row groups together up to max_rows; a larger group cut in equal parts."""
    ranges, start, pending = [], 0, 0
    for rows in group_rows:
        if pending and pending + rows > max_rows:
            ranges.append((start, start + pending))
            start, pending = start + pending, 0
        if rows > max_rows:
            parts = -(-rows // max_rows)
            ranges += [(start + rows * part // parts, start + rows * (part + 1) // parts) for part in range(parts)]
            start += rows
        else:
            pending += rows
    if pending:
        ranges.append((start, start + pending))
    return ranges


def _line_starts(handle, start: int, stop: int) -> np.ndarray:
    """Offsets in [start, stop) where a line starts (a line belongs to the piece it starts in)."""
    begin = max(start - 1, 0)
    handle.seek(begin)
    data = np.frombuffer(handle.read(stop - begin), np.uint8)
    starts = np.flatnonzero(data == ord("\n")) + begin + 1
    starts = starts[(starts >= start) & (starts < stop)]
    return np.concatenate([[0], starts]) if start == 0 and stop > 0 else starts


def _byte_ranges(fs, file: InputFile, piece_bytes: int, max_rows: int) -> list[tuple[int, int, int]]:
    """(start, stop, rows at most) of a jsonl file: piece_bytes each, cut further so that at most max_rows lines
    start in one; a range where no line starts (inside one long line) is no piece."""
    ranges = []
    with fs.open_input_file(file.path) as handle:
        for start in range(0, file.size, piece_bytes):
            stop = min(start + piece_bytes, file.size)
            if piece_bytes <= max_rows:  # fewer bytes than max_rows: cannot hold more lines, no need to look
                ranges.append((start, stop, stop - start))
                continue
            starts = _line_starts(handle, start, stop)
            cuts = [start, *starts[max_rows::max_rows].tolist(), stop] if len(starts) else []
            rows = [max_rows] * (len(cuts) - 2) + [len(starts) - max_rows * (len(cuts) - 2)] if cuts else []
            ranges += [(low, high, count) for low, high, count in zip(cuts, cuts[1:], rows)]
    return ranges


@dataclass
class _FileSpans:
    """A file's planned spans with their rows, and what files must share to be read as one piece."""

    file: InputFile
    spans: list[tuple[Span, int]]  # (span, rows at most)
    shape: str  # jsonl, or a parquet file's arrow schema (a group's tables are concatenated)


def _file_spans(fs, file: InputFile, config: InputConfig, section: str, max_rows: int) -> _FileSpans:
    if file.format == "jsonl":
        ranges, shape = _byte_ranges(fs, file, config.bytes_per_piece, max_rows), "jsonl"
    else:
        with fs.open_input_file(file.path) as handle:
            metadata = pq.ParquetFile(handle).metadata
        names = set(metadata.schema.names)
        for key in ("id_column", "text_column"):
            if getattr(config, key) is not None and getattr(config, key) not in names:
                raise ConfigError(
                    f"{section}.{key}: {file.path} has no column {getattr(config, key)!r} (columns: {sorted(names)}); "
                    f"set {section}.{key}"
                )
        ranges = [(start, stop, stop - start) for start, stop in _row_ranges(
            [metadata.row_group(index).num_rows for index in range(metadata.num_row_groups)], max_rows)]
        shape = metadata.schema.to_arrow_schema().remove_metadata().to_string()
    spans = [(Span(file.path, file.format, start, stop, file.fingerprint), rows) for start, stop, rows in ranges]
    return _FileSpans(file, spans, shape)


def _starts_group(file: InputFile) -> bool:
    """Whether a small file begins a new group whatever came before it: decided by its path alone, so adding,
    removing or changing one file regroups only the files between two such boundaries."""
    return int(file_digest(file.path), 16) % GROUP_FILES == 0


def _pieces(planned: list[_FileSpans], config: InputConfig, max_rows: int) -> list[Piece]:
    """Pieces in file order: each span of a large file alone; runs of small files (one span, fewer than max_rows
    rows) together, up to max_rows rows, bytes_per_piece bytes and GROUP_MAX_FILES files, one shape per group."""
    pieces, group, rows, size, shape = [], [], 0, 0, ""

    def close() -> None:
        if group:
            pieces.append(Piece(_piece_key(group), tuple(group)))
            group.clear()

    for item in planned:
        file = item.file
        if len(item.spans) != 1 or item.spans[0][1] >= max_rows or not config.group_small_files:
            close()
            pieces += [Piece(_piece_key([span]), (span,)) for span, _ in item.spans]
            continue
        (span, span_rows), = item.spans
        if group and (_starts_group(file) or rows + span_rows > max_rows or size + file.size > config.bytes_per_piece
                      or len(group) == GROUP_MAX_FILES or item.shape != shape):
            close()
        if not group:
            rows, size, shape = 0, 0, item.shape
        group.append(span)
        rows, size = rows + span_rows, size + file.size
    close()
    return pieces


def plan_input(fs: pafs.FileSystem, files: list[InputFile], config: InputConfig, section: str = "input",
               max_rows: int | None = None) -> InputPlan:
    """Split files into pieces of at most min(rows_per_piece, max_rows) rows (parquet: whole row groups together,
    larger ones cut; jsonl: bytes_per_piece ranges cut at line starts; small files grouped); a file that cannot
    be read is listed in `unreadable` with the reason. A parquet file without the configured columns is a
    ConfigError naming <section>.<key>. Files are read PLANNING_THREADS at a time (object stores: one request's
    latency each)."""
    max_rows = min(config.rows_per_piece, max_rows or config.rows_per_piece)

    def spans(file: InputFile) -> _FileSpans | str:
        try:
            return _file_spans(fs, file, config, section, max_rows)
        except UNREADABLE_ERRORS as exc:
            return _reason(exc)

    plan, planned = InputPlan(), []
    with ThreadPoolExecutor(min(PLANNING_THREADS, len(files) or 1)) as pool:  # footers and line ends: I/O bound
        for file, found in zip(files, pool.map(spans, files)):  # in file order, as the groups expect
            if isinstance(found, str):
                plan.unreadable.append((file.path, found))
            else:
                planned.append(found)
    plan.pieces = _pieces(planned, config, max_rows)
    return plan


def plan_pieces(fs: pafs.FileSystem, files: list[InputFile], config: InputConfig, section: str = "input") -> list[Piece]:
    """The pieces of plan_input, for jobs that need every file (training): an unreadable file is a ConfigError
    naming it."""
    plan = plan_input(fs, files, config, section)
    if plan.unreadable:
        path, reason = plan.unreadable[0]
        more = f" (and {len(plan.unreadable) - 1} more)" if len(plan.unreadable) > 1 else ""
        raise ConfigError(f"{section}.path: {path} cannot be read: {reason}{more}; replace or remove the file")
    return plan.pieces


def _reason(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {str(exc)[:200]}"


def _check_text(text) -> str | None:
    if text is None:
        return "text is missing or null"
    if not isinstance(text, str):
        return f"text is a {type(text).__name__}, not a string"
    if not text.strip():
        return "text is empty"
    return None


def _byte_range_lines(fs, piece: Span):
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
    for line in data.split(b"\n"):
        if line:
            yield offset, line
        offset += len(line) + 1


def _parse_line(line: bytes) -> tuple[dict | None, str | None]:
    """(row, error) of one jsonl line: a JSON object, or the reason it is not one (bad JSON or UTF-8, an
    integer past Python's digit limit, nesting deeper than the parser's recursion limit)."""
    try:
        row = json.loads(line)
    except RecursionError:
        return None, "line is nested too deeply to parse"
    except ValueError as exc:  # JSONDecodeError, UnicodeDecodeError, the int digit limit
        return None, f"line is not valid JSON ({getattr(exc, 'msg', None) or str(exc)[:200]})"
    if not isinstance(row, dict):
        return None, "line is not a JSON object"
    return row, None


def _unencodable(name: str, value) -> str | None:
    """Why a parsed value (a string, or a list of them) cannot become UTF-8: a lone surrogate escape."""
    for item in value if isinstance(value, list) else [value]:
        if isinstance(item, str):
            try:
                item.encode()
            except UnicodeEncodeError as exc:
                return f"{name} holds a lone surrogate {ascii(item[exc.start])} at character {exc.start}"
    return None


def _parquet_rows(file: pq.ParquetFile, start: int, stop: int, columns: list[str]) -> pa.Table:
    """Rows [start, stop) of a parquet file: the row groups they span, decoded a batch at a time and sliced."""
    ends = list(np.cumsum([file.metadata.row_group(i).num_rows for i in range(file.metadata.num_row_groups)]))
    first, last = bisect.bisect_right(ends, start), bisect.bisect_left(ends, stop)
    position = int(ends[first - 1]) if first else 0
    batches = []
    for batch in file.iter_batches(batch_size=READ_BATCH_ROWS, row_groups=range(first, last + 1), columns=columns):
        low, high = max(start - position, 0), min(stop - position, len(batch))
        if high > low:
            batches.append(batch.slice(low, high - low))
        position += len(batch)
        if position >= stop:
            break
    return pa.Table.from_batches(batches, pa.schema([file.schema_arrow.field(name) for name in columns]))


def _valid_utf8(name: str, column: pa.ChunkedArray, errors: list[str | None]) -> pa.ChunkedArray:
    """A parquet string column as read, or (when some values are not valid UTF-8) with those values null and
    the reason in `errors`."""
    if not pa.types.is_string(column.type) and not pa.types.is_large_string(column.type):
        return column
    try:
        column.validate(full=True)
        return column
    except pa.ArrowInvalid:
        pass
    decoded = []
    for row, raw in enumerate(column.cast(pa.binary()).to_pylist()):
        try:
            decoded.append(None if raw is None else raw.decode())
        except UnicodeDecodeError as exc:
            decoded.append(None)
            errors[row] = errors[row] or f"{name} is not valid UTF-8 (byte {exc.start})"
    return pa.chunked_array([pa.array(decoded, column.type)])


def _check_unchanged(fs, span: Span) -> None:
    if fingerprint(fs.get_file_info(span.uri), fs) != span.fingerprint:
        raise UnreadableInput(f"{span.uri} changed after the job planned its pieces; run the job again to embed "
                              "what it holds now")


def _read_span(fs, span: Span, columns: list[str]) -> tuple[dict, list[str | None], list[str]]:
    """read_rows of one span."""
    try:
        _check_unchanged(fs, span)
        if span.format == "parquet":
            with fs.open_input_file(span.uri) as handle:
                file = pq.ParquetFile(handle)
                present = [name for name in dict.fromkeys(columns) if name in file.schema_arrow.names]
                table = _parquet_rows(file, span.start, span.stop, present)
        else:
            lines = list(_byte_range_lines(fs, span))
    except UNREADABLE_ERRORS as exc:
        raise UnreadableInput(f"{span.uri} cannot be read: {_reason(exc)}") from None
    if span.format == "parquet":
        rows = span.stop - span.start
        errors: list[str | None] = [None] * rows
        values = {name: _valid_utf8(name, table.column(name), errors) if name in present else pa.nulls(rows)
                  for name in columns}
        return values, errors, [f"{span.uri} row {span.start + row}" for row in range(rows)]
    values, errors, where = {name: [] for name in columns}, [], []
    for offset, line in lines:
        if not line.strip():
            continue
        row, error = _parse_line(line)
        if row is not None:
            error = next(filter(None, (_unencodable(name, row.get(name)) for name in values)), None)
            row = None if error else row
        for name in values:
            values[name].append(None if row is None else row.get(name))
        errors.append(error)
        where.append(f"{span.uri} byte {offset}")
    return values, errors, where


def _concatenated(parts: list) -> list | pa.ChunkedArray:
    """One column of several spans: jsonl lists joined, parquet arrays as one chunked array (a group's files share
    their schema)."""
    if len(parts) == 1:
        return parts[0]
    if isinstance(parts[0], list):
        return [value for part in parts for value in part]
    return pa.chunked_array([chunk for part in parts
                             for chunk in (part.chunks if isinstance(part, pa.ChunkedArray) else [part])])


def read_rows(piece: Piece, path: str, columns: list[str]) -> tuple[dict, list[str | None], list[str]]:
    """(values, errors, where) of a piece's rows, its spans in order: the named columns as the files hold them
    (parquet: arrow columns, null where the file has no such column; jsonl: lists of parsed values, None where a
    row lacks the key), the reason a row cannot be read at all (a jsonl line that is not a JSON object, or holds
    a lone surrogate in one of the columns) and where each row is (file and row number or byte offset). `path`
    is the input's configured path (its filesystem). A piece with a file that cannot be read at all, or that
    changed since planning, raises UnreadableInput naming that file."""
    fs, _ = resolve(path)
    parts = [_read_span(fs, span, columns) for span in piece.spans]
    values = {name: _concatenated([part[0][name] for part in parts]) for name in columns}
    return values, [error for part in parts for error in part[1]], [where for part in parts for where in part[2]]


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


class _PieceSource(Datasource):
    """The pieces as Ray Data read tasks, one per piece: the executor starts them as the pipeline has room, so
    a plan of millions of pieces is never put into the object store up front."""

    def __init__(self, pieces: list[Piece], read: Callable[..., pa.Table], read_kwargs: dict):
        self.pieces, self.read = pieces, read
        self.read_kwargs = ray.put(read_kwargs)  # a tokenizer among them: stored once, not in every task

    def estimate_inmemory_data_size(self) -> None:
        return None

    def get_read_tasks(self, parallelism: int, per_task_row_limit: int | None = None,
                       data_context=None) -> list[ReadTask]:
        return [ReadTask(functools.partial(_read_piece_task, piece.to_dict(), self.read, self.read_kwargs),
                         BlockMetadata(num_rows=None, size_bytes=None, exec_stats=None, input_files=None))
                for piece in self.pieces]


def _read_piece_task(fields: dict, read: Callable[..., pa.Table], read_kwargs: ray.ObjectRef) -> list[pa.Table]:
    return [read(Piece.from_dict(fields), **ray.get(read_kwargs))]


def read_pieces(pieces: list[Piece], cpus: float, read: Callable[..., pa.Table] = read_piece,
                **read_kwargs) -> ray.data.Dataset:
    """The one Ray Data reader of the jobs that stream input: a dataset with one block per piece, made by a
    read task (asking for `cpus`) that returns read(piece, **read_kwargs) -- read_piece, or a job's function that
    reads the piece with it (or with read_rows) and goes on, so that a piece travels whole to the next stage."""
    if not pieces:  # only empty files
        return ray.data.from_items([])
    dataset = ray.data.read_datasource(_PieceSource(pieces, read, read_kwargs), override_num_blocks=len(pieces),
                                       ray_remote_args={"num_cpus": cpus})
    dataset.context.target_max_block_size = None  # Ray Data would split a block over ~128 MiB: never split a piece
    return dataset

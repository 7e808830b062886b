"""The output directory of a batch-embedding run: one parquet file per finished input piece, its bad rows,
and a manifest of finished pieces that makes re-runs skip them.

    <output>/<piece key>.parquet                id + embedding (its dtype and scheme in the schema metadata,
                                                vectors.py), written whole, then renamed into place
    <output>/_errors/<piece key>.jsonl          rows that could not be embedded, with the reason
    <output>/_errors/<key>.unreadable.jsonl     a file or piece that could not be read at all (this run)
    <output>/_errors/<key>.duplicates.jsonl     rows removed because an earlier row holds the same id
    <output>/_manifest/<piece key>.json         written last: the piece is done (rows, errors, tokens)
    <output>/_manifest/_job.json                the settings the vectors were made with
    <output>/_manifest/_quantization.json       int8 outputs: the calibration ranges of every piece (calibrate.py)
    <output>/_lease.json                        the run that owns the directory now, with its heartbeat
Names starting with "_" are skipped by parquet readers, so `pyarrow.dataset(<output>)` reads only vectors.
"""

from __future__ import annotations

import contextlib
import json
import os
import posixpath
import socket
import threading
import time
import uuid
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from raylib.config import ConfigError, JobError
from raylib.storage import conditional_object, locked, redact, resolve

JOB_FILE = "_job.json"
LEASE_FILE = "_lease.json"
UNREADABLE = ".unreadable.jsonl"
DUPLICATES = ".duplicates.jsonl"
SETTLE_S = 2.0  # object stores: how long a new lease waits before reading back who won


class OutputStore:
    def __init__(self, uri: str):
        self.uri = uri
        self.fs, self.root = resolve(uri)
        self.local = isinstance(self.fs, pafs.LocalFileSystem)

    def _path(self, *parts: str) -> str:
        return posixpath.join(self.root, *parts)

    def _write_atomic(self, final: str, write) -> None:
        """Write through a temporary name, then move into place, so a reader never sees half a file; on a local
        disk the data reaches the disk before the rename, and the rename before the next file is written."""
        temporary = self._path("_tmp", f"{uuid.uuid4().hex}-{posixpath.basename(final)}")
        self.fs.create_dir(posixpath.dirname(temporary), recursive=True)
        self.fs.create_dir(posixpath.dirname(final), recursive=True)
        write(temporary)
        if self.local:
            _fsync(temporary)
        self.fs.move(temporary, final)
        if self.local:
            _fsync(posixpath.dirname(final))

    def _write_text(self, final: str, text: str) -> None:
        def write(path: str) -> None:
            with self.fs.open_output_stream(path) as out:
                out.write(text.encode())

        self._write_atomic(final, write)

    def _read_json(self, path: str) -> dict | None:
        try:
            with self.fs.open_input_stream(path) as handle:
                return json.loads(handle.read())
        except (FileNotFoundError, ValueError):
            return None

    def vectors_path(self, key: str) -> str:
        return self._path(f"{key}.parquet")

    def _keys(self, folder: str, suffix: str) -> set[str]:
        """Keys of the files <key><suffix> in a folder (one listing; names starting with "_" are the store's own)."""
        selector = pafs.FileSelector(self._path(folder), allow_not_found=True)
        names = (posixpath.basename(info.path) for info in self.fs.get_file_info(selector))
        return {name[: -len(suffix)] for name in names if name.endswith(suffix) and not name.startswith("_")}

    def finished(self) -> set[str]:
        """Keys of the committed pieces (one directory listing, no file reads)."""
        return self._keys("_manifest", ".json")

    def discard_temporary(self) -> None:
        """Remove half-written files that a killed run left behind, and the last run's unreadable reports."""
        self.fs.delete_dir_contents(self._path("_tmp"), missing_dir_ok=True)
        for key in self._keys("_errors", UNREADABLE):
            self.fs.delete_file(self._path("_errors", f"{key}{UNREADABLE}"))

    def claim(self, settings: dict) -> None:
        """Record the run's settings, or refuse an output directory that holds vectors made another way."""
        path = self._path("_manifest", JOB_FILE)
        previous = self._read_json(path)
        if previous is not None:
            changed = sorted(key for key in settings.keys() | previous.keys() if settings.get(key) != previous.get(key))
            if changed:
                raise ConfigError(
                    f"output.path: {self.uri} holds embeddings made with other settings ({', '.join(changed)}); "
                    "use a new output.path or delete the old one"
                )
            return
        self._write_text(path, json.dumps(settings, indent=1, sort_keys=True))

    def commit_piece(self, key: str, vectors: pa.Table | None, errors: list[dict], stats: dict) -> None:
        """Write a piece's vectors and bad rows, then its manifest entry: until that exists, it is not done."""
        if vectors is not None:
            self._write_atomic(self.vectors_path(key), lambda path: pq.write_table(vectors, path, filesystem=self.fs))
        if errors:
            self._write_text(self._path("_errors", f"{key}.jsonl"),
                             "".join(json.dumps(e, default=_json_value) + "\n" for e in errors))
        self._write_text(self._path("_manifest", f"{key}.json"), json.dumps(stats))

    def read_vectors(self, key: str, columns: list[str] | None = None) -> pa.Table | None:
        """A committed piece's vectors (None for a piece without rows)."""
        try:
            return pq.read_table(self.vectors_path(key), columns=columns, filesystem=self.fs)
        except FileNotFoundError:
            return None

    def drop_rows(self, key: str, rows: list[int], reports: list[dict]) -> None:
        """Remove rows of a committed piece (listed with their reasons in _errors/<key>.duplicates.jsonl first,
        so a kill half-way loses no report) and lower its manifest's row count."""
        report_path = self._path("_errors", f"{key}{DUPLICATES}")
        earlier = self._read_lines(report_path)
        self._write_text(report_path, "".join(dict.fromkeys(
            earlier + [json.dumps(report, default=_json_value) + "\n" for report in reports])))
        table = self.read_vectors(key)
        found = table.column(0).take(pa.array(rows)).to_pylist()
        if [repr(value) for value in found] != [repr(report["id"]) for report in reports]:
            raise JobError(f"piece {key} of {self.uri} changed while its duplicates were removed; run the job again")
        keep = np.ones(len(table), bool)
        keep[rows] = False
        self._write_atomic(self.vectors_path(key),
                           lambda path: pq.write_table(table.filter(pa.array(keep)), path, filesystem=self.fs))
        manifest = self._path("_manifest", f"{key}.json")
        stats = self._read_json(manifest)
        self._write_text(manifest, json.dumps({**stats, "rows": int(keep.sum())}))

    def read_marker(self, name: str):
        return (self._read_json(self._path("_manifest", name)) or {}).get("value")

    def write_marker(self, name: str, value) -> None:
        self._write_text(self._path("_manifest", name), json.dumps({"value": value}))

    def _read_lines(self, path: str) -> list[str]:
        try:
            with self.fs.open_input_stream(path) as handle:
                return handle.read().decode().splitlines(keepends=True)
        except FileNotFoundError:
            return []

    def deduplicated(self) -> set[str]:
        """Keys of the pieces that gave up rows as duplicates."""
        return self._keys("_errors", DUPLICATES)

    def report_unreadable(self, key: str, where: str, reason: str) -> None:
        """Record that a file or piece could not be read (not committed: the next run tries it again)."""
        self._write_text(self._path("_errors", f"{key}{UNREADABLE}"),
                         json.dumps({"where": where, "error": reason}) + "\n")

    def unreadable(self) -> dict[str, str]:
        """{key: reason} of what this run reported unreadable."""
        reports = {key: self._read_json(self._path("_errors", f"{key}{UNREADABLE}")) or {}
                   for key in self._keys("_errors", UNREADABLE)}
        return {key: f"{report.get('where')}: {report.get('error')}" for key, report in reports.items()}

    def remove_pieces(self, keys: set[str]) -> None:
        """Forget committed pieces: the manifest entry first, so a kill half-way leaves them only unfinished."""
        for key in sorted(keys):
            self.fs.delete_file(self._path("_manifest", f"{key}.json"))
            for path in (self.vectors_path(key), self._path("_errors", f"{key}.jsonl"),
                         self._path("_errors", f"{key}{DUPLICATES}")):
                if self.fs.get_file_info(path).type == pafs.FileType.File:
                    self.fs.delete_file(path)

    def lease(self, timeout_s: float) -> OutputLease:
        return OutputLease(self, timeout_s)


class OutputLease:
    """One run at a time per output directory: a lease file naming its owner, refreshed by a heartbeat thread.

    A lease whose heartbeat is older than `timeout_s` belongs to a run that died (kill -9) and is taken over.
    Checking and taking it is one step: on a local disk under a file lock; on S3 by conditional writes (created
    only if absent, taken over or refreshed only if unchanged since read); on other object stores (no
    exclusive create through pyarrow) the lease is written, then read back after SETTLE_S to see whose it is."""

    def __init__(self, store: OutputStore, timeout_s: float):
        self.store, self.timeout_s = store, timeout_s
        self.path = store._path(LEASE_FILE)
        self.conditional = conditional_object(store.uri, LEASE_FILE) if not store.local else None
        self.record = {"owner": uuid.uuid4().hex, "host": socket.gethostname(), "pid": os.getpid()}
        self.etag: str | None = None  # S3: the lease object's ETag as this run last wrote it
        self.lost = False
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._beat, name="output-lease", daemon=True)

    def __enter__(self) -> OutputLease:
        self.store.fs.create_dir(self.store.root, recursive=True)
        if self.conditional:
            self._take_conditionally()
        else:
            exclusive = locked(Path(self.path).with_suffix(".lock")) if self.store.local else contextlib.nullcontext()
            with exclusive:
                current = self.store._read_json(self.path)  # None also for a lease left half-written
                if current is not None and self._fresh(current):
                    self._refuse(current)
                self._write()
            if not self.store.local:
                time.sleep(SETTLE_S)
                if not self._owned():
                    self._refuse(self.store._read_json(self.path) or {})
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()
        if self._owned():
            self.store.fs.delete_file(self.path)

    def check(self) -> None:
        """Raise JobError when another run has taken the output over (before changing what is committed)."""
        if self.lost:
            raise JobError(f"another run took over {self.store.uri} while this one ran; run the job again")

    def _fresh(self, holder: dict) -> bool:
        return time.time() - holder.get("heartbeat", 0) <= self.timeout_s

    def _payload(self) -> bytes:
        return json.dumps({**self.record, "heartbeat": time.time()}).encode()

    def _take_conditionally(self) -> None:
        """S3: create the lease if there is none, or replace a stale one if it is still the one read; a run
        that loses either race reads the winner's lease and refuses."""
        current = self.conditional.read()
        if current is None:
            self.etag = self.conditional.create(self._payload())
        else:
            holder = _json_or_empty(current[0])
            if holder and self._fresh(holder):
                self._refuse(holder)
            self.etag = self.conditional.replace(self._payload(), current[1])
        if self.etag is None:
            winner = self.conditional.read()
            self._refuse(_json_or_empty(winner[0]) if winner else {})

    def _write(self) -> None:
        payload = self._payload()
        if self.conditional:
            self.etag = self.conditional.replace(payload, self.etag)
            if self.etag is None:
                raise LeaseTaken
        elif not self.store.local:
            with self.store.fs.open_output_stream(self.path) as out:  # an object store's put is atomic
                out.write(payload)
        else:
            partial = f"{self.path}.{self.record['owner']}"
            with open(partial, "wb") as out:
                out.write(payload)
            os.replace(partial, self.path)

    def _owned(self) -> bool:
        return (self.store._read_json(self.path) or {}).get("owner") == self.record["owner"]

    def _refuse(self, holder: dict) -> None:
        age = time.time() - holder.get("heartbeat", time.time())
        raise ConfigError(
            f"output.path: {redact(self.store.uri)} is being written by another run (host {holder.get('host')}, pid "
            f"{holder.get('pid')}, heartbeat {age:.0f} s ago); wait for it to finish or use another output.path "
            f"(a run that died is taken over {self.timeout_s:g} s after its last heartbeat)"
        )

    def _beat(self) -> None:
        """Refresh the heartbeat; a failed refresh is retried, and the lease counts as lost once none has
        succeeded for timeout_s or another run's lease is found in its place."""
        last = time.monotonic()
        while not self._stop.wait(self.timeout_s / 4):
            try:
                if not self._owned():
                    self.lost = True
                    return
                self._write()
                last = time.monotonic()
            except LeaseTaken:
                self.lost = True
                return
            except Exception:  # noqa: BLE001 -- storage hiccups: retried until timeout_s
                if time.monotonic() - last > self.timeout_s:
                    self.lost = True
                    return


class LeaseTaken(Exception):
    """S3: the lease object changed since this run wrote it: another run took it over."""


def _json_or_empty(content: bytes) -> dict:
    try:
        return json.loads(content)
    except ValueError:  # a lease left half-written by a store without atomic puts
        return {}


def _fsync(path: str) -> None:
    descriptor = os.open(path, os.O_RDONLY)
    try:
        os.fsync(descriptor)
    finally:
        os.close(descriptor)


def _json_value(value) -> str:
    """Ids of any parquet type in the error reports: bytes as text (invalid UTF-8 escaped), others as str()."""
    return value.decode("utf-8", "backslashreplace") if isinstance(value, bytes) else str(value)

"""The output directory of a batch-embedding run: one parquet file per finished input piece, its bad rows,
and a manifest of finished pieces that makes re-runs skip them.

    <output>/<piece key>.parquet          id + embedding, written whole, then renamed into place
    <output>/_errors/<piece key>.jsonl    rows that could not be embedded, with the reason
    <output>/_manifest/<piece key>.json   written last: the piece is done (rows, errors, tokens)
    <output>/_manifest/_job.json          the settings the vectors were made with
Names starting with "_" are skipped by parquet readers, so `pyarrow.dataset(<output>)` reads only vectors.
"""

from __future__ import annotations

import json
import posixpath
import uuid

import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from raylib.config import ConfigError
from raylib.storage import resolve

JOB_FILE = "_job.json"


class OutputStore:
    def __init__(self, uri: str):
        self.uri = uri
        self.fs, self.root = resolve(uri)

    def _path(self, *parts: str) -> str:
        return posixpath.join(self.root, *parts)

    def _write_atomic(self, final: str, write) -> None:
        """Write through a temporary name, then move into place, so a reader never sees half a file."""
        temporary = self._path("_tmp", f"{uuid.uuid4().hex}-{posixpath.basename(final)}")
        self.fs.create_dir(posixpath.dirname(temporary), recursive=True)
        self.fs.create_dir(posixpath.dirname(final), recursive=True)
        write(temporary)
        self.fs.move(temporary, final)

    def _write_text(self, final: str, text: str) -> None:
        def write(path: str) -> None:
            with self.fs.open_output_stream(path) as out:
                out.write(text.encode())

        self._write_atomic(final, write)

    def vectors_path(self, key: str) -> str:
        return self._path(f"{key}.parquet")

    def finished(self) -> set[str]:
        """Keys of the committed pieces (one directory listing, no file reads)."""
        selector = pafs.FileSelector(self._path("_manifest"), allow_not_found=True)
        names = (posixpath.basename(info.path) for info in self.fs.get_file_info(selector))
        return {name[: -len(".json")] for name in names if name.endswith(".json") and name != JOB_FILE}

    def discard_temporary(self) -> None:
        """Remove half-written files that a killed run left behind."""
        self.fs.delete_dir_contents(self._path("_tmp"), missing_dir_ok=True)

    def claim(self, settings: dict) -> None:
        """Record the run's settings, or refuse an output directory that holds vectors made another way."""
        path = self._path("_manifest", JOB_FILE)
        if self.fs.get_file_info(path).type == pafs.FileType.File:
            with self.fs.open_input_stream(path) as handle:
                previous = json.loads(handle.read())
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
            self._write_text(self._path("_errors", f"{key}.jsonl"), "".join(json.dumps(e) + "\n" for e in errors))
        self._write_text(self._path("_manifest", f"{key}.json"), json.dumps(stats))

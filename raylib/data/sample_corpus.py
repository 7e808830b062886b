"""A corpus of real English text that exists on every machine with this project installed: the Python
language reference's help topics and the docstrings of the standard library and of numpy (read from source,
nothing imported or downloaded). Used by the demo, the tests and the benchmarks.

    python -m raylib.data.sample_corpus --out examples/data/docs --shards 4 --limit 2000
"""

from __future__ import annotations

import argparse
import ast
import json
import sys
import sysconfig
from collections.abc import Iterator
from pathlib import Path

import numpy
import pyarrow as pa
import pyarrow.parquet as pq

MIN_CHARS, MAX_CHARS = 80, 2500
SKIPPED_DIRS = {"test", "tests", "idle_test", "site-packages", "lib2to3", "idlelib", "turtledemo", "ensurepip"}


def _help_topics() -> Iterator[tuple[str, str]]:
    from pydoc_data.topics import topics

    for name in sorted(topics):
        for number, paragraph in enumerate(topics[name].split("\n\n")):
            yield f"pydoc:{name}#{number}", paragraph.strip()


def _source_docstrings(root: Path, label: str) -> Iterator[tuple[str, str]]:
    for path in sorted(root.rglob("*.py")):
        relative = path.relative_to(root)
        if SKIPPED_DIRS & set(relative.parts):
            continue
        try:
            tree = ast.parse(path.read_text(encoding="utf-8"))
        except (SyntaxError, UnicodeDecodeError):
            continue
        for node in ast.walk(tree):
            if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)):
                doc = ast.get_docstring(node)
                if doc:
                    yield f"{label}/{relative.as_posix()}:{getattr(node, 'lineno', 0)}", doc


def sample_documents(limit: int | None = None) -> list[dict]:
    """Rows {id, text} of distinct texts between MIN_CHARS and MAX_CHARS long, in a fixed order."""
    sources = (
        _help_topics(),
        _source_docstrings(Path(sysconfig.get_paths()["stdlib"]), "stdlib"),
        _source_docstrings(Path(numpy.__file__).parent, "numpy"),
    )
    rows, seen = [], set()
    for source in sources:
        for doc_id, text in source:
            if MIN_CHARS <= len(text) <= MAX_CHARS and text not in seen:
                seen.add(text)
                rows.append({"id": doc_id, "text": text})
                if limit is not None and len(rows) >= limit:
                    return rows
    return rows


def write_shards(rows: list[dict], out: Path, shards: int, fmt: str) -> list[Path]:
    """Write rows round-robin into `shards` files of format jsonl or parquet under `out`."""
    out.mkdir(parents=True, exist_ok=True)
    paths = []
    for shard in range(shards):
        part = rows[shard::shards]
        path = out / f"part-{shard:05d}.{fmt}"
        if fmt == "jsonl":
            path.write_text("".join(json.dumps(row) + "\n" for row in part))
        else:
            pq.write_table(pa.Table.from_pylist(part), path, row_group_size=256)
        paths.append(path)
    return paths


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Write the sample corpus as jsonl or parquet shards.")
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--shards", type=int, default=4)
    parser.add_argument("--limit", type=int, default=None)
    parser.add_argument("--format", choices=("jsonl", "parquet"), default="jsonl")
    args = parser.parse_args(argv)
    rows = sample_documents(args.limit)
    write_shards(rows, args.out, args.shards, args.format)
    print(f"wrote {len(rows)} documents in {args.shards} {args.format} shards to {args.out}", file=sys.stderr)


if __name__ == "__main__":
    main()

"""The embed job's progress line: pieces and input rows done of the run's total, ETA, rows/s and tokens/s (the
rates last: a narrow terminal cuts the end).

Parquet pieces know their rows; jsonl pieces only their bytes, so their rows are estimated from the rows per byte
of the jsonl pieces done so far (shown with a ~)."""

from __future__ import annotations

import time
from collections.abc import Callable

import pyarrow as pa
import pyarrow.compute as pc

from raylib.console import ProgressLine, duration
from raylib.data.sources import Piece


def _extent(piece: Piece) -> int:
    """A piece's rows (parquet) or bytes (jsonl)."""
    return sum(span.stop - span.start for span in piece.spans)


class EmbedProgress:
    """`with EmbedProgress(pieces) as progress:` then `progress.add(counts)` per batch of committed pieces; the
    line is ended on leaving."""

    def __init__(self, pieces: list[Piece], line: ProgressLine | None = None,
                 clock: Callable[[], float] = time.monotonic):
        self.pieces = {piece.key: piece for piece in pieces}
        self.exact_rows = sum(_extent(piece) for piece in pieces if piece.format == "parquet")
        self.jsonl_bytes = sum(_extent(piece) for piece in pieces if piece.format != "parquet")
        self.line = line or ProgressLine(clock=clock)
        self.clock, self.started = clock, clock()
        self.done = {"pieces": 0, "rows": 0, "tokens": 0}  # rows: input rows, bad ones included
        self.jsonl_done = [0, 0]  # rows, bytes

    def add(self, counts: pa.Table) -> None:
        """Count a batch of committed pieces (the writer's `piece`, `rows`, `errors`, `tokens` columns) and show
        the line."""
        for key, rows in zip(counts.column("piece").to_pylist(),
                             pc.add(counts.column("rows"), counts.column("errors")).to_pylist()):
            piece = self.pieces[key]
            if piece.format != "parquet":
                self.jsonl_done[0] += rows
                self.jsonl_done[1] += _extent(piece)
            self.done["pieces"] += 1
            self.done["rows"] += rows
        self.done["tokens"] += int(pc.sum(counts.column("tokens")).as_py() or 0)
        self.line.show(self.text())

    def expected_rows(self) -> int | None:
        """Input rows of all the pieces: exact for parquet, estimated for jsonl (None before any jsonl piece)."""
        if not self.jsonl_bytes:
            return self.exact_rows
        rows, size = self.jsonl_done
        return self.exact_rows + round(self.jsonl_bytes * rows / size) if size else None

    def text(self) -> str:
        seconds = max(self.clock() - self.started, 1e-9)
        pieces, rows = self.done["pieces"], self.done["rows"]
        total = self.expected_rows()
        if total is not None and rows:
            left = max(total - rows, 0) / (rows / seconds)
        else:
            left = (len(self.pieces) - pieces) / (pieces / seconds) if pieces else None
        approx = "~" if self.jsonl_bytes and pieces < len(self.pieces) else ""
        return (f"embedding: {pieces}/{len(self.pieces)} pieces, {rows}/{approx}{'?' if total is None else total} rows, "
                f"ETA {'?' if left is None else duration(left)}, {rows / seconds:.1f} rows/s, "
                f"{self.done['tokens'] / seconds:.0f} tokens/s")

    def __enter__(self) -> EmbedProgress:
        self.line.show(self.text())  # on a terminal, before the first piece is done
        return self

    def __exit__(self, *exc) -> None:
        self.line.close()

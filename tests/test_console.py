"""What a person sees: the progress line (in place on a terminal, every 30 s elsewhere), the embed job's counts,
rates and ETA, the log file that takes what Ray writes, and the summary's cost figures. No Ray here."""

import io
import os

import pyarrow as pa

from raylib import console
from raylib.console import JobLog, ProgressLine, duration
from raylib.data.sources import Piece, Span
from raylib.embed.progress import EmbedProgress
from raylib.embed.run import EmbedSummary


class Clock:
    def __init__(self):
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def piece(key: str, fmt: str, start: int, stop: int) -> Piece:
    return Piece(key, (Span(f"/in/{key}", fmt, start, stop, "f"),))


def counts(*rows: tuple[str, int, int, int]) -> pa.Table:
    return pa.Table.from_pylist([dict(zip(("piece", "rows", "errors", "tokens"), row)) for row in rows])


def test_a_job_log_gets_one_line_at_most_every_30_seconds():
    stream, clock = io.StringIO(), Clock()
    line = ProgressLine(stream, in_place=False, clock=clock)
    for step, now in enumerate([1, 29.9, 30, 45, 59.9, 61, 200]):
        clock.now = 1000 + now
        line.show(f"step {step}")
    line.close()
    assert stream.getvalue() == "step 2\nstep 5\nstep 6\n"


def test_a_terminal_gets_one_line_rewritten_in_place():
    stream = io.StringIO()
    line = ProgressLine(stream, in_place=True, clock=Clock())
    line.show("embedding: 10 rows")
    line.show("embedding: 9 rows")  # shorter: the rest of the longer text is blanked
    line.close()
    assert stream.getvalue() == "\rembedding: 10 rows\rembedding: 9 rows \n"


def test_embed_progress_counts_rows_rates_and_eta_of_parquet_pieces():
    stream, clock = io.StringIO(), Clock()
    pieces = [piece("a", "parquet", 0, 100), piece("b", "parquet", 100, 300), piece("c", "parquet", 0, 100)]
    with EmbedProgress(pieces, ProgressLine(stream, in_place=True, clock=clock), clock=clock) as progress:
        clock.now += 10
        progress.add(counts(("a", 95, 5, 1000), ("b", 200, 0, 3000)))
    assert stream.getvalue().endswith(
        "\rembedding: 2/3 pieces, 300/400 rows, ETA 3s, 30.0 rows/s, 400 tokens/s\n")


def test_jsonl_rows_are_estimated_from_the_bytes_of_pieces_done():
    clock = Clock()
    pieces = [piece("a", "jsonl", 0, 1000), piece("b", "jsonl", 1000, 4000), piece("c", "parquet", 0, 50)]
    progress = EmbedProgress(pieces, ProgressLine(io.StringIO(), in_place=False, clock=clock), clock=clock)
    assert progress.text() == "embedding: 0/3 pieces, 0/~? rows, ETA ?, 0.0 rows/s, 0 tokens/s"
    clock.now += 100
    progress.add(counts(("c", 50, 0, 500)))  # no jsonl piece yet: no estimate; ETA from pieces
    assert progress.text() == "embedding: 1/3 pieces, 50/~? rows, ETA 3m20s, 0.5 rows/s, 5 tokens/s"
    progress.add(counts(("a", 10, 0, 100)))  # 10 rows in 1000 bytes: ~30 more in the other 3000
    assert progress.text().startswith("embedding: 2/3 pieces, 60/~90 rows, ETA 50s, 0.6 rows/s")
    progress.add(counts(("b", 33, 1, 300)))
    assert progress.text().startswith("embedding: 3/3 pieces, 94/94 rows")


def test_durations_read_as_a_person_would():
    assert [duration(s) for s in (4.4, 59.6, 605, 7 * 3600 + 125)] == ["4s", "1m00s", "10m05s", "7h02m"]


def test_the_log_takes_native_writes_while_the_project_keeps_the_terminal(capfd, monkeypatch):
    monkeypatch.delenv(console.VERBOSE_ENV, raising=False)
    with JobLog("unit") as log:
        os.write(1, b"a native stdout line\n")
        os.write(2, b"[E core_worker.cc:1] a native stderr line\n")
        print("our own line", file=console.stderr(), flush=True)
    log.announce()
    out, err = capfd.readouterr()
    try:
        assert "native" not in out + err and "our own line" in err and f"log: {log.path}" in err
        assert log.path.read_text() == "a native stdout line\n[E core_worker.cc:1] a native stderr line\n"
    finally:
        log.path.unlink()

    with JobLog("unit") as empty:
        pass
    assert empty.path is None  # nothing written: no file left, nothing named

    monkeypatch.setenv(console.VERBOSE_ENV, "1")
    with JobLog("unit") as verbose:
        os.write(2, b"shown\n")
    assert "shown" in capfd.readouterr().err and verbose.path is None


def test_summary_keeps_its_fields_and_adds_cost_figures():
    summary = EmbedSummary(rows=1000, errors=2, tokens=80_000, pieces=4, skipped_pieces=1, seconds=20.0,
                           output="/out", actors=2, cpus=2.5, gpus=2.0, embed_seconds=10.0)
    fields = dict(part.split("=", 1) for part in summary.line().split()[1:])
    assert fields["rows"] == "1000" and fields["rows/s"] == "50.0" and fields["tokens/s"] == "4000"
    assert fields["rows/s/actor"] == "50.0" and fields["tokens/cpu-s"] == "3200" and fields["tokens/gpu-s"] == "4000"
    assert summary.line().endswith(" output=/out")

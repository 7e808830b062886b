"""The calibration ranges of an int8 output: computed once per output directory, before its first piece is
embedded, from the vectors of a sample of its input, and kept in <output>/_manifest/_quantization.json. Every
piece, in this run and in every re-run (after a kill, or with files added), is quantized with the same ranges,
so pieces committed by different runs compare with each other.

The sample: the first good rows of up to SAMPLE_PIECES pieces spread evenly over the input plan, about
`output.calibration_rows` rows in all, embedded by the job's own model actors (raylib.embed.actor).
"""

from __future__ import annotations

import math

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from raylib.config import EmbedJobConfig, InputConfig, JobError
from raylib.data.sources import Piece, UnreadableInput, read_piece, read_pieces
from raylib.data.tokens import TOKENS, token_column
from raylib.embed.actor import embed_with_actors
from raylib.embed.store import OutputStore
from raylib.embed.vectors import read_floats
from raylib.models.quantize import calibration_ranges
from raylib.models.tokenizer import PromptTokenizer

MARKER = "_quantization.json"
SAMPLE_PIECES = 16


def output_ranges(store: OutputStore, pieces: list[Piece], config: EmbedJobConfig,
                  tokenizer: PromptTokenizer) -> np.ndarray | None:
    """The output's int8 ranges (2, dimensions): the stored ones, or calibrated now and stored; None for the
    other dtypes."""
    if config.output.dtype != "int8":
        return None
    stored = store.read_marker(MARKER)
    if stored is None:
        stored = _calibrate(pieces, config, tokenizer).tolist()
        store.write_marker(MARKER, stored)
    return np.asarray(stored, dtype=np.float32)


def _calibrate(pieces: list[Piece], config: EmbedJobConfig, tokenizer: PromptTokenizer) -> np.ndarray:
    count = min(SAMPLE_PIECES, len(pieces))
    sample = [pieces[index * len(pieces) // count] for index in range(count)]
    rows = math.ceil(config.output.calibration_rows / max(count, 1))
    dataset = read_pieces(sample, config.compute.tokenizer_cpus, _sample_tokens, config=config.input,
                          tokenizer=tokenizer, input_type=config.input_type, rows=rows)
    batches = embed_with_actors(dataset, config).iter_batches(batch_size=None, batch_format="pyarrow")
    vectors = [read_floats(batch) for batch in batches if len(batch)]
    found = sum(len(part) for part in vectors)
    if found < 2:
        raise JobError(f"output.dtype int8: the calibration sample ({count} input pieces) holds {found} good rows; "
                       "int8 needs at least 2 to set its ranges; embed more rows or use float32")
    return calibration_ranges(np.concatenate(vectors))


def _sample_tokens(piece: Piece, config: InputConfig, tokenizer: PromptTokenizer, input_type: str,
                   rows: int) -> pa.Table:
    """Token ids of the first `rows` good rows of a piece; none of a piece that cannot be read (the job's own
    pass reports it)."""
    try:
        table = read_piece(piece, config)
    except UnreadableInput:
        return pa.table({TOKENS: pa.array([], pa.list_(pa.int32()))})
    table = table.filter(pc.is_null(table.column("_error"))).slice(0, rows)
    return pa.table({TOKENS: token_column(table, tokenizer, input_type)})

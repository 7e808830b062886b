"""Float vectors as int8, uint8, binary or ubinary codes, by sentence-transformers' `quantize_embeddings`.

The scheme (sentence_transformers.util.quantization.quantize_embeddings), for vectors x of shape (rows, dims):

    int8, uint8   scalar quantisation per dimension with calibration `ranges` (2, dims) float32: row 0 the
                  minimum, row 1 the maximum of each dimension over a sample of vectors (`calibration_ranges`).
                  step = (max - min) / 255 (1 where max == min); q = clip(floor((x - min) / step), 0, 255);
                  uint8 is q, int8 is q - 128. Values outside the calibration range clip to its ends (and
                  float32 rounding may put the maximum itself in 254).
    ubinary       the sign bits x > 0, packed 8 per uint8, first dimension in the highest bit (numpy.packbits):
                  ceil(dims / 8) bytes per vector, the last byte padded with 0 bits
    binary        the same bytes minus 128, as int8

Scoring: `dequantize` maps codes back to approximate float vectors, to score against float queries (int8: no
measurable loss of NDCG@10 on the sample retrieval set; binary as +-1 vectors: -0.026). Codes also compare with
each other, more coarsely: int8 dot products (the codes are not centred per dimension: -0.03 to -0.05) and the
Hamming distance of packed bits (-0.06).
"""

from __future__ import annotations

import numpy as np

PRECISIONS = ("int8", "uint8", "binary", "ubinary")
SCALAR = ("int8", "uint8")  # need calibration ranges
SCALAR_SCHEME = "uint8 = clip(floor((x - min) / ((max - min) / 255)), 0, 255); int8 = uint8 - 128"


def calibration_ranges(vectors: np.ndarray) -> np.ndarray:
    """(2, dims) float32: per-dimension minimum and maximum of (rows, dims) sample vectors, rows >= 2."""
    vectors = np.asarray(vectors, dtype=np.float32)
    if vectors.ndim != 2 or len(vectors) < 2:
        raise ValueError(f"calibration needs at least 2 vectors as (rows, dims), got shape {vectors.shape}")
    return np.stack([vectors.min(axis=0), vectors.max(axis=0)])


def quantize(vectors: np.ndarray, precision: str, ranges: np.ndarray | None = None) -> np.ndarray:
    """Codes of (rows, dims) float vectors: (rows, dims) for int8/uint8 (which need `ranges`, never calibrated
    on the vectors themselves), (rows, ceil(dims / 8)) for binary/ubinary."""
    if precision not in PRECISIONS:
        raise ValueError(f"precision {precision!r}: choose one of {', '.join(PRECISIONS)}")
    vectors = np.asarray(vectors, dtype=np.float32)
    if precision in SCALAR:
        if ranges is None:
            raise ValueError(f"{precision} needs calibration ranges (see calibration_ranges)")
        if np.shape(ranges) != (2, vectors.shape[1]):
            raise ValueError(f"ranges of shape {np.shape(ranges)} do not fit vectors of {vectors.shape[1]} dimensions")
    # imported here: sentence-transformers takes seconds to import, and most jobs never quantize
    from sentence_transformers.util.quantization import quantize_embeddings

    return quantize_embeddings(vectors, precision, ranges=None if ranges is None else np.asarray(ranges, np.float32))


def dequantize(codes: np.ndarray, precision: str, dimensions: int, ranges: np.ndarray | None = None) -> np.ndarray:
    """Approximate (rows, dimensions) float32 vectors of codes, to score against float queries: int8/uint8 the
    centre of each code's bucket (needs the `ranges` they were made with); binary/ubinary +-1/sqrt(dimensions)
    by sign bit (unit length)."""
    codes = np.asarray(codes)
    if precision in SCALAR:
        if ranges is None:
            raise ValueError(f"{precision} codes need the calibration ranges they were made with")
        ranges = np.asarray(ranges, dtype=np.float32)
        step = (ranges[1] - ranges[0]) / 255
        step = np.where(step == 0, 1, step)
        buckets = codes.astype(np.float32) + (128 if precision == "int8" else 0)
        return (ranges[0] + (buckets + 0.5) * step).astype(np.float32)
    if precision not in PRECISIONS:
        raise ValueError(f"precision {precision!r}: choose one of {', '.join(PRECISIONS)}")
    packed = codes.astype(np.int16) + 128 if precision == "binary" else codes
    bits = np.unpackbits(packed.astype(np.uint8), axis=-1, count=dimensions)
    return ((bits.astype(np.float32) * 2 - 1) / np.sqrt(dimensions)).astype(np.float32)

"""The `embedding` column of the output in each `output.dtype`, the schema metadata that says how it was made,
and the way back to float32 for readers.

    float32, float16   fixed-size list of floats (dimensions)
    int8               fixed-size list of int8 (dimensions): sentence-transformers' scalar quantisation with the
                       output's calibration ranges (raylib.models.quantize, raylib.embed.calibrate)
    binary             fixed-size list of uint8 (ceil(dimensions / 8)): sign bits x > 0 packed 8 per byte, first
                       dimension in the highest bit (sentence-transformers' "ubinary")

Every file's schema metadata holds METADATA_KEY: JSON {"dtype", "dimensions", "scheme", "made_with"} and, for
int8, "ranges" [[min per dimension], [max per dimension]]; "made_with" says which model made the vectors and how. Files without it (older outputs) hold floats.
"""

from __future__ import annotations

import json

import numpy as np
import pyarrow as pa

from raylib.models.quantize import SCALAR_SCHEME, dequantize, quantize

METADATA_KEY = b"raylib.embedding"
SCHEMES = {
    "float32": "float32",
    "float16": "float16",
    "int8": f"sentence-transformers int8, per dimension: {SCALAR_SCHEME}",
    "binary": "sentence-transformers ubinary: numpy.packbits(x > 0), first dimension in the highest bit",
}
PRECISION = {"int8": "int8", "binary": "ubinary"}  # output dtype -> raylib.models.quantize precision


def vector_bytes(dtype: str, dimensions: int) -> int:
    """Bytes of one stored vector."""
    return {"float32": 4 * dimensions, "float16": 2 * dimensions, "int8": dimensions,
            "binary": -(-dimensions // 8)}[dtype]


def encode(vectors: np.ndarray, dtype: str, ranges: np.ndarray | None = None) -> pa.FixedSizeListArray:
    """(rows, dimensions) float32 vectors as the `embedding` column in `dtype` (int8 with its `ranges`)."""
    if dtype in PRECISION:
        codes = quantize(vectors, PRECISION[dtype], ranges)
    else:
        codes = np.asarray(vectors, dtype=dtype)
    return pa.FixedSizeListArray.from_arrays(codes.reshape(-1), codes.shape[1])


def schema_metadata(dtype: str, dimensions: int, ranges: np.ndarray | None = None,
                    made_with: dict | None = None) -> dict[bytes, bytes]:
    """The schema metadata of every output file: how its `embedding` column was made (`made_with`: the model
    settings, the model files' fingerprint, the input type and the project's version)."""
    description = {"dtype": dtype, "dimensions": dimensions, "scheme": SCHEMES[dtype]}
    if dtype == "int8":
        description["ranges"] = np.asarray(ranges, dtype=np.float32).tolist()
    if made_with:
        description["made_with"] = made_with
    return {METADATA_KEY: json.dumps(description).encode()}


def read_floats(table: pa.Table) -> np.ndarray:
    """The `embedding` column of a table of the output as (rows, dimensions) float32: floats as they are,
    int8 codes at the centres of their buckets, binary as +-1/sqrt(dimensions) per sign bit (unit vectors, for
    scoring against float queries)."""
    column = table.column("embedding").combine_chunks()
    width = column.type.list_size
    codes = column.flatten().to_numpy(zero_copy_only=False).reshape(len(table), width)
    described = (table.schema.metadata or {}).get(METADATA_KEY)
    if described is None:
        if not pa.types.is_floating(column.type.value_type):
            raise ValueError(f"embedding column of {column.type} without {METADATA_KEY.decode()} schema metadata: "
                             "cannot tell how to read it")
        return codes.astype(np.float32)
    description = json.loads(described)
    dtype = description["dtype"]
    if dtype not in SCHEMES:
        raise ValueError(f"embedding dtype {dtype!r} is not one this version reads ({', '.join(SCHEMES)})")
    if dtype in PRECISION:
        return dequantize(codes, PRECISION[dtype], description["dimensions"], description.get("ranges"))
    return codes.astype(np.float32)

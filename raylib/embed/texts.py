"""Vectors of a set of texts, for the stages that need them in memory (evaluation, mining): embedded in this
process, or by the batch-embedding job (run.py) when there are many."""

import json
import tempfile
from pathlib import Path

import numpy as np
import pyarrow.dataset as pads

from raylib.config import ComputeConfig, EmbedderConfig, EmbedJobConfig
from raylib.embed.run import run_embed
from raylib.embed.vectors import read_floats
from raylib.models.embedder import Embedder


def vectors_with_pipeline(model: EmbedderConfig, texts: dict[str, str], compute: ComputeConfig,
                          input_type: str = "document") -> np.ndarray:
    """The texts embedded by the Ray Data embed pipeline (the batch-embedding job), in the dict's order."""
    with tempfile.TemporaryDirectory() as scratch:
        source = Path(scratch) / "texts" / "texts.jsonl"
        source.parent.mkdir()
        source.write_text("".join(json.dumps({"id": key, "text": text}) + "\n" for key, text in texts.items()))
        output = Path(scratch) / "vectors"
        run_embed(EmbedJobConfig(input={"path": str(source.parent)}, model=model, input_type=input_type,
                                 output={"path": str(output)}, compute=compute))
        table = pads.dataset(output, format="parquet").to_table()
        row_of = {key: row for row, key in enumerate(table.column("id").to_pylist())}
        vectors = read_floats(table)
    return vectors[[row_of[key] for key in texts]]


def embed_texts(model: EmbedderConfig, embedder: Embedder, texts: dict[str, str], input_type: str,
                pipeline_above: int, compute: ComputeConfig | None) -> np.ndarray:
    """Vectors of `texts` in order: in this process (`embedder`, opened from `model`), or through the Ray Data
    pipeline when there are more than `pipeline_above`."""
    if len(texts) > pipeline_above:
        return vectors_with_pipeline(model, texts, compute or ComputeConfig(), input_type)
    return embedder.encode(list(texts.values()), input_type=input_type)

"""The middle stage of batch embedding: model actors (replicas) that embed the token ids of whole pieces."""

from __future__ import annotations

import json

import numpy as np
import pyarrow as pa
import torch

from raylib.data.tokens import TOKENS
from raylib.models.embedder import Embedder
from raylib.models.spec import resolve_spec


class EmbedActor:
    """A model replica: embeds the token ids of whole pieces in token-budget batches."""

    def __init__(self, model_json: str, input_type: str, batch_tokens: int, threads: int):
        torch.set_num_threads(threads)
        self.embedder = Embedder(resolve_spec(**json.loads(model_json)))  # on the GPU Ray gave it, if any
        self.prompt_length = self.embedder.tokenize.prompt_length(input_type)
        self.batch_tokens = batch_tokens

    def __call__(self, table: pa.Table) -> pa.Table:
        column = table.column(TOKENS).combine_chunks()
        offsets, values = column.offsets.to_numpy(), column.values.to_numpy()
        lengths = np.diff(offsets)
        valid = np.flatnonzero(column.is_valid().to_numpy(zero_copy_only=False))
        vectors = np.zeros((len(table), self.embedder.dimensions), dtype=np.float32)
        if len(valid):
            sequences = [values[offsets[row] : offsets[row + 1]] for row in valid]
            vectors[valid] = self.embedder.embed_tokens(sequences, self.batch_tokens,
                                                        [self.prompt_length] * len(sequences))
        embedding = pa.FixedSizeListArray.from_arrays(vectors.reshape(-1), self.embedder.dimensions)
        return (table.drop_columns([TOKENS]).append_column("embedding", embedding)
                .append_column("_tokens", pa.array(lengths, pa.int64())))

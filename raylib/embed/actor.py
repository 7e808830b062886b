"""The middle stage of batch embedding: model actors (replicas) that embed the token ids of whole pieces and
encode the vectors in the output's dtype."""

from __future__ import annotations

import json
import math

import numpy as np
import pyarrow as pa
import ray

from raylib.config import EmbedJobConfig
from raylib.data.tokens import TOKENS
from raylib.embed.vectors import encode
from raylib.models.spec import resolve_spec


class EmbedActor:
    """A model replica: embeds the token ids of whole pieces in token-budget batches, as `dtype` vectors (int8
    with calibration `ranges`, see raylib.embed.vectors)."""

    def __init__(self, model_json: str, input_type: str, batch_tokens: int, threads: int, dtype: str = "float32",
                 ranges: list | None = None):
        import torch  # here, not at the top: the driver imports this module too, and needs neither

        from raylib.models.embedder import Embedder

        torch.set_num_threads(threads)
        self.embedder = Embedder(resolve_spec(**json.loads(model_json)))  # on the GPU Ray gave it, if any
        self.prompt_length = self.embedder.tokenize.prompt_length(input_type)
        self.batch_tokens = batch_tokens
        self.dtype, self.ranges = dtype, None if ranges is None else np.asarray(ranges, np.float32)

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
        embedding = encode(vectors, self.dtype, self.ranges)
        return (table.drop_columns([TOKENS]).append_column("embedding", embedding)
                .append_column("_tokens", pa.array(lengths, pa.int64())))


def embed_with_actors(dataset: ray.data.Dataset, config: EmbedJobConfig, dtype: str = "float32",
                      ranges: list | None = None) -> ray.data.Dataset:
    """The chain's model step: a pool of `compute.actors` EmbedActors with the resources the config asks for."""
    compute = config.compute
    return dataset.map_batches(
        EmbedActor,
        batch_size=None,
        batch_format="pyarrow",
        fn_constructor_kwargs={
            "model_json": config.model.model_dump_json(),
            "input_type": config.input_type,
            "batch_tokens": compute.batch_tokens,
            "threads": compute.threads_per_actor or math.ceil(compute.cpus_per_actor),
            "dtype": dtype,
            "ranges": ranges,
        },
        compute=ray.data.ActorPoolStrategy(size=compute.actors),
        num_cpus=compute.cpus_per_actor,
        num_gpus=compute.gpus_per_actor,
    )

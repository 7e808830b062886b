"""One model held in a process: token ids in, vectors out, rows of concurrent requests merged into token-budget
batches (`serve.batch` with a cost function), and the int8/uint8 calibration ranges.

A plain class: serve/app.py runs it as a model deployment behind the ingress when several models are served, and
inside the ingress replica itself when there is one (no hop between them). Either way it lives in a Serve replica.
"""

import asyncio
import time

import numpy as np
from ray import serve
from ray.serve.metrics import Histogram

from raylib.config import BatchingConfig
from raylib.data.sample_corpus import sample_documents
from raylib.models.embedder import Embedder
from raylib.models.quantize import calibration_ranges
from raylib.models.spec import resolve_spec
from serve.openai_api import shorten

CALIBRATION_DOCUMENTS = 256  # of raylib.data.sample_corpus, for int8/uint8 ranges


def padded_tokens(items: list[tuple[list[int], float, int]]) -> int:
    """Cost of a batch of (token ids, queued-at, prompt length) rows: rows x longest row."""
    return len(items) * max(len(item[0]) for item in items)


class EmbeddingModel:
    """One model; rows of concurrent requests are merged into token-budget batches when batching is enabled."""

    def __init__(self, model: dict, batching: dict):
        self.embedder = Embedder(resolve_spec(**model))
        self.batching = BatchingConfig.model_validate(batching)
        self.batch_tokens = max(self.batching.batch_tokens, self.embedder.spec.max_length)
        self.embed_rows.set_max_batch_size(self.batch_tokens)
        self.embed_rows.set_batch_wait_timeout_s(self.batching.max_wait_ms / 1000)
        self.forward_lock = asyncio.Lock()
        self.batch_rows = Histogram("embeddings_batch_rows", "rows per forward batch",
                                    boundaries=[1, 2, 4, 8, 16, 32, 64, 128, 256, 512])
        self.batch_size_tokens = Histogram("embeddings_batch_tokens", "padded tokens per forward batch",
                                           boundaries=[64, 256, 1024, 2048, 4096, 8192, 16384, 65536])
        self.queue_seconds = Histogram("embeddings_queue_seconds", "time a row waits for its batch",
                                       boundaries=[0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1, 5])
        self.calibration_lock = asyncio.Lock()
        self.calibration_vectors: np.ndarray | None = None

    async def embed(self, token_ids: list[list[int]], prompt_length: int = 0) -> np.ndarray:
        """Vectors (rows, dimensions) for token id rows whose first `prompt_length` tokens are their prompt,
        batched with other requests' rows when enabled."""
        if not self.batching.enabled:
            async with self.forward_lock:
                return await asyncio.to_thread(self.embedder.embed_tokens, token_ids, self.batch_tokens,
                                               [prompt_length] * len(token_ids))
        queued_at = time.monotonic()
        if len(token_ids) == 1:
            return (await self.embed_rows((token_ids[0], queued_at, prompt_length)))[None]
        rows = await asyncio.gather(*(self.embed_rows((ids, queued_at, prompt_length)) for ids in token_ids))
        return np.stack(rows)

    @serve.batch(max_batch_size=8192, batch_wait_timeout_s=0.005, batch_size_fn=padded_tokens)
    async def embed_rows(self, items: list[tuple[list[int], float, int]]) -> list[np.ndarray]:
        started = time.monotonic()
        for _, queued_at, _ in items:
            self.queue_seconds.observe(started - queued_at)
        self.batch_rows.observe(len(items))
        self.batch_size_tokens.observe(padded_tokens(items))
        vectors = await asyncio.to_thread(self.embedder.embed_tokens, [ids for ids, _, _ in items],
                                          self.batch_tokens, [length for _, _, length in items])
        return list(vectors)

    async def calibration_ranges(self, dimensions: int | None) -> np.ndarray:
        """int8/uint8 ranges (2, dimensions): per-dimension min and max of the model's vectors of the fixed
        calibration documents (embedded once per replica), cut to `dimensions` as requests are."""
        async with self.calibration_lock:
            if self.calibration_vectors is None:
                texts = [row["text"] for row in sample_documents(CALIBRATION_DOCUMENTS)]
                self.calibration_vectors = await asyncio.to_thread(self.embedder.encode, texts)
        return calibration_ranges(shorten(self.calibration_vectors, dimensions, self.embedder.spec.normalize))

    async def ready(self) -> bool:
        """Answered only once __init__ has loaded the model."""
        return True

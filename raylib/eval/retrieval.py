"""Retrieval evaluation of one model on one BEIR-style set: embed queries and corpus (in process for small
corpora, through the Ray Data embed pipeline for large ones), search, score."""

import json
import tempfile
from pathlib import Path

import numpy as np
import pyarrow.dataset as pads

from raylib.config import ComputeConfig, EmbedderConfig, EmbedJobConfig
from raylib.eval.beir import RetrievalSet
from raylib.eval.metrics import score_rankings
from raylib.eval.search import top_k
from raylib.models.embedder import Embedder


def vectors_with_pipeline(model: EmbedderConfig, texts: dict[str, str], compute: ComputeConfig,
                          input_type: str = "document") -> np.ndarray:
    """The texts embedded by the Ray Data embed pipeline (the batch-embedding job), in the dict's order."""
    from raylib.embed.pipeline import run_embed

    with tempfile.TemporaryDirectory() as scratch:
        source = Path(scratch) / "texts" / "texts.jsonl"
        source.parent.mkdir()
        source.write_text("".join(json.dumps({"id": key, "text": text}) + "\n" for key, text in texts.items()))
        output = Path(scratch) / "vectors"
        run_embed(EmbedJobConfig(input={"path": str(source.parent)}, model=model, input_type=input_type,
                                 output={"path": str(output)}, compute=compute))
        table = pads.dataset(output, format="parquet").to_table()
        row_of = {key: row for row, key in enumerate(table.column("id").to_pylist())}
        vectors = np.asarray(table.column("embedding").combine_chunks().flatten(), dtype=np.float32)
        vectors = vectors.reshape(len(table), -1)
    return vectors[[row_of[key] for key in texts]]


def embed_texts(model: EmbedderConfig, embedder: Embedder, texts: dict[str, str], input_type: str,
                pipeline_above: int, compute: ComputeConfig | None) -> np.ndarray:
    """Vectors of `texts` in order: in this process (`embedder`, opened from `model`), or through the Ray Data
    pipeline when there are more than `pipeline_above`."""
    if len(texts) > pipeline_above:
        return vectors_with_pipeline(model, texts, compute or ComputeConfig(), input_type)
    return embedder.encode(list(texts.values()), input_type=input_type)


def rank(data: RetrievalSet, model: EmbedderConfig, pipeline_above: int = 50_000,
         compute: ComputeConfig | None = None, search: str = "auto") -> dict[str, list[str]]:
    """Each query's top 100 document ids under `model`; corpora larger than `pipeline_above` documents are
    embedded by the Ray Data pipeline."""
    embedder = Embedder(model)
    corpus_vectors = embed_texts(model, embedder, data.corpus, "document", pipeline_above, compute)
    query_vectors = embedder.encode(list(data.queries.values()), input_type="query")
    _, indices = top_k(query_vectors, corpus_vectors, 100, backend=search)
    doc_ids = list(data.corpus)
    return {query: [doc_ids[index] for index in row] for query, row in zip(data.queries, indices)}


def evaluate(data: RetrievalSet, model: EmbedderConfig, **options) -> dict[str, float]:
    """NDCG@10, MRR@10, recall@1/10/100 of `model` on `data` (options as for `rank`)."""
    return score_rankings(rank(data, model, **options), data.qrels)

"""Retrieval evaluation of one model on one BEIR-style set: embed queries and corpus (in process for small
corpora, through the Ray Data embed pipeline for large ones), search, score."""

from raylib.config import ComputeConfig, EmbedderConfig
from raylib.data.beir import RetrievalSet
from raylib.embed.search import top_k
from raylib.embed.texts import embed_texts
from raylib.eval.metrics import score_rankings
from raylib.models.embedder import Embedder
from raylib.models.spec import resolve_spec


def rank(data: RetrievalSet, model: EmbedderConfig, pipeline_above: int = 50_000,
         compute: ComputeConfig | None = None, search: str = "auto") -> dict[str, list[str]]:
    """Each query's top 100 document ids under `model`; corpora larger than `pipeline_above` documents are
    embedded by the Ray Data pipeline."""
    embedder = Embedder(resolve_spec(**model.model_dump()))
    corpus_vectors = embed_texts(model, embedder, data.corpus, "document", pipeline_above, compute)
    query_vectors = embedder.encode(list(data.queries.values()), input_type="query")
    _, indices = top_k(query_vectors, corpus_vectors, 100, backend=search)
    doc_ids = list(data.corpus)
    return {query: [doc_ids[index] for index in row] for query, row in zip(data.queries, indices)}


def evaluate(data: RetrievalSet, model: EmbedderConfig, **options) -> dict[str, float]:
    """NDCG@10, MRR@10, recall@1/10/100 of `model` on `data` (options as for `rank`)."""
    return score_rankings(rank(data, model, **options), data.qrels)

"""Nearest neighbours by inner product: exact, over corpus chunks so memory stays bounded (queries x chunk
scores at a time plus a running top k), or faiss's exact flat index when faiss is installed."""

import importlib.util

import numpy as np
import torch


def top_k_exact(queries: np.ndarray, corpus: np.ndarray, k: int,
                chunk_rows: int = 65536) -> tuple[np.ndarray, np.ndarray]:
    """(scores, indices), each (n_queries, min(k, n_corpus)), best first; `corpus` may be a memory map."""
    query_tensor = torch.from_numpy(np.ascontiguousarray(queries, dtype=np.float32))
    k = min(k, len(corpus))
    best_scores = torch.full((len(queries), 0), float("-inf"))
    best_indices = torch.zeros((len(queries), 0), dtype=torch.long)
    for start in range(0, len(corpus), chunk_rows):
        chunk = torch.from_numpy(np.ascontiguousarray(corpus[start:start + chunk_rows], dtype=np.float32))
        scores = query_tensor @ chunk.T
        top = torch.topk(scores, min(k, scores.shape[1]), dim=1)
        merged_scores = torch.cat([best_scores, top.values], dim=1)
        merged_indices = torch.cat([best_indices, top.indices + start], dim=1)
        keep = torch.topk(merged_scores, min(k, merged_scores.shape[1]), dim=1).indices
        best_scores, best_indices = merged_scores.gather(1, keep), merged_indices.gather(1, keep)
    return best_scores.numpy(), best_indices.numpy()


def top_k(queries: np.ndarray, corpus: np.ndarray, k: int, backend: str = "auto") -> tuple[np.ndarray, np.ndarray]:
    """Top k by inner product with `backend` exact | faiss | auto (faiss when installed)."""
    if backend == "faiss" or (backend == "auto" and importlib.util.find_spec("faiss") is not None):
        import faiss

        index = faiss.IndexFlatIP(corpus.shape[1])
        index.add(np.ascontiguousarray(corpus, dtype=np.float32))
        return index.search(np.ascontiguousarray(queries, dtype=np.float32), min(k, len(corpus)))
    return top_k_exact(queries, corpus, k)

"""Retrieval metrics over ranked lists: NDCG@k (graded gains, log2 discount), MRR@k, recall@k.

`ranking` is a query's document ids best first; `relevant` maps document id -> graded relevance (> 0 relevant).
"""

import math


def ndcg_at_k(ranking: list[str], relevant: dict[str, int], k: int) -> float:
    """DCG of the top k with gain = relevance, discount 1/log2(rank + 1), divided by the ideal DCG."""
    dcg = sum(relevant.get(doc, 0) / math.log2(rank + 2) for rank, doc in enumerate(ranking[:k]))
    ideal = sorted((grade for grade in relevant.values() if grade > 0), reverse=True)[:k]
    ideal_dcg = sum(grade / math.log2(rank + 2) for rank, grade in enumerate(ideal))
    return dcg / ideal_dcg if ideal_dcg > 0 else 0.0


def mrr_at_k(ranking: list[str], relevant: dict[str, int], k: int) -> float:
    """1 / rank of the first relevant document in the top k, else 0."""
    for rank, doc in enumerate(ranking[:k]):
        if relevant.get(doc, 0) > 0:
            return 1.0 / (rank + 1)
    return 0.0


def recall_at_k(ranking: list[str], relevant: dict[str, int], k: int) -> float:
    """Share of the relevant documents found in the top k."""
    wanted = {doc for doc, grade in relevant.items() if grade > 0}
    return len(wanted.intersection(ranking[:k])) / len(wanted) if wanted else 0.0


METRICS = {"ndcg@10": (ndcg_at_k, 10), "mrr@10": (mrr_at_k, 10), "recall@1": (recall_at_k, 1),
           "recall@10": (recall_at_k, 10), "recall@100": (recall_at_k, 100)}


def score_rankings(rankings: dict[str, list[str]], qrels: dict[str, dict[str, int]]) -> dict[str, float]:
    """Every metric of METRICS averaged over the queries that have at least one relevant document."""
    judged = [query for query, docs in qrels.items() if any(grade > 0 for grade in docs.values())]
    if not judged:
        raise ValueError("qrels: no query has a relevant document (score > 0)")
    return {
        name: sum(metric(rankings.get(query, []), qrels[query], k) for query in judged) / len(judged)
        for name, (metric, k) in METRICS.items()
    }

"""Retrieval evaluation.

    run.py           the driver: every model at every length on one set; results.json and chart.png
    retrieval.py     rank and score one model on one set; long_context.py the same at several lengths
    metrics.py       NDCG@k, MRR@k, recall@k; mteb_adapter.py our Embedder as an mteb encoder
"""

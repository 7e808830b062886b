"""Retrieval loss of quantized vectors: NDCG@10 on the docstring retrieval set (bundled model) with the corpus
stored as float32 (the baseline, same run), int8 (ranges from a sample of the corpus, as the embed job does, or
from 256 sample documents, as serving does) and binary, scored the ways a reader can score them; bytes per vector
beside each. Prints one JSON object.

    python bench/quantize_loss.py [--limit N]
"""

import argparse
import json

import numpy as np

from raylib.data.sample_corpus import sample_documents
from raylib.data.sample_sets import docstring_set
from raylib.eval.metrics import score_rankings
from raylib.models.embedder import Embedder
from raylib.models.quantize import calibration_ranges, dequantize, quantize
from raylib.models.spec import resolve_spec


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--limit", type=int, default=None, help="queries/documents of the set (default: all)")
    args = parser.parse_args()
    data = docstring_set(args.limit)
    embedder = Embedder(resolve_spec())
    documents = embedder.encode(list(data.corpus.values()), input_type="document")
    queries = embedder.encode(list(data.queries.values()), input_type="query")
    ids, dimensions = list(data.corpus), documents.shape[1]

    def ndcg(scores: np.ndarray) -> float:
        top = np.argsort(-scores, axis=1)[:, :100]
        rankings = {query: [ids[i] for i in row] for query, row in zip(data.queries, top)}
        return round(score_rankings(rankings, data.qrels)["ndcg@10"], 4)

    sample = documents[np.random.default_rng(0).choice(len(documents), min(2048, len(documents)), replace=False)]
    ranges = {"corpus_sample": calibration_ranges(sample),
              "serving_256_documents": calibration_ranges(embedder.encode([d["text"] for d in sample_documents(256)]))}
    report = {"set": {"queries": len(queries), "documents": len(documents), "dimensions": dimensions},
              "float32": {"ndcg@10": ndcg(queries @ documents.T), "bytes_per_vector": 4 * dimensions}}
    for name, bounds in ranges.items():
        codes = quantize(documents, "int8", bounds)
        query_codes = quantize(queries, "int8", bounds).astype(np.int32)
        report[f"int8_{name}"] = {
            "float_query_vs_dequantized": ndcg(queries @ dequantize(codes, "int8", dimensions, bounds).T),
            "int8_query_vs_int8_codes": ndcg(query_codes @ codes.astype(np.int32).T),
            "bytes_per_vector": dimensions}
    bits = quantize(documents, "ubinary")
    signs = np.unpackbits(bits, axis=1).astype(np.int32) * 2 - 1
    query_signs = np.unpackbits(quantize(queries, "ubinary"), axis=1).astype(np.int32) * 2 - 1
    report["binary"] = {"float_query_vs_signs": ndcg(queries @ dequantize(bits, "ubinary", dimensions).T),
                        "hamming": ndcg(query_signs @ signs.T),  # dimensions - 2 x Hamming distance
                        "bytes_per_vector": bits.shape[1]}
    for name, figures in report.items():
        if name != "set":
            figures["size_ratio_to_float32"] = round(figures["bytes_per_vector"] / (4 * dimensions), 4)
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()

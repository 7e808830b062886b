"""Nearest documents to a query in the embed job's output (exact search over all vectors; int8 and binary
outputs are scored as the float vectors they stand for, see raylib/embed/vectors.py).

    python examples/search.py --embeddings out/embeddings --corpus examples/data/docs --query "..."
"""

import argparse
import json
from pathlib import Path

import numpy as np
import pyarrow.dataset as pads

from raylib.embed.vectors import read_floats
from raylib.models.embedder import Embedder
from raylib.models.spec import resolve_spec


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--embeddings", required=True)
    parser.add_argument("--corpus", type=Path, required=True, help="the jsonl input, to show the texts")
    parser.add_argument("--query", required=True)
    parser.add_argument("--top", type=int, default=5)
    args = parser.parse_args()

    table = pads.dataset(args.embeddings, format="parquet").to_table()
    ids = table.column("id").to_pylist()
    vectors = read_floats(table)
    query = Embedder(resolve_spec()).encode([args.query], input_type="query")[0]
    scores = vectors @ query
    texts = {}
    for path in sorted(args.corpus.glob("*.jsonl")):
        for line in path.read_text().splitlines():
            row = json.loads(line)
            texts[row["id"]] = row["text"]
    print(f"query: {args.query}")
    for rank, row in enumerate(np.argsort(-scores)[: args.top], start=1):
        first_line = texts.get(ids[row], "").strip().splitlines()[0][:100]
        print(f"{rank}. {scores[row]:.3f}  {ids[row]}  {first_line}")


if __name__ == "__main__":
    main()

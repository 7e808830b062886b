"""Write docstring training pairs (train split, disjoint from the evaluation set) as jsonl: retrieval
(summary line -> docstring body) or classification (summary line -> module name).

    python -m raylib.data.sample_pairs --out examples/data/pairs --negatives 1
    python -m raylib.data.sample_pairs --task classification --out examples/data/modules --negatives 2
"""

import argparse
import json
from pathlib import Path

from raylib.data.sample_sets import (
    docstring_classification_rows,
    docstring_training_rows,
)

TASKS = {"retrieval": docstring_training_rows, "classification": docstring_classification_rows}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--negatives", type=int, default=1)
    parser.add_argument("--limit", type=int, default=None)
    parser.add_argument("--task", choices=sorted(TASKS), default="retrieval")
    args = parser.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    rows = TASKS[args.task](args.limit, args.negatives)
    (args.out / "pairs.jsonl").write_text("".join(json.dumps(row) + "\n" for row in rows))
    print(f"wrote {len(rows)} pairs to {args.out / 'pairs.jsonl'}")


if __name__ == "__main__":
    main()

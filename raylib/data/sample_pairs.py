"""Write the docstring training pairs (train split, disjoint from the evaluation set) as jsonl.

    python -m raylib.data.sample_pairs --out examples/data/pairs --negatives 1
"""

import argparse
import json
from pathlib import Path

from raylib.eval.sample_sets import docstring_training_rows


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--negatives", type=int, default=1)
    parser.add_argument("--limit", type=int, default=None)
    args = parser.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    rows = docstring_training_rows(args.limit, args.negatives)
    (args.out / "pairs.jsonl").write_text("".join(json.dumps(row) + "\n" for row in rows))
    print(f"wrote {len(rows)} pairs to {args.out / 'pairs.jsonl'}")


if __name__ == "__main__":
    main()

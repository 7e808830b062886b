"""Write docstring training pairs (train split, disjoint from the evaluation set) as jsonl: retrieval
(summary line -> docstring body) or classification (summary line -> module name).

    python -m raylib.data.sample_pairs --out examples/data/pairs --negatives 1
    python -m raylib.data.sample_pairs --task classification --out examples/data/modules --negatives 2
"""

import argparse
import json

from raylib.data.sample_sets import (
    docstring_classification_rows,
    docstring_training_rows,
)
from raylib.storage import resolve

TASKS = {"retrieval": docstring_training_rows, "classification": docstring_classification_rows}


def write_pairs(out: str, task: str = "retrieval", limit: int | None = None, negatives: int = 1) -> int:
    """Write the task's rows to <out>/pairs.jsonl (a local path or URI); returns how many."""
    rows = TASKS[task](limit, negatives)
    fs, root = resolve(out)
    fs.create_dir(root, recursive=True)
    with fs.open_output_stream(f"{root}/pairs.jsonl") as stream:
        stream.write("".join(json.dumps(row) + "\n" for row in rows).encode())
    return len(rows)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", required=True)
    parser.add_argument("--negatives", type=int, default=1)
    parser.add_argument("--limit", type=int, default=None)
    parser.add_argument("--task", choices=sorted(TASKS), default="retrieval")
    args = parser.parse_args(argv)
    count = write_pairs(args.out, args.task, args.limit, args.negatives)
    print(f"wrote {count} pairs to {args.out.rstrip('/')}/pairs.jsonl")


if __name__ == "__main__":
    main()

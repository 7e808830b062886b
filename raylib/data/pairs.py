"""Training pairs for contrastive jobs: (query, document, hard negatives) rows read by Ray Data and checked
row by row; a bad row keeps its place with the reason in `_error`, so the trainer counts and reports it."""

import pyarrow as pa
import ray.data

from raylib.config import PairsDatasetConfig


def row_error(query, document, negatives, hard_negatives: int) -> str | None:
    """Why a (query, document, negatives) row cannot be trained on, or None."""
    for name, text in (("query", query), ("document", document)):
        if not isinstance(text, str) or not text.strip():
            return f"{name} is missing, empty or not a string"
    if hard_negatives:
        good = [text for text in (negatives or []) if isinstance(text, str) and text.strip()]
        if len(good) < hard_negatives:
            return f"needs {hard_negatives} hard negatives, has {len(good)}"
    return None


def check_pairs(batch: pa.Table, config: dict, hard_negatives: int) -> pa.Table:
    """Rows as (query, document, negatives[:hard_negatives], _error) with the dataset's column names mapped."""
    columns = {name: batch.column(config[key]).to_pylist() if config[key] in batch.column_names else [None] * len(batch)
               for name, key in (("query", "query_column"), ("document", "document_column"),
                                 ("negatives", "negatives_column"))}
    errors = [row_error(q, d, n, hard_negatives)
              for q, d, n in zip(columns["query"], columns["document"], columns["negatives"])]
    keep = [error is None for error in errors]
    return pa.table({
        "query": pa.array([q if ok else None for q, ok in zip(columns["query"], keep)], pa.string()),
        "document": pa.array([d if ok else None for d, ok in zip(columns["document"], keep)], pa.string()),
        "negatives": pa.array(
            [list(n or [])[:hard_negatives] if ok else [] for n, ok in zip(columns["negatives"], keep)],
            pa.list_(pa.string())),
        "_error": pa.array(errors, pa.string()),
    })


def raw_pairs(path: str, fmt: str, cpus: float) -> ray.data.Dataset:
    """The rows of parquet or jsonl files as they are (local paths or object-storage URIs)."""
    if fmt == "parquet":
        return ray.data.read_parquet(path, ray_remote_args={"num_cpus": cpus})
    return ray.data.read_json(path, lines=True, file_extensions=["jsonl", "json"], ray_remote_args={"num_cpus": cpus})


def pairs_dataset(config: PairsDatasetConfig, hard_negatives: int, cpus: float) -> ray.data.Dataset:
    """The dataset's rows, checked, as a Ray Dataset."""
    return raw_pairs(config.path, config.format, cpus).map_batches(check_pairs, batch_format="pyarrow", num_cpus=cpus,
                           fn_kwargs={"config": config.model_dump(), "hard_negatives": hard_negatives})

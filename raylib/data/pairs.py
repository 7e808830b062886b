"""Training pairs for contrastive and mining jobs: (query, document, hard negatives) rows read by the piece
reader (sources.py) and checked row by row; a bad row keeps its place with the reason in `_error`, so the
trainer counts and reports it."""

import pyarrow as pa
import ray.data

from raylib.config import InputConfig, PairsDatasetConfig
from raylib.data.sources import Piece, as_list, list_input_files, plan_pieces, read_pieces, read_rows


def _good_texts(texts) -> list[str]:
    return [text for text in texts if isinstance(text, str) and text.strip()]


def row_error(query, document, negatives, hard_negatives: int) -> str | None:
    """Why a (query, document, negatives) row cannot be trained on, or None."""
    for name, text in (("query", query), ("document", document)):
        if not isinstance(text, str) or not text.strip():
            return f"{name} is missing, empty or not a string"
    if hard_negatives:
        if not isinstance(negatives, list):
            return f"negatives is a {type(negatives).__name__}, not a list of texts"
        good = len(_good_texts(negatives))
        if good < hard_negatives:
            return f"needs {hard_negatives} hard negatives, has {good}"
    return None


def read_pairs_piece(piece: Piece, path: str, query_column: str, document_column: str,
                     negatives_column: str | None = None, hard_negatives: int = 0) -> pa.Table:
    """A piece's rows as (query, document, negatives, _error, _where): the first `hard_negatives` good
    negatives of a good row; a bad row keeps nulls and its reason."""
    columns = [query_column, document_column, *([negatives_column] if hard_negatives else [])]
    values, errors, where = read_rows(piece, path, columns)
    queries, documents = as_list(values[query_column]), as_list(values[document_column])
    negatives = as_list(values[negatives_column]) if hard_negatives else [[]] * len(queries)
    errors = [error or row_error(query, document, listed, hard_negatives)
              for error, query, document, listed in zip(errors, queries, documents, negatives)]
    keep = [error is None for error in errors]
    return pa.table({
        "query": pa.array([query if ok else None for query, ok in zip(queries, keep)], pa.string()),
        "document": pa.array([document if ok else None for document, ok in zip(documents, keep)], pa.string()),
        "negatives": pa.array([_good_texts(listed)[:hard_negatives] if ok else []
                               for listed, ok in zip(negatives, keep)], pa.list_(pa.string())),
        "_error": pa.array(errors, pa.string()),
        "_where": pa.array(where, pa.string()),
    })


def pairs_pieces(path: str, fmt: str, query_column: str) -> list[Piece]:
    """The pieces of parquet or jsonl pair files (local paths or object-storage URIs)."""
    config = InputConfig(path=path, format=fmt, id_column=None, text_column=query_column)
    return plan_pieces(*list_input_files(config), config)


def pairs_dataset(config: PairsDatasetConfig, hard_negatives: int, cpus: float) -> ray.data.Dataset:
    """The dataset's rows, checked, as a Ray Dataset (one block per piece)."""
    return read_pieces(pairs_pieces(config.path, config.format, config.query_column), cpus, read_pairs_piece,
                       path=config.path, query_column=config.query_column, document_column=config.document_column,
                       negatives_column=config.negatives_column, hard_negatives=hard_negatives)

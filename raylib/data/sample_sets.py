"""Retrieval sets of real text that exist on every machine, built from the sample corpus's docstrings.

- `docstring_set`: the query is a docstring's summary line, the relevant document its remaining paragraphs.
  Docstrings are assigned to "train" or "eval" by a hash of their id, so training pairs never leak into the
  evaluation set.
- `long_context_set` (LoCo-style): a document is every docstring of one source file joined in order (thousands
  of tokens); the query is the summary line of one docstring inside it, so the answer may sit far past the
  first 512 tokens. Queries are labelled with how deep (in characters) their answer starts.
"""

import functools
import hashlib
from collections import defaultdict

from raylib.data.beir import RetrievalSet
from raylib.data.sample_corpus import sample_documents

MIN_SUMMARY, MIN_BODY = 25, 80


def _split_of(doc_id: str) -> str:
    return "eval" if hashlib.sha1(doc_id.encode()).digest()[0] % 4 == 0 else "train"


def summary_and_body(text: str) -> tuple[str, str] | None:
    """(summary line, remaining paragraphs) of a docstring, or None when either is too short to use."""
    summary, _, body = text.partition("\n\n")
    summary, body = " ".join(summary.split()), body.strip()
    if len(summary) < MIN_SUMMARY or len(body) < MIN_BODY:
        return None
    return summary, body


@functools.cache
def _docstring_pairs() -> dict[str, tuple[tuple[str, str, str], ...]]:
    """Both splits, read from source once per process."""
    pairs: dict[str, list] = {"train": [], "eval": []}
    for row in sample_documents():
        parts = summary_and_body(row["text"])
        if parts and not row["id"].startswith("pydoc:"):
            pairs[_split_of(row["id"])].append((row["id"], *parts))
    return {split: tuple(rows) for split, rows in pairs.items()}


def docstring_pairs(split: str) -> tuple[tuple[str, str, str], ...]:
    """(id, summary, body) of the sample corpus's docstrings in `split` (train | eval), in a fixed order."""
    return _docstring_pairs()[split]


def docstring_set(limit: int | None = None) -> RetrievalSet:
    """Summary line -> rest of the docstring, over the eval split (the first `limit` pairs)."""
    pairs = docstring_pairs("eval")[:limit]
    return RetrievalSet(
        corpus={doc_id: body for doc_id, _, body in pairs},
        queries={f"q-{doc_id}": summary for doc_id, summary, _ in pairs},
        qrels={f"q-{doc_id}": {doc_id: 1} for doc_id, _, _ in pairs},
    )


def long_context_set(min_chars: int = 12_000, max_docs: int = 40,
                     queries_per_doc: int = 4) -> tuple[RetrievalSet, dict[str, int]]:
    """(set, depth): long documents made of whole source files' docstrings, queries spread over each file;
    depth[query id] is the character offset where its answer starts in the document."""
    by_file: dict[str, list[tuple[int, str]]] = defaultdict(list)
    for row in sample_documents():
        if not row["id"].startswith("pydoc:"):
            path, _, line = row["id"].rpartition(":")
            by_file[path].append((int(line), row["text"]))
    corpus, queries, qrels, depth = {}, {}, {}, {}
    for path in sorted(by_file):
        parts = sorted(by_file[path])
        document = "\n\n".join(text for _, text in parts)
        if len(document) < min_chars:
            continue
        offsets, offset = [], 0
        for _, text in parts:
            offsets.append(offset)
            offset += len(text) + 2
        usable = [index for index, (_, text) in enumerate(parts) if summary_and_body(text)]
        step = max(1, len(usable) // queries_per_doc)
        for index in usable[::step][:queries_per_doc]:
            query_id = f"q-{path}:{parts[index][0]}"
            queries[query_id] = summary_and_body(parts[index][1])[0]
            qrels[query_id] = {path: 1}
            depth[query_id] = offsets[index]
        corpus[path] = document
        if len(corpus) == max_docs:
            break
    return RetrievalSet(corpus=corpus, queries=queries, qrels=qrels), depth


def docstring_training_rows(limit: int | None = None, negatives: int = 1) -> list[dict]:
    """Training rows {query, document, negatives} from the train split: the negatives are bodies of the
    docstrings next to it in the same source listing (similar topic, different answer)."""
    pairs = docstring_pairs("train")
    rows = []
    for index, (_, summary, body) in enumerate(pairs[:limit]):
        neighbours = [pairs[(index + offset) % len(pairs)][2] for offset in range(1, negatives + 1)]
        rows.append({"query": summary, "document": body, "negatives": neighbours})
    return rows


def module_of(doc_id: str) -> str:
    """The top-level module a docstring id belongs to: 'stdlib/json/decoder.py:12' -> 'json',
    'numpy/lib/_npyio_impl.py:40' -> 'numpy.lib'."""
    root, name = doc_id.rpartition(":")[0].split("/")[:2]
    name = name.removesuffix(".py")
    return name if root == "stdlib" else f"{root}.{name}"


def docstring_classification_rows(limit: int | None = None, negatives: int = 1) -> list[dict]:
    """Classification as pairs (NV-Embed's stage-2 data) from the train split: the query is a docstring's
    summary line, the document the name of its module, the negatives other modules' names."""
    pairs = docstring_pairs("train")
    names = sorted({module_of(doc_id) for doc_id, _, _ in pairs})
    rows = []
    for doc_id, summary, _ in pairs[:limit]:
        at = names.index(module_of(doc_id))
        rows.append({"query": summary, "document": names[at],
                     "negatives": [names[(at + offset) % len(names)] for offset in range(1, negatives + 1)]})
    return rows

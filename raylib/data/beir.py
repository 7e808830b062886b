"""BEIR-format retrieval sets: corpus.jsonl ({_id, title?, text}), queries.jsonl ({_id, text}) and
qrels/<split>.tsv (query-id, corpus-id, score with a header line). Problems name the file and line."""

import json
from dataclasses import dataclass
from pathlib import Path

from raylib.config import ConfigError


@dataclass
class RetrievalSet:
    corpus: dict[str, str]  # document id -> "title text"
    queries: dict[str, str]  # query id -> text (only queries that have qrels)
    qrels: dict[str, dict[str, int]]  # query id -> document id -> relevance


def _read_jsonl(path: Path) -> dict[str, str]:
    if not path.is_file():
        raise ConfigError(f"{path}: file not found; a BEIR folder has corpus.jsonl, queries.jsonl and qrels/")
    rows = {}
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as exc:
            raise ConfigError(f"{path} line {number}: not valid JSON ({exc.msg}); fix the line") from None
        if not isinstance(row, dict) or not isinstance(row.get("_id"), (str, int)) or isinstance(row.get("_id"), bool):
            raise ConfigError(f"{path} line {number}: needs a string \"_id\"; fix the line")
        text = " ".join(part for part in (row.get("title"), row.get("text")) if isinstance(part, str) and part.strip())
        if not text:
            raise ConfigError(f"{path} line {number}: \"text\" is missing or empty; fix the line or remove it")
        if str(row["_id"]) in rows:
            raise ConfigError(f"{path} line {number}: _id {row['_id']!r} appears twice; ids must be unique")
        rows[str(row["_id"])] = text
    return rows


def _read_qrels(path: Path, corpus: dict, queries: dict) -> dict[str, dict[str, int]]:
    if not path.is_file():
        raise ConfigError(f"{path}: file not found; give the split whose qrels/<split>.tsv exists")
    qrels: dict[str, dict[str, int]] = {}
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        fields = line.rstrip("\n").split("\t")
        if number == 1 and fields[:2] == ["query-id", "corpus-id"] or not line.strip():
            continue
        if len(fields) != 3:
            raise ConfigError(f"{path} line {number}: expected 3 tab-separated fields (query-id, corpus-id, "
                              f"score), got {len(fields)}; fix the line")
        query, doc, score = fields
        if query not in queries:
            raise ConfigError(f"{path} line {number}: query-id {query!r} is not in queries.jsonl; fix the id")
        if doc not in corpus:
            raise ConfigError(f"{path} line {number}: corpus-id {doc!r} is not in corpus.jsonl; fix the id")
        try:
            qrels.setdefault(query, {})[doc] = int(score)
        except ValueError:
            raise ConfigError(f"{path} line {number}: score {score!r} is not an integer; fix the line") from None
    if not qrels:
        raise ConfigError(f"{path}: no judgements; add lines query-id<TAB>corpus-id<TAB>score")
    return qrels


def load_beir(folder: str | Path, split: str = "test") -> RetrievalSet:
    """Read and check a BEIR folder; only queries judged in `split` are kept."""
    folder = Path(folder)
    corpus = _read_jsonl(folder / "corpus.jsonl")
    queries = _read_jsonl(folder / "queries.jsonl")
    qrels = _read_qrels(folder / "qrels" / f"{split}.tsv", corpus, queries)
    return RetrievalSet(corpus=corpus, queries={query: queries[query] for query in qrels}, qrels=qrels)


def write_beir(folder: str | Path, data: RetrievalSet, split: str = "test") -> Path:
    """Write `data` as a BEIR folder (used for the sample sets); returns the folder."""
    folder = Path(folder)
    (folder / "qrels").mkdir(parents=True, exist_ok=True)
    for name, rows in (("corpus.jsonl", data.corpus), ("queries.jsonl", data.queries)):
        (folder / name).write_text("".join(json.dumps({"_id": key, "text": text}) + "\n" for key, text in rows.items()))
    lines = ["query-id\tcorpus-id\tscore"] + [
        f"{query}\t{doc}\t{grade}" for query, docs in data.qrels.items() for doc, grade in docs.items()]
    (folder / "qrels" / f"{split}.tsv").write_text("\n".join(lines) + "\n")
    return folder

"""Long-context retrieval in the LoCo spirit: the same long documents embedded with truncation at several
lengths, scored overall and by how deep in its document each query's answer starts."""

from raylib.config import EmbedderConfig
from raylib.data.beir import RetrievalSet
from raylib.eval.metrics import score_rankings
from raylib.eval.retrieval import rank
from raylib.models.spec import resolve_spec

SHALLOW_CHARS = 2000  # about 512 tokens of English: answers starting before this survive 512-token truncation


def evaluate_lengths(data: RetrievalSet, model: EmbedderConfig, lengths: list[int | None],
                     depth: dict[str, int] | None = None, **options) -> list[dict]:
    """One row per truncation length (None: the model's own): metrics over all queries and, when `depth` is
    given, over shallow/deep answers. A length past the model's positions is reported as skipped (nomic-bert
    reaches 8,192 with dynamic NTK scaling). `options` go to `rank`."""
    rows = []
    depth = depth or {}
    shallow = [query for query in data.queries if query in depth and depth[query] < SHALLOW_CHARS]
    deep = [query for query in data.queries if depth.get(query, -1) >= SHALLOW_CHARS]
    for length in lengths:
        config = model if length is None else model.model_copy(update={"max_length": length})
        effective = resolve_spec(**config.model_dump()).max_length
        row = {"max_length": length or effective, "effective_max_length": effective}
        if length is not None and effective < length:
            row["skipped"] = f"the model reads at most {effective} tokens"
            rows.append(row)
            continue
        rankings = rank(data, config, **options)
        row["all"] = score_rankings(rankings, data.qrels)
        for name, queries in (("shallow", shallow), ("deep", deep)):
            if queries:
                row[name] = score_rankings(rankings, {query: data.qrels[query] for query in queries})
        rows.append(row)
    return rows

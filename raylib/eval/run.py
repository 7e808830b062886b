"""The eval job: every model (or checkpoint) at every requested context length on one retrieval set;
results as JSON and a PNG chart."""

import json
import time
from dataclasses import dataclass
from pathlib import Path

from raylib import console
from raylib.config import EvalJobConfig
from raylib.data.beir import RetrievalSet, load_beir
from raylib.data.sample_sets import docstring_set, long_context_set
from raylib.eval.long_context import evaluate_lengths
from raylib.models.spec import resolve_spec

CHART_METRICS = ("ndcg@10", "mrr@10", "recall@10")


@dataclass
class EvalSummary:
    results: list[dict]  # one per model and length: model, max_length, all / shallow / deep metrics
    output: Path

    def line(self) -> str:
        return f"eval results={self.output / 'results.json'} chart={self.output / 'chart.png'}"


def load_data(config: EvalJobConfig) -> tuple[RetrievalSet, dict[str, int] | None]:
    """(set, answer depth per query or None) for the config's data section."""
    data = config.data
    if data.kind == "docstrings":
        return docstring_set(data.limit), None
    if data.kind == "long-docstrings":
        return long_context_set()
    return load_beir(data.path, data.split), None


def write_chart(results: list[dict], path: Path) -> None:
    """Grouped bars: one group per model and length, one bar per metric of CHART_METRICS."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    scored = [row for row in results if "all" in row]
    labels = [f"{row['model']}\n@{row['max_length']}" for row in scored]
    width = 0.8 / len(CHART_METRICS)
    figure, axes = plt.subplots(figsize=(max(4.0, 1.6 * len(scored)), 3.6))
    for offset, metric in enumerate(CHART_METRICS):
        positions = [index + (offset - (len(CHART_METRICS) - 1) / 2) * width for index in range(len(scored))]
        axes.bar(positions, [row["all"][metric] for row in scored], width, label=metric)
    axes.set_xticks(range(len(scored)), labels, fontsize=8)
    axes.set_ylim(0, 1)
    axes.set_ylabel("score")
    axes.legend(fontsize=8)
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    plt.close(figure)


def run_eval(config: EvalJobConfig) -> EvalSummary:
    """Check data and models first, then evaluate; prints a line per result as it comes, writes results.json
    and chart.png under config.output."""
    data, depth = load_data(config)
    for entry in config.models:
        resolve_spec(**entry.model.model_dump())
    output = Path(config.output)
    output.mkdir(parents=True, exist_ok=True)
    lengths = config.max_lengths or [None]
    results = []
    for entry in config.models:
        started = time.perf_counter()
        rows = evaluate_lengths(data, entry.model, lengths, depth, search=config.search,
                                pipeline_above=config.pipeline_above, compute=config.compute)
        for row in rows:
            results.append({"model": entry.name, **row})
            scores = " ".join(f"{name}={value:.4f}" for name, value in row.get("all", {}).items())
            print(f"eval model={entry.name} max_length={row['max_length']} {scores or row.get('skipped')} "
                  f"seconds={time.perf_counter() - started:.1f}", file=console.stdout(), flush=True)
    summary = {"data": config.data.model_dump(), "documents": len(data.corpus), "queries": len(data.queries),
               "results": results}
    (output / "results.json").write_text(json.dumps(summary, indent=2))
    write_chart(results, output / "chart.png")
    return EvalSummary(results, output)

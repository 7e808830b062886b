"""The recipe's closing table and chart: one row per stage (and per evaluated model that is not a stage), with
the NDCG@10 and MRR@10 of the stage's model on the eval stage's retrieval set."""

METRICS = ("ndcg@10", "mrr@10")
COLUMNS = ("stage", "job", "run", "steps", "seconds", *METRICS)


def with_metrics(rows: list[dict], results: list[dict]) -> list[dict]:
    """`rows` with each evaluated model's metrics on the row of the stage of the same name (the first length
    evaluated); models named after no stage get rows of their own."""
    scores: dict[str, dict] = {}
    for result in results:
        if "all" in result:
            scores.setdefault(result["model"], result["all"])
    named = {row["stage"] for row in rows}
    extra = [{"stage": model, "job": "-", "run": "-", "steps": None, "seconds": None} for model in scores
             if model not in named]
    return [{**row, **{metric: scores.get(row["stage"], {}).get(metric) for metric in METRICS}}
            for row in rows + extra]


def _cell(column: str, value) -> str:
    if value is None:
        return "-"
    return f"{value:.1f}" if column == "seconds" else f"{value:.4f}" if column in METRICS else str(value)


def table(rows: list[dict]) -> str:
    """The rows as aligned text columns: stage, job, run (ran | skipped), steps, seconds, NDCG@10, MRR@10."""
    cells = [[column.upper() if "@" in column else column for column in COLUMNS]]
    cells += [[_cell(column, row.get(column)) for column in COLUMNS] for row in rows]
    widths = [max(len(line[index]) for line in cells) for index in range(len(COLUMNS))]
    return "\n".join("  ".join(cell.ljust(width) if index < 3 else cell.rjust(width)
                               for index, (cell, width) in enumerate(zip(line, widths))).rstrip()
                     for line in cells)


def write_chart(rows: list[dict], path) -> None:
    """NDCG@10 and MRR@10 by stage, in stage order, for the stages whose model was evaluated."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    scored = [row for row in rows if row.get(METRICS[0]) is not None]
    figure, axes = plt.subplots(figsize=(max(4.0, 1.3 * len(scored) + 1), 3.6))
    for metric, offset in zip(METRICS, (6, -12)):  # NDCG's values above its points, MRR's below (MRR <= NDCG)
        values = [row[metric] for row in scored]
        axes.plot(range(len(scored)), values, marker="o", label=metric.upper())
        for index, value in enumerate(values):
            axes.annotate(f"{value:.3f}", (index, value), textcoords="offset points", xytext=(0, offset),
                          ha="center", fontsize=7)
    axes.set_xticks(range(len(scored)), [row["stage"] for row in scored], fontsize=8)
    axes.set_xlim(-0.5, len(scored) - 0.5)
    axes.set_ylim(0, 1)
    axes.set_ylabel("score")
    axes.set_title("retrieval metrics by stage", fontsize=9)
    axes.legend(fontsize=8)
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    plt.close(figure)

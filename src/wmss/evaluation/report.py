"""Comparison of several models on several tasks: JSON summary, Markdown table and a bar chart."""

from __future__ import annotations

import html
from pathlib import Path

import numpy as np

from wmss.evaluation.metrics import paired_bootstrap, paired_bootstrap_mean_over_tasks
from wmss.io import atomic_write_json, atomic_write_text
from wmss.reporting import markdown_table


def compare(results: dict[str, dict[str, dict]], baseline: str | None = None, seed: int = 0) -> dict:
    """``results[model][task]`` are task summaries (with ``per_problem`` scores). Adds averages and, for
    every model but the baseline, Δ vs the baseline with a paired bootstrap 95% interval per task and
    for the average over tasks."""
    models = list(results)
    tasks = list(dict.fromkeys(t for r in results.values() for t in r))
    if baseline is not None and baseline not in results:
        raise ValueError(f"baseline '{baseline}' is not one of the evaluated models: {', '.join(models)}")
    table = {"models": models, "tasks": tasks, "baseline": baseline, "rows": {}}
    for model in models:
        row = {"tasks": {}, "average": float(np.mean([results[model][t]["accuracy"] for t in tasks]))}
        for task in tasks:
            summary = results[model][task]
            row["tasks"][task] = {k: summary[k] for k in ("accuracy", "num_problems", "pass_at_k")}
        if baseline and model != baseline:
            pairs = [
                (np.array(results[model][t]["per_problem"]), np.array(results[baseline][t]["per_problem"]))
                for t in tasks
            ]
            for task, (mine, theirs) in zip(tasks, pairs, strict=True):
                if len(mine) != len(theirs):
                    raise ValueError(
                        f"task {task}: {model} and {baseline} were scored on different problems "
                        f"({len(mine)} vs {len(theirs)}); use the same data and limit."
                    )
                delta, low, high = paired_bootstrap(mine, theirs, seed=seed)
                row["tasks"][task]["delta"] = {"value": delta, "ci95": [low, high]}
            delta, low, high = paired_bootstrap_mean_over_tasks(pairs, seed=seed)
            row["average_delta"] = {"value": delta, "ci95": [low, high]}
        table["rows"][model] = row
    return table


def _pct(x: float) -> str:
    return f"{100 * x:.1f}"


def _signed(x: float) -> str:
    return f"{100 * x:+.1f}"


def _text(name: str) -> str:
    """A model or task name as Markdown text: ``<``, ``>`` and ``&`` escaped, so that a name is never
    rendered as HTML where the summary is shown."""
    return html.escape(str(name), quote=False)


def markdown(table: dict) -> str:
    """Accuracy (%) per task and on average; Δ vs the baseline in points with its 95% interval."""
    tasks, baseline = table["tasks"], table["baseline"]
    first = next(iter(table["rows"].values()))
    header = ["model"] + [f"{_text(t)} (n={first['tasks'][t]['num_problems']})" for t in tasks] + ["average"]
    rows = []
    for model, row in table["rows"].items():
        cells = [_text(model) + (" (baseline)" if model == baseline else "")]
        for task in tasks:
            cell = row["tasks"][task]
            text = _pct(cell["accuracy"])
            if "delta" in cell:
                d = cell["delta"]
                text += f" ({_signed(d['value'])} [{_signed(d['ci95'][0])}, {_signed(d['ci95'][1])}])"
            cells.append(text)
        avg = _pct(row["average"])
        if "average_delta" in row:
            d = row["average_delta"]
            avg += f" ({_signed(d['value'])} [{_signed(d['ci95'][0])}, {_signed(d['ci95'][1])}])"
        cells.append(avg)
        rows.append(cells)
    note = (
        "Accuracy in %. In brackets: Δ vs the baseline in points and its paired bootstrap 95% interval "
        "(10,000 resamples of problems)."
        if baseline
        else "Accuracy in %."
    )
    return markdown_table(header, rows) + "\n\n" + note + "\n"


def bar_chart(table: dict, path: str | Path) -> Path:
    """Grouped bars: accuracy of each model per task and on average, with the Δ intervals as error bars."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    groups = table["tasks"] + ["average"]
    models = table["models"]
    width = 0.8 / len(models)
    fig, ax = plt.subplots(figsize=(max(5.0, 1.6 * len(groups) + 1), 3.6), dpi=120)
    for m, model in enumerate(models):
        row = table["rows"][model]
        values = [100 * row["tasks"][t]["accuracy"] for t in table["tasks"]] + [100 * row["average"]]
        x = np.arange(len(groups)) + (m - (len(models) - 1) / 2) * width
        bars = ax.bar(x, values, width, label=model)
        ax.bar_label(bars, fmt="%.1f", fontsize=7, padding=1)
    ax.set_xticks(np.arange(len(groups)), groups)
    ax.set_ylabel("accuracy (%)")
    ax.set_ylim(0, 100)
    ax.legend(fontsize=8, loc="upper right")
    ax.set_title("wmss eval" + (f" (baseline: {table['baseline']})" if table["baseline"] else ""), fontsize=9)
    fig.tight_layout()
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp.png")
    fig.savefig(tmp)
    plt.close(fig)
    tmp.replace(path)
    return path


def write_report(
    results: dict[str, dict[str, dict]], out_dir: str | Path, baseline: str | None = None
) -> dict:
    """``summary.json``, ``summary.md`` and ``summary.png`` in ``out_dir``; returns the table."""
    out = Path(out_dir)
    table = compare(results, baseline)
    atomic_write_json(
        out / "summary.json",
        {
            "table": table,
            "results": {
                m: {t: {k: v for k, v in s.items() if k != "per_problem"} for t, s in r.items()}
                for m, r in results.items()
            },
        },
    )
    atomic_write_text(out / "summary.md", markdown(table))
    bar_chart(table, out / "summary.png")
    return table

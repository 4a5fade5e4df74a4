"""``wmss report RUN_DIR``: one self-contained HTML page about a run directory.

Everything comes from the files the run wrote (see ``wmss.rundir``); nothing is trained or
measured again, except the logit statistics when asked (``compute_logits``). Sections:

- overview and configuration (``manifest.json``);
- phase timings (``manifest.json``);
- loss curves of each training phase (``logs/<phase>.json``, the Trainer log history);
- per WD-DS iteration t (``selection-<t>.jsonl``): histograms of H_weak, H_strong and ΔH with the
  selected and non-selected examples stacked, the weak–strong separation, the share of the
  probability mass from each term of Eq. 9, the active fraction, and the ten highest-weight
  examples as text (joined with the training data by ``idx``);
- WD-JT: λ (with the measured norms when ``mix_lambda: auto``);
- logit statistics of weak, strong before and strong after WD-JT (``diagnostics/logits.json``,
  written by ``wmss diagnose logits --run RUN_DIR``);
- evaluation (the manifest's ``eval`` phase).

The page is written to ``RUN_DIR/report/report.html`` with its figures beside it as PNG files and
embedded in it as base64, so it opens in any browser, without a server, and can be mailed as one file.
The sections are built here; the page around them (head, CSS, navigation, footer) is the template
``wmss/templates/report.html.j2``.
"""

from __future__ import annotations

import base64
import html
import io
import logging
from pathlib import Path
from typing import Any

import numpy as np
import yaml

from wmss.config import RunConfig
from wmss.diagnostics import (
    MODEL_STATISTICS,
    PAIR_STATISTICS,
    diagnose_to_files,
    logit_statistics_path,
    read_logit_statistics,
)
from wmss.errors import DataError, WmssError
from wmss.io import atomic_write_bytes, atomic_write_text, read_json, read_jsonl
from wmss.reporting import render_template
from wmss.rundir import FINAL, load_run, run_models, selection_phase, wdjt_phase

log = logging.getLogger("wmss")

TOP_EXAMPLES = 10
TEXT_CHARS = 400
"""Characters of a prompt or completion shown in the table of highest-weight examples."""


def _example_texts(cfg: RunConfig, wanted: set) -> tuple[dict[Any, tuple[str, str]], str | None]:
    """``{idx: (prompt, completion)}`` for the ``wanted`` ids, read from the run's training data."""
    from wmss.data import read_rows, row_to_text

    if not cfg.data.path:
        return {}, "the training data was passed as a dataset object, so only ids are shown."
    try:
        rows = read_rows(cfg.data.path, cfg.data.split, cfg.data.subset)
    except (WmssError, OSError, ValueError) as err:
        return {}, f"the training data {cfg.data.path} could not be read ({err}), so only ids are shown."
    if cfg.data.limit is not None:
        rows = rows[: cfg.data.limit]
    texts = {}
    for i, row in enumerate(rows):
        idx = row[cfg.data.id_field] if cfg.data.id_field and cfg.data.id_field in row else i
        if idx not in wanted:
            continue
        try:
            prompt, completion = row_to_text(row, cfg.data, f"{cfg.data.path}, row {i + 1}")
        except DataError as err:
            prompt, completion = f"({err})", ""
        if isinstance(prompt, list):
            prompt = "\n".join(f"{m.get('role')}: {m.get('content')}" for m in prompt)
        texts[idx] = (prompt, completion)
    return texts, None


# ---------------------------------------------------------------- figures


class _Figures:
    """Figures of the page: each saved as ``<out>/<name>.png`` and embedded as base64."""

    def __init__(self, out: Path):
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        self.plt, self.out, self.files = plt, out, []

    def embed(self, fig: Any, name: str, alt: str) -> str:
        buffer = io.BytesIO()
        fig.savefig(buffer, format="png", dpi=110)
        self.plt.close(fig)
        data = buffer.getvalue()
        atomic_write_bytes(self.out / f"{name}.png", data)
        self.files.append(self.out / f"{name}.png")
        encoded = base64.b64encode(data).decode()
        return f'<img src="data:image/png;base64,{encoded}" alt="{html.escape(alt)}">'


# ---------------------------------------------------------------- HTML helpers


def _e(value: Any) -> str:
    return html.escape(str(value))


def _num(value: Any, digits: int = 4) -> str:
    if value is None:
        return "–"
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, int):
        return f"{value:,}"
    if isinstance(value, float):
        return f"{value:.{digits}f}" if abs(value) < 1e5 else f"{value:.4g}"
    return _e(value)


def _share(value: Any) -> str:
    """A fraction as a percentage; anything else (a tampered manifest) as its text."""
    is_number = isinstance(value, (int, float)) and not isinstance(value, bool)
    return f"{value:.1%}" if is_number else str(value)


def _table(header: list[str], rows: list[list[str]], cls: str = "") -> str:
    """An HTML table; cells are HTML already (escape text with ``_e``)."""
    head = "".join(f"<th>{h}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td>{c}</td>" for c in row) + "</tr>" for row in rows)
    return f'<table class="{cls}"><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>'


def _pairs(items: list[tuple[str, str]]) -> str:
    """A two-column key/value table."""
    return _table(["", ""], [[_e(k), v] for k, v in items], "kv")


def _section(anchor: str, title: str, body: str) -> str:
    return f'<section id="{anchor}"><h2>{_e(title)}</h2>{body}</section>'


def _note(text: str, kind: str = "note") -> str:
    return f'<p class="{kind}">{_e(text)}</p>'


# ---------------------------------------------------------------- sections


def _overview(root: Path, manifest: dict, cfg: RunConfig) -> str:
    phases = manifest["phases"]
    unfinished = [k for k, p in phases.items() if p.get("status") != "done"]
    status = "finished" if FINAL in phases and not unfinished else f"unfinished ({', '.join(unfinished)})"
    data = manifest.get("data", {})
    items = [
        ("run directory", _e(root.resolve())),
        ("status", _e(status)),
        ("created", _e(manifest.get("created", "–"))),
        ("wmss version", _e(manifest.get("wmss_version", "–"))),
        ("base model (M0)", _e(cfg.model)),
        ("training data", _e(cfg.data.path)),
    ]
    if data:
        items.append(
            (
                "examples",
                _e(
                    f"{data.get('num_examples')} of {data.get('num_rows')} rows "
                    f"({data.get('num_truncated')} truncated, {data.get('num_dropped')} dropped at "
                    f"max_length={data.get('max_length')}); mean tokens: prompt "
                    f"{data.get('mean_prompt_tokens', 0):.0f}, "
                    f"completion {data.get('mean_completion_tokens', 0):.0f}"
                ),
            )
        )
    if phases.get(FINAL, {}).get("status") == "done":
        items.append(("final model", _e(root / phases[FINAL]["model"])))
    return _section("overview", "Overview", _pairs(items))


KEY_SETTINGS = (
    "seed",
    "sft.epochs",
    "sft.checkpoint",
    "wmss.iterations",
    "wmss.epochs",
    "wmss.mix_lambda",
    "wmss.selection",
    "wmss.alpha",
    "wmss.beta",
    "wmss.gamma",
    "wmss.dedup",
    "wmss.sample_multiplier",
    "wmss.freeze_weak",
    "train.learning_rate",
    "train.per_device_batch_size",
    "train.gradient_accumulation_steps",
    "train.max_length",
    "train.lr_scheduler_type",
    "train.warmup_ratio",
)


def _configuration(cfg: RunConfig) -> str:
    values = cfg.to_dict()

    def get(key: str) -> Any:
        node = values
        for part in key.split("."):
            node = node[part]
        return node

    def show(key: str) -> str:
        value = get(key)
        if key == "wmss.dedup" and value is None:
            return f"null (default: {'on' if cfg.dedup else 'off'} for this selection form)"
        return "null" if value is None else str(value).lower() if isinstance(value, bool) else str(value)

    rows = [[f"<code>{_e(k)}</code>", _e(show(k))] for k in KEY_SETTINGS]
    full = _e(yaml.safe_dump(values, sort_keys=False))
    body = (
        _table(["key", "value"], rows, "kv")
        + f"<details><summary>full configuration (config.yaml)</summary><pre>{full}</pre></details>"
    )
    return _section("configuration", "Configuration", body)


def _timings(manifest: dict, figures: _Figures) -> str:
    phases = manifest["phases"]
    rows, names, walls = [], [], []
    for name, p in phases.items():
        wall = p.get("wall_time_s")
        detail = []
        if "steps" in p:
            detail.append(f"{p['steps']} steps")
        if "examples" in p:
            detail.append(f"{p['examples']} examples")
        if p.get("reused"):
            detail.append("reused checkpoint")
        rows.append(
            [
                _e(name),
                _e(p.get("status", "–")),
                _num(p.get("attempts")),
                _num(wall, 1),
                _e(", ".join(detail)),
            ]
        )
        if wall is not None:
            names.append(name)
            walls.append(wall)
    total = sum(walls)
    body = _table(["phase", "status", "attempts", "wall time (s)", "work"], rows)
    body += f"<p>Total wall time of the phases: {total:.1f} s.</p>"
    chart = ""
    if walls:
        fig, ax = figures.plt.subplots(figsize=(5.0, 0.22 * len(walls) + 0.9))
        y = np.arange(len(walls))[::-1]
        ax.barh(y, walls, color="#3b75af")
        ax.set_yticks(y, names, fontsize=7)
        ax.tick_params(axis="x", labelsize=7)
        ax.set_xlabel("wall time (s)", fontsize=8)
        for yi, w in zip(y, walls, strict=True):
            ax.text(w, yi, f" {w:.1f}", va="center", fontsize=7)
        ax.set_xlim(0, max(walls) * 1.15 or 1)
        ax.set_title("wall time per phase", fontsize=9)
        fig.tight_layout()
        chart = figures.embed(fig, "timings", "wall time per phase")
    return _section("timings", "Phase timings", f'<div class="row"><div>{body}</div><div>{chart}</div></div>')


def _losses(root: Path, manifest: dict, figures: _Figures) -> str:
    logs = {
        name: read_json(root / "logs" / f"{name}.json")
        for name in manifest["phases"]
        if (root / "logs" / f"{name}.json").is_file()
    }
    curves = {name: [r for r in history if "loss" in r and "step" in r] for name, history in logs.items()}
    curves = {k: v for k, v in curves.items() if v}
    if not curves:
        return _section("losses", "Training loss", _note("No training log (logs/<phase>.json) in this run."))
    fig, axes = figures.plt.subplots(1, 2, figsize=(11, 3.4))
    offset = 0
    for name, records in curves.items():
        steps = np.array([r["step"] for r in records]) + offset
        axes[0].plot(steps, [r["loss"] for r in records], marker=".", markersize=3, label=name)
        if any("grad_norm" in r for r in records):
            axes[1].plot(steps, [r.get("grad_norm", np.nan) for r in records], marker=".", markersize=3)
        last = max(r["step"] for r in logs[name] if "step" in r)
        offset += last
        axes[0].axvline(offset, color="#bbbbbb", linewidth=0.8)
    axes[0].set_title("training loss (SFT: cross-entropy; WD-JT: mixed-logit Eq. 6)", fontsize=9)
    axes[1].set_title("gradient norm (before clipping)", fontsize=9)
    for ax in axes:
        ax.set_xlabel("optimizer step (phases one after another)")
    axes[0].legend(fontsize=8)
    fig.tight_layout()
    rows = []
    for name, records in curves.items():
        summary = next((r for r in logs[name] if "train_loss" in r), {})
        rows.append(
            [
                _e(name),
                _num(len(records)),
                _num(records[0]["loss"]),
                _num(records[-1]["loss"]),
                _num(summary.get("train_loss")),
                _num(summary.get("train_runtime"), 1),
            ]
        )
    table = _table(
        ["phase", "logged steps", "first loss", "last loss", "mean train loss", "runtime (s)"], rows
    )
    return _section("losses", "Training loss", figures.embed(fig, "losses", "loss curves") + table)


def _histograms(rows: list[dict], t: int, figures: _Figures) -> str:
    def column(key: str) -> np.ndarray:
        return np.array([np.nan if r[key] is None else r[key] for r in rows], dtype=np.float64)

    h_weak, h_strong = column("entropy_weak"), column("entropy_strong")
    active = np.array([r["active"] for r in rows])
    from matplotlib.ticker import MaxNLocator

    fig, axes = figures.plt.subplots(1, 3, figsize=(12, 3.3))
    panels = (
        ("H_weak (Eq. 7, nats)", h_weak),
        ("H_strong (Eq. 7, nats)", h_strong),
        ("ΔH = H_strong − H_weak", h_strong - h_weak),
    )
    for ax, (title, values) in zip(axes, panels, strict=True):
        valid = np.isfinite(values)
        if not valid.any():
            ax.set_title(f"{title}: no finite value", fontsize=9)
            continue
        bins = np.histogram_bin_edges(values[valid], bins=min(30, max(5, int(valid.sum() ** 0.5) * 2)))
        ax.hist(
            [values[valid & active], values[valid & ~active]],
            bins=bins,
            stacked=True,
            color=["#d9822b", "#9fb8d0"],
            label=["selected (active)", "not selected"],
        )
        ax.set_title(title, fontsize=9)
        ax.set_ylabel("examples")
        ax.ticklabel_format(axis="x", useOffset=False)
        ax.xaxis.set_major_locator(MaxNLocator(5))
        ax.tick_params(labelsize=8)
        if title.startswith("ΔH") and values[valid].min() < 0 < values[valid].max():
            ax.axvline(0, color="black", linewidth=0.8)
    axes[0].legend(fontsize=8)
    fig.suptitle(f"WD-DS iteration {t}: entropies of every training example", fontsize=10)
    fig.tight_layout()
    return figures.embed(fig, f"selection-{t}-entropies", f"entropy histograms of iteration {t}")


def _separation_table(separation: dict) -> str:
    if not separation or separation.get("mean") is None:
        return ""
    q = separation["quantiles"]
    names = {"q00": "min", "q100": "max"}
    header = ["mean ΔH", "std", *[names.get(k, k[1:].lstrip("0") + "%") for k in q]]
    header += ["share ΔH < 0", "share ΔH > 0"]
    row = [
        _num(separation["mean"]),
        _num(separation["std"]),
        *[_num(v) for v in q.values()],
        f"{separation['share_negative']:.0%}",
        f"{separation['share_positive']:.0%}",
    ]
    return "<h4>Weak–strong separation (ΔH quantiles, nats)</h4>" + _table(header, [row])


def _selection(root: Path, t: int, entry: dict, cfg: RunConfig, figures: _Figures) -> str:
    title = f"WD-DS, iteration {t}"
    path = root / entry["file"] if entry.get("file") else None
    if path is None:
        text = (
            f"No selection: WD-JT trains on all {entry.get('active_examples')} examples "
            "(wmss.selection: all)."
        )
        return _section(f"selection-{t}", title, _note(text))
    if not path.is_file():
        return _section(f"selection-{t}", title, _note(f"{path} is missing.", "warning"))
    rows = read_jsonl(path)
    body = ""
    if entry.get("separation_warning"):
        body += _note(entry["separation_warning"], "warning")
    mass = entry.get("term_mass", {})
    labels = {"alpha": "α·[−ΔH]₊ consolidate", "beta": "β·H_strong hard now", "gamma": "γ·[ΔH]₊ repair"}
    if cfg.wmss.selection == "released_code":
        labels = {"alpha": "α·H_weak", "beta": "β·[−ΔH]₊", "gamma": "γ·[ΔH]₊"}
    body += _pairs(
        [
            (
                "active set",
                _e(
                    f"{entry.get('active_examples')} of {len(rows)} examples "
                    f"(active fraction {entry.get('active_fraction', 0):.1%}, de-duplication "
                    f"{'on' if entry.get('dedup') else 'off'})"
                ),
            ),
            ("mean H_weak", _num(entry.get("mean_entropy_weak"))),
            ("mean H_strong", _num(entry.get("mean_entropy_strong"))),
            ("mean ΔH", _num(entry.get("mean_entropy_gap"))),
            (
                "share of the probability mass (Eq. 9)",
                _e(", ".join(f"{labels.get(k, k)}: {v:.1%}" for k, v in mass.items()) or "–"),
            ),
            *[("note", _e(n)) for n in entry.get("notes", [])],
        ]
    )
    body += _separation_table(entry.get("entropy_gap", {}))
    body += _histograms(rows, t, figures)
    top = sorted(rows, key=lambda r: -r["weight"])[:TOP_EXAMPLES]
    texts, problem = _example_texts(cfg, {r["idx"] for r in top})

    def clip(text: str) -> str:
        return text if len(text) <= TEXT_CHARS else text[:TEXT_CHARS] + " …"

    table_rows = []
    for rank, r in enumerate(top, start=1):
        prompt, completion = texts.get(r["idx"], ("", ""))
        delta = (
            None
            if r["entropy_weak"] is None or r["entropy_strong"] is None
            else r["entropy_strong"] - r["entropy_weak"]
        )
        table_rows.append(
            [
                str(rank),
                _e(r["idx"]),
                _num(r["weight"], 5),
                _num(r["draws"]),
                _num(r["entropy_weak"], 3),
                _num(r["entropy_strong"], 3),
                _num(delta, 3),
                f'<div class="text">{_e(clip(prompt))}</div>',
                f'<div class="text">{_e(clip(completion))}</div>',
            ]
        )
    body += f"<h4>The {len(top)} highest-weight examples</h4>"
    if problem:
        body += _note(problem, "warning")
    body += _table(
        ["#", "idx", "weight p<sub>i</sub>", "draws", "H_weak", "H_strong", "ΔH", "prompt", "completion"],
        table_rows,
        "examples",
    )
    return _section(f"selection-{t}", title, body)


def _wdjt(root: Path, t: int, entry: dict, figures: _Figures) -> str:
    items = [
        ("status", _e(entry.get("status"))),
        ("weak", _e(entry.get("weak") or "– (λ = 1: SFT of the strong model)")),
        ("strong", _e(entry.get("strong"))),
        ("λ (mix_lambda)", _num(entry.get("mix_lambda"))),
    ]
    auto = entry.get("mix_lambda_auto")
    if auto:
        items.append(
            (
                "automatic λ",
                _e(
                    f"mean centred logit norm ‖z̃‖ {auto['strong_centred_norm']:.4f} (strong) vs "
                    f"{auto['weak_centred_norm']:.4f} (weak) on {auto['positions']} positions of "
                    f"{auto['examples']} examples → a = {auto['a']:.4f}, "
                    f"λ = 1/(1+√a) = {auto['mix_lambda']:.4f}"
                ),
            )
        )
    if entry.get("mix_lambda_end") is not None:
        items.append(("λ at the last step (variant: annealed)", _num(entry["mix_lambda_end"])))
    if entry.get("strong_lr_scale") is not None:
        items.append(("strong model's learning-rate scale (variant)", _num(entry["strong_lr_scale"])))
    if entry.get("learning_rate") is not None:
        items.append(("peak learning rate", _num(entry["learning_rate"], 8)))
    items += [
        ("weak frozen", _num(entry.get("freeze_weak"))),
        ("examples (active set)", _num(entry.get("examples"))),
        ("optimizer steps", _num(entry.get("steps"))),
        ("mean train loss", _num(entry.get("train_loss"))),
    ]
    grads = entry.get("gradients") or {}
    if grads:
        items += [
            (
                "gradient norm before clipping, strong / weak (mean)",
                f"{_num(grads.get('grad_norm_strong'))} / {_num(grads.get('grad_norm_weak'))}",
            ),
            ("clip factor (mean; 1 = not clipped)", _num(grads.get("clip_factor"))),
            ("strong model's share of ‖g‖² (mean)", _num(grads.get("strong_grad_share"))),
        ]
    chart = ""
    history = root / "logs" / f"{wdjt_phase(t)}.json"
    records = [r for r in read_json(history) if "grad_norm_strong" in r] if history.is_file() else []
    if records:
        fig, axes = figures.plt.subplots(1, 2, figsize=(11, 3.0))
        steps = [r["step"] for r in records]
        for key, label in (("grad_norm_strong", "strong"), ("grad_norm_weak", "weak")):
            axes[0].plot(steps, [r[key] for r in records], marker=".", markersize=3, label=label)
        axes[0].set_title("gradient norm per branch, before clipping", fontsize=9)
        axes[0].legend(fontsize=8)
        for key, label in (("clip_factor", "clip factor"), ("strong_grad_share", "strong share of ‖g‖²")):
            axes[1].plot(steps, [r[key] for r in records], marker=".", markersize=3, label=label)
        axes[1].set_ylim(0, 1.05)
        axes[1].set_title("clip factor and the strong model's share", fontsize=9)
        axes[1].legend(fontsize=8)
        for ax in axes:
            ax.set_xlabel("optimizer step (mean over each logging interval)")
        fig.tight_layout()
        chart = figures.embed(fig, f"wdjt-{t}-gradients", "gradient norms per branch")
    return _section(f"wdjt-{t}", f"WD-JT, iteration {t}", _pairs(items) + chart)


LOGIT_PANELS = (
    "target_logit",
    "background_logit",
    "target_background_gap",
    "logit_std",
    "centred_norm",
    "entropy",
    "max_prob",
    "target_prob",
)


def _logits(root: Path, figures: _Figures) -> str:
    path = logit_statistics_path(root / "diagnostics")
    if not path.is_file():
        text = (
            f"Not computed for this run: `wmss diagnose logits --run {root}` writes {path}, "
            f"or `wmss report {root} --logits` computes it with the report."
        )
        return _section("logits", "Logit statistics", _note(text))
    result = read_logit_statistics(root / "diagnostics")
    names = list(result["models"])
    body = _pairs([(name.replace("_", " "), _e(p)) for name, p in result.get("paths", {}).items()])
    body += _note(
        f"At {result['positions']} completion positions of {result['examples']} training examples "
        f"(seed {result.get('seed')}); every value is a mean over positions. Margins m_k(z) = z[y] − z[k]."
    )
    rows = [
        [_e(label), *[_num(result["models"][n][k]) for n in names]] for k, label in MODEL_STATISTICS.items()
    ]
    body += _table(["statistic", *[_e(n.replace("_", " ")) for n in names]], rows)
    pairs = list(result.get("pairs", {}))
    if pairs:
        rows = [
            [_e(label), *[_num(result["pairs"][p][k]) for p in pairs]] for k, label in PAIR_STATISTICS.items()
        ]
        crossover = result.get("crossover", {})
        rows.append(
            [
                "crossover λ = 1/(1+√a)",
                *[_num(crossover[p]["mix_lambda"]) if p in crossover else "–" for p in pairs],
            ]
        )
        body += _table(["pair statistic", *[_e(p.replace("_", " ")) for p in pairs]], rows)
    colours = {"weak": "#9fb8d0", "strong_before": "#3b75af", "strong_after": "#d9822b"}
    fig, axes = figures.plt.subplots(2, 4, figsize=(12, 5.0))
    for ax, key in zip(axes.flat, LOGIT_PANELS, strict=True):
        values = [result["models"][n][key] for n in names]
        bars = ax.bar(range(len(names)), values, color=[colours.get(n, "#888888") for n in names])
        ax.bar_label(bars, fmt="%.3g", fontsize=7)
        ax.set_xticks(range(len(names)), [n.replace("_", "\n") for n in names], fontsize=7)
        ax.set_title(MODEL_STATISTICS[key], fontsize=8)
        ax.axhline(0, color="black", linewidth=0.6)
        ax.margins(y=0.18)
    fig.suptitle("logit statistics at completion positions", fontsize=10)
    fig.tight_layout()
    body += figures.embed(fig, "logits", "logit statistics")
    return _section("logits", "Logit statistics", body)


def _evaluation(root: Path, manifest: dict) -> str:
    entry = manifest["phases"].get("eval")
    results = root / "eval" / "results.json"
    if entry is None and not results.is_file():
        return _section(
            "evaluation", "Evaluation", _note("No evaluation in this run (eval.task / eval.path).")
        )
    summary = entry if entry and "accuracy" in entry else read_json(results)
    items = [
        (
            "accuracy",  # every value escaped: a manifest is a file anyone may have edited
            f"<b>{_e(_share(summary.get('accuracy')))}</b> "
            f"({_e(summary.get('num_correct'))}/{_e(summary.get('num_problems'))})",
        ),
        ("task", _e(summary.get("task"))),
        ("data", _e(summary.get("source", summary.get("path")))),
    ]
    for key in (
        "num_samples",
        "num_malformed_rows",
        "num_unparsable_gold",
        "num_empty_generation",
        "num_hit_length_limit",
        "generated_tokens",
        "wall_time_s",
    ):
        if key in summary:
            label = key.replace("_", " ").replace("wall time s", "wall time (s)")
            items.append((label, _num(summary[key])))
    if summary.get("pass_at_k"):
        values = summary["pass_at_k"].items()
        items.append(("pass@k", _e(", ".join(f"@{k}: {_share(v)}" for k, v in values))))
    if entry and entry.get("status") == "stale":
        items.append(("status", "stale: the eval section changed since; re-run to evaluate again"))
    return _section("evaluation", "Evaluation", _pairs(items))


def write_run_report(
    run_dir: str | Path, output: str | Path | None = None, compute_logits: bool = False
) -> Path:
    """Write ``report.html`` (figures embedded) and its PNG figures to ``output`` (default
    ``RUN_DIR/report``); with ``compute_logits``, first run ``wmss diagnose logits`` on the run."""
    root, manifest, cfg = load_run(run_dir)
    out = Path(output) if output else root / "report"
    if compute_logits:
        diagnose_to_files(cfg, run_models(root, manifest), root / "diagnostics")
    figures = _Figures(out)
    phases = manifest["phases"]
    sections = [
        _overview(root, manifest, cfg),
        _configuration(cfg),
        _timings(manifest, figures),
        _losses(root, manifest, figures),
    ]
    nav = [("overview", "overview"), ("configuration", "configuration"), ("timings", "timings")]
    nav.append(("losses", "training loss"))
    for t in range(1, cfg.wmss.iterations + 1):
        if phases.get(selection_phase(t), {}).get("status") == "done":
            sections.append(_selection(root, t, phases[selection_phase(t)], cfg, figures))
            nav.append((selection_phase(t), f"WD-DS {t}"))
        if wdjt_phase(t) in phases:
            sections.append(_wdjt(root, t, phases[wdjt_phase(t)], figures))
            nav.append((wdjt_phase(t), f"WD-JT {t}"))
    sections += [_logits(root, figures), _evaluation(root, manifest)]
    nav += [("logits", "logit statistics"), ("evaluation", "evaluation")]
    page = render_template("report.html.j2", run_name=root.name, nav=nav, sections=sections)
    atomic_write_text(out / "report.html", page)
    log.info("report: %s (%d figures beside it)", out / "report.html", len(figures.files))
    return out / "report.html"

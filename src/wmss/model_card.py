"""The model card (``README.md``) of a run's ``final/``: where the model comes from and what made it."""

from __future__ import annotations

import re
import shlex
import sys
from pathlib import Path
from typing import Any

from wmss.io import atomic_write_text

METHOD_TEXT = {
    "wmss": "WMSS (Algorithm 1: SFT, then {k} iteration(s) of weak-driven data selection and joint "
    "weak+strong training, λ = {mix_lambda})",
    "sft": "supervised fine-tuning (the paper's SFT baseline)",
    "neftune": "SFT with NEFTune noise (α = {alpha})",
    "undial": "SFT, then UNDIAL self-distillation",
    "dpo": "SFT, then DPO on pairs of its own graded answers",
    "spin": "SFT, then one SPIN iteration",
}


def command_line() -> str:
    """How this process was started: the ``wmss`` command as typed, or a note for the Python API."""
    name = Path(sys.argv[0]).name if sys.argv and sys.argv[0] else ""
    if name in ("wmss", "__main__.py"):
        return shlex.join(["wmss", *sys.argv[1:]])
    return f"wmss.run(...) from {name or 'Python'} (the whole configuration is in the run's config.yaml)"


def is_hub_id(model: str) -> bool:
    """Whether ``model`` names a Hub repository (``namespace/name``, not a local path or ``.gguf`` file):
    only such a name may be the card's ``base_model``, which the Hub checks when the card is uploaded."""
    is_local = Path(model).exists() or model.endswith(".gguf")
    return not is_local and re.fullmatch(r"[\w.-]+/[\w.-]+", model) is not None


def model_card(manifest: dict[str, Any]) -> str:
    """The card's Markdown: base model, method, data, budget, evaluation and the command."""
    cfg = manifest.get("config", {})
    method = cfg.get("method", "wmss")
    text = METHOD_TEXT.get(method, method).format(
        k=cfg.get("wmss", {}).get("iterations"),
        mix_lambda=cfg.get("wmss", {}).get("mix_lambda"),
        alpha=cfg.get("neftune", {}).get("alpha"),
    )
    data = manifest.get("data", {})
    spent = manifest.get("budget", {})
    lines = [
        "---",
        *([f"base_model: {cfg.get('model')}"] if is_hub_id(str(cfg.get("model"))) else []),
        "library_name: transformers",
        f"tags: [wmss, {method}]",
        "---",
        "",
        f"# {cfg.get('model')} trained with wmss ({method})",
        "",
        f"- **Base model:** `{cfg.get('model')}`",
        f"- **Method:** {text}",
        f"- **Data:** `{cfg.get('data', {}).get('path') or 'a dataset object (wmss.run train_dataset)'}`, "
        f"{data.get('num_examples', '?')} examples",
        f"- **Budget:** {spent.get('optimizer_steps', '?')} optimizer steps, "
        f"{spent.get('passes_over_data', '?')} passes over the data, "
        f"{spent.get('train_wall_time_s', '?')} s of training",
    ]
    evaluation = manifest.get("phases", {}).get("eval")
    if evaluation and evaluation.get("status") == "done" and "accuracy" in evaluation:
        lines.append(
            f"- **Evaluation:** {evaluation.get('task')}: accuracy {evaluation['accuracy']:.4f} on "
            f"{evaluation.get('num_scored')} problems"
        )
    lines += ["", "Made by:", "", "```bash", command_line(), "```", ""]
    return "\n".join(lines)


def write_model_card(manifest: dict[str, Any], final: Path) -> None:
    """Write ``final/README.md`` (atomically: a hard-linked card of the source model stays as it was)."""
    atomic_write_text(final / "README.md", model_card(manifest))

"""wmss: weak-driven learning (WMSS) for causal language models.

The public Python API; these names are stable (everything else may change between versions)::

    import wmss

    manifest = wmss.run("configs/demo.yaml", ["seed=1"])        # the whole pipeline, as `wmss run`
    cfg = wmss.load_config("my.yaml", ["wmss.mix_lambda=0.42"])  # or wmss.RunConfig(), or a dict

    data = wmss.tokenize_dataset(my_dataset, tokenizer, max_length=512)   # prompt/completion rows
    h = wmss.dataset_entropies(model, data, tokenizer.pad_token_id)      # Eq. 7 per example
    sel = wmss.select(h_weak, h_strong, alpha=0.1, beta=0.8, gamma=0.1, form="paper", dedup=True, seed=0)
    active = data.select(sel.active_rows)                                 # WD-DS (Eq. 9)
    trainer = wmss.WDJTTrainer(model=strong, weak_model=weak, args=wmss.WDJTConfig(output_dir="out"),
                               train_dataset=active, processing_class=tokenizer)
    trainer.train(); trainer.save_model("out/strong")                    # WD-JT (Eq. 5-6)

    wmss.evaluate({"sft": "runs/sft/final", "wmss": "runs/wmss/final"}, ["gsm8k"], "eval", baseline="sft")

The names are imported on first use, so ``import wmss`` stays cheap.
"""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

_PUBLIC = {
    "RunConfig": "wmss.config",
    "load_config": "wmss.config",
    "config_from_dict": "wmss.config",
    "run": "wmss.api",
    "tokenize_dataset": "wmss.api",
    "evaluate": "wmss.api",
    "dataset_entropies": "wmss.entropy",
    "select": "wmss.selection",
    "selection_weights": "wmss.selection",
    "Selection": "wmss.selection",
    "WDJTTrainer": "wmss.trainers",
    "WDJTConfig": "wmss.trainers",
    "WmssError": "wmss.errors",
}

__all__ = ["__version__", *_PUBLIC]


def __getattr__(name: str) -> Any:
    if name in _PUBLIC:
        return getattr(importlib.import_module(_PUBLIC[name]), name)
    raise AttributeError(f"module 'wmss' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(__all__)

"""The SFT learning curve of a study (issue 13, part B1): SFT to a plateau, measured after every epoch.

One ``wmss run`` per seed (``method: sft``, ``sft.epochs: curve.max_epochs``, one schedule over all of
them) with ``EpochProbe`` as a Trainer callback. After every epoch the probe saves the model
(``epochs/epoch-<k>``, a plain checkpoint; its graded answers go to ``epochs/eval-<k>``) and measures,
with the model as it is at that point:

- on every training example: the training loss (completion-token cross-entropy, eval mode), the
  saturation statistics (``wmss.diagnostics.saturation_statistics``: share of completion tokens whose
  target probability exceeds 0.99 and their share of the gradient) and the mean Eq. 7 entropy;
- greedy accuracy on a fixed, seeded sample of ``curve.train_sample`` training problems;
- greedy accuracy on the validation split.

Training stops when validation accuracy has not reached its best for ``curve.patience`` epochs; the
best epoch is the plateau epoch E*, recorded with the rows in ``curve.json`` beside the run. A tie counts
as reaching the best: E* is the *latest* epoch with the best validation accuracy (on a plateau, the more
trained model, which is the saturated one the study is after), and a tie starts the patience again.
An interrupted curve resumes like any run: finished epochs keep their rows and are not measured again.
"""

from __future__ import annotations

import logging
import random
from pathlib import Path
from typing import Any

import numpy as np
from transformers import TrainerCallback

from wmss.config import RunConfig
from wmss.io import atomic_write_json, read_json, read_jsonl

log = logging.getLogger("wmss")

CURVE_FILE = "curve.json"


def plateau_row(rows: list[dict[str, Any]]) -> dict[str, Any] | None:
    """The row of the best validation accuracy so far (ties: the later epoch; see the module)."""
    return max(reversed(rows), key=lambda r: r["val_accuracy"]) if rows else None


def plateau_reached(rows: list[dict[str, Any]], patience: int) -> bool:
    """Whether the last ``patience`` epochs came after the plateau epoch (none of them reached the best)."""
    best = plateau_row(rows)
    return best is not None and rows[-1]["epoch"] - best["epoch"] >= patience


class EpochProbe(TrainerCallback):
    """Saves and measures the model after every epoch; stops training at the plateau (see the module)."""

    def __init__(
        self, cfg: RunConfig, out: Path, train_file: Path, val_file: Path, train_sample: int, patience: int
    ):
        self.cfg, self.out, self.patience = cfg, out, patience
        self.train_file, self.val_file, self.train_sample = train_file, val_file, train_sample
        path = out / CURVE_FILE
        self.rows: list[dict[str, Any]] = read_json(path)["epochs"] if path.is_file() else []
        self._inputs: tuple[Any, Any, Any, Any] | None = None

    def plateau(self) -> dict[str, Any] | None:
        return plateau_row(self.rows)

    def stop(self) -> bool:
        return plateau_reached(self.rows, self.patience)

    def on_epoch_end(self, args: Any, state: Any, control: Any, model: Any = None, **kwargs: Any) -> Any:
        epoch = round(state.epoch)
        if any(r["epoch"] == epoch for r in self.rows):  # measured before an interruption
            control.should_training_stop = self.stop()
            return control
        tokenizer = kwargs["processing_class"]
        was_training = model.training
        self.rows.append(self.measure(model, tokenizer, epoch))
        model.train(was_training)
        best = self.plateau()
        atomic_write_json(self.out / CURVE_FILE, {"epochs": self.rows, "plateau_epoch": best["epoch"]})
        log.info(
            "curve: epoch %d, validation %.1f%% (best %.1f%% at epoch %d)",
            epoch, 100 * self.rows[-1]["val_accuracy"], 100 * best["val_accuracy"], best["epoch"],
        )  # fmt: skip
        control.should_training_stop = self.stop()
        return control

    def inputs(self, tokenizer: Any) -> tuple[Any, Any, Any, Any]:
        """(tokenised training data, task, fixed training-problem sample, validation problems), read and
        tokenised at the first epoch's end and kept for the others."""
        if self._inputs is not None:
            return self._inputs
        from wmss.data import load_training_data
        from wmss.evaluation.harness import load_problems, parse_task_spec
        from wmss.evaluation.tasks import TaskData

        cfg = self.cfg
        dataset, _ = load_training_data(cfg.data, tokenizer, cfg.train.max_length)
        task, _ = parse_task_spec("mawps", cfg.eval)
        rows = read_jsonl(self.train_file)
        picked = sorted(random.Random(cfg.seed).sample(range(len(rows)), min(self.train_sample, len(rows))))
        problems = [{"id": rows[i]["id"], "question": rows[i]["question"], "answer": rows[i]["answer"]}
                    for i in picked]  # fmt: skip
        sample = TaskData(task, str(self.train_file), problems, [])
        self._inputs = dataset, task, sample, load_problems(task, str(self.val_file), cfg.eval)
        return self._inputs

    def measure(self, model: Any, tokenizer: Any, epoch: int) -> dict[str, Any]:
        from wmss.diagnostics import saturation_statistics
        from wmss.entropy import dataset_entropies
        from wmss.evaluation.harness import evaluate_one
        from wmss.models import save_model

        cfg, where = self.cfg, self.out / "epochs" / f"epoch-{epoch}"
        save_model(model, tokenizer, where)
        dataset, task, sample, validation = self.inputs(tokenizer)
        model.eval()
        saturation = saturation_statistics(
            model,
            dataset,
            tokenizer.pad_token_id,
            batch_size=cfg.wmss.entropy_batch_size,
            fused=cfg.train.fused_loss,
        )
        entropy = dataset_entropies(
            model, dataset, tokenizer.pad_token_id, cfg.wmss.entropy_batch_size, fused=cfg.train.fused_loss
        )
        graded = self.out / "epochs" / f"eval-{epoch}"  # beside the checkpoint, which stays a plain model
        on_train = evaluate_one(model, tokenizer, task, sample, cfg, graded / "train")
        on_val = evaluate_one(model, tokenizer, task, validation, cfg, graded / "valid")
        return {
            "epoch": epoch,
            "model": str(where),
            "train_loss": saturation["loss"],
            "saturated_share": saturation["saturated_share"],
            "saturated_gradient_share": saturation["saturated_gradient_share"],
            "target_prob": saturation["target_prob"],
            "mean_entropy": float(np.nanmean(entropy)),
            "train_accuracy": on_train["accuracy"],
            "train_problems": on_train["num_problems"],
            "val_accuracy": on_val["accuracy"],
            "val_problems": on_val["num_problems"],
        }


def read_curve(run_dir: Path) -> dict[str, Any] | None:
    path = run_dir / CURVE_FILE
    return read_json(path) if path.is_file() else None

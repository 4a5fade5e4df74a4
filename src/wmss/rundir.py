"""The run directory of ``wmss run`` and of the per-phase commands: the one owner of its layout, its
``manifest.json`` (writing and reading), the phase names, the budget, and where each phase trains.

Layout::

    manifest.json            status, config, timings and outputs of every phase; ``budget``: optimizer
                             steps, passes over the data and training wall time of the whole run;
                             ``hub``: the upload of ``final/`` (``hub.push``), its commit or error
    config.yaml              the resolved configuration
    models/M1, models/M2 …   every model of the chain (M0 is recorded as a reference to the base);
                             baselines: models/neftune, models/undial, models/dpo, models/spin
    final/                   the last strong model, a standard Hugging Face checkpoint
    entropy/M<k>.jsonl       Eq. 7 entropies per example for checkpoint M<k> (reused across iterations)
    selection-<t>.jsonl      WD-DS of iteration t: idx, entropy_weak, entropy_strong, weight, draws, active
    pairs.jsonl              dpo/spin: M1's answers per training example, their verdicts and the pair
    checkpoints/<phase>/     Trainer checkpoints of an unfinished training phase (removed when it ends)
    logs/<phase>.json        Trainer log history of a finished training phase
    tensorboard/<phase>/     TensorBoard event files, with ``train.report_to: tensorboard`` (with
                             ``wandb``, each phase is a W&B run named ``<run dir's name>/<phase>``)
    diagnostics/             ``wmss diagnose logits --run``: logits.json, logits.md
    report/                  ``wmss report``: report.html (self-contained) and its PNG figures
    eval/                    predictions and accuracy of the final model, when an eval task is set

Every file is written atomically. Re-running the same command skips finished phases and resumes an
unfinished training phase from its last complete checkpoint; a directory made with another
configuration or other inputs is refused.

Under several processes each holds the manifest and only the main process writes it (and every other
file of the run); after each phase the others wait for it and read the manifest back.
"""

from __future__ import annotations

import errno
import json
import logging
import math
import os
import shutil
import socket
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import yaml
from transformers import TrainerCallback

from wmss import __version__, distributed
from wmss.config import RunConfig, config_from_dict
from wmss.data import DataReport
from wmss.errors import ConfigError, WmssError
from wmss.io import atomic_write_json, atomic_write_text, file_digest, read_json, remove_litter
from wmss.trainers import PhaseTraining, ScheduleSegment, steps_per_pass

log = logging.getLogger("wmss")

# ---------------------------------------------------------------- phase names

M0, SFT, FINAL, EVAL, PAIRS = "M0", "sft", "final", "eval", "pairs"
NOT_TRAINING = (M0, FINAL, EVAL)
"""Phases whose wall time is not training time (the budget leaves them out)."""


def entropy_phase(model: str) -> str:
    """The Eq. 7 pass over D under checkpoint ``model`` (``M0``, ``M1``, …)."""
    return f"entropy-{model}"


def selection_phase(t: int) -> str:
    """WD-DS of iteration t."""
    return f"selection-{t}"


def wdjt_phase(t: int) -> str:
    """WD-JT of iteration t."""
    return f"wdjt-{t}"


# ---------------------------------------------------------------- what makes a run the same run

NON_RESULT_KEYS = (
    "output_dir",
    "allow_existing_output",
    "eval",
    "hub",
    "train.logging_steps",
    "train.report_to",
    "train.save_steps",
    "train.save_total_limit",
    "train.fused_loss",
    "train.padding_free",
    "train.ddp_timeout",
    "wmss.entropy_batch_size",
    "wmss.min_entropy_gap",
)
"""Keys that do not change what a run computes; they may differ when a run is resumed."""


def flatten(d: dict, prefix: str = "") -> dict[str, Any]:
    """``{"a": {"b": 1}}`` -> ``{"a.b": 1}``."""
    out = {}
    for k, v in d.items():
        if isinstance(v, dict):
            out.update(flatten(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


def result_config(cfg: RunConfig) -> dict[str, Any]:
    """The flattened keys of ``cfg`` that change what a run computes (compared on resume)."""
    flat = flatten(cfg.to_dict())
    ignored = NON_RESULT_KEYS
    if cfg.wmss.mix_lambda != "auto":  # the diagnostic sample changes a run only by measuring λ
        ignored += ("wmss.diagnostic_examples",)
    flat["sft.epochs"] = cfg.sft_epochs  # as resolved: unset and its value are the same run
    # The global batch is per_device_batch_size × gradient_accumulation_steps × processes.
    flat["num_processes"] = distributed.world_size()
    return {k: v for k, v in flat.items() if not any(k == n or k.startswith(n + ".") for n in ignored)}


def _now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S%z")


# ---------------------------------------------------------------- the run directory


class RunDir:
    """A run directory and its ``manifest.json``; runs phases once and records them.

    ``inputs``: what a run consumes besides its configuration (e.g. ``wmss joint``'s weak and strong
    checkpoints and selection file); a directory made from other inputs is refused like one made with
    another configuration. ``callbacks`` go to every Trainer of the run (``training``).
    """

    def __init__(
        self,
        cfg: RunConfig,
        inputs: dict[str, Any] | None = None,
        callbacks: list[TrainerCallback] | None = None,
    ):
        self.cfg, self.callbacks = cfg, callbacks
        self.root = Path(cfg.output_dir)
        self.manifest_path = self.root / "manifest.json"
        self._locked = False
        if distributed.is_main():
            claim(self.root, cfg.allow_existing_output)
            self._locked = lock(self.root)
        try:
            self._open(cfg, inputs)
        except BaseException:  # the lock is given back whatever stops the start
            self.release()
            raise

    def _open(self, cfg: RunConfig, inputs: dict[str, Any] | None) -> None:
        """Read (and check) or start the manifest, after cleaning what interrupted writes left."""
        if distributed.is_main():
            remove_litter(self.root)
        distributed.barrier()
        wanted = result_config(cfg)
        if self.manifest_path.is_file():
            try:
                self.manifest = json.loads(self.manifest_path.read_text())
            except json.JSONDecodeError as err:
                raise WmssError(
                    f"{self.manifest_path} is damaged ({err.msg}, line {err.lineno}); the run cannot be "
                    "resumed. Use a new output_dir (or move this one away)."
                ) from None
            if not self._computed():  # e.g. a model that failed to load, now repaired: nothing to mix with
                self.manifest["inputs"] = {}
            self._check_same_run(wanted, inputs or {})
        else:
            self.manifest = {
                "wmss_version": __version__,
                "created": _now(),
                "result_config": wanted,
                "phases": {},
            }
        if inputs:
            self.manifest["inputs"] = {**self.manifest.get("inputs", {}), **inputs}
        self.manifest["config"] = cfg.to_dict()
        distributed.barrier()  # every process has read the old manifest before the main one rewrites it
        if distributed.is_main():
            atomic_write_text(self.root / "config.yaml", yaml.safe_dump(cfg.to_dict(), sort_keys=False))
        self.save()
        self.sync()

    def _computed(self) -> bool:
        """Whether anything of the run has been computed yet: a finished phase (M0 only names the base)
        or a Trainer checkpoint. Until then changed inputs (a model that failed to load, now repaired)
        may take the directory over: there is nothing made from the old ones to mix with."""
        phases = self.manifest.get("phases", {})
        if any(p.get("status") == "done" for name, p in phases.items() if name != M0):
            return True
        checkpoints = self.root / "checkpoints"
        return checkpoints.is_dir() and any(checkpoints.iterdir())

    def _check_same_run(self, wanted: dict[str, Any], inputs: dict[str, Any]) -> None:
        old_inputs = self.manifest.get("inputs", {})  # a run made before inputs were recorded: not compared
        changed = sorted(k for k in set(old_inputs) & set(inputs) if old_inputs[k] != inputs[k])
        if changed:
            details = "; ".join(f"{k}: {_describe(old_inputs[k], inputs[k])}" for k in changed)
            raise ConfigError(
                f"{self.root} holds a run made from other inputs ({details}). Resuming would mix two "
                "experiments: use a new output directory (or move this one away to start afresh), or give "
                "the same inputs to resume it."
            )
        old = self.manifest.get("result_config", {})
        # A key added to the config since the run was made counts as its default value.
        default = {**flatten(RunConfig().to_dict()), **result_config(RunConfig()), "num_processes": 1}
        before = {k: old.get(k, default.get(k)) for k in set(old) | set(wanted)}
        changed = sorted(k for k, v in before.items() if v != wanted.get(k))
        if changed:
            details = "; ".join(f"{k}: {before[k]!r} -> {wanted.get(k)!r}" for k in changed[:6])
            processes = (
                " The number of processes is part of it: the global batch is per_device_batch_size × "
                "gradient_accumulation_steps × processes."
                if "num_processes" in changed
                else ""
            )
            raise ConfigError(
                f"{self.root} holds a run made with a different configuration ({details}). "
                "Resuming would mix two experiments: use a new output_dir, or restore those "
                f"values to resume the run.{processes}"
            )

    def release(self) -> None:
        """Give the directory's lock back (``lock``); the run is over or has stopped."""
        if self._locked:
            (self.root / LOCK).unlink(missing_ok=True)
            self._locked = False

    def save(self) -> None:
        if distributed.is_main():
            atomic_write_json(self.manifest_path, self.manifest)

    def sync(self) -> None:
        """Under several processes: wait until the main process has written, then read its manifest."""
        if distributed.world_size() > 1:
            distributed.barrier()
            if not distributed.is_main():
                self.manifest = json.loads(self.manifest_path.read_text())

    def done(self, phase: str) -> dict | None:
        """The record of ``phase`` when it is done and what it wrote is still there. Until ``final/`` is
        published, a done phase whose model or file in the run directory has gone (deleted by hand) is
        not done: it is computed again, with a warning saying what is missing. Once ``final/`` is there
        the run's result stands, and intermediate models may be deleted to save space."""
        entry = self.manifest["phases"].get(phase)
        if not entry or entry.get("status") != "done":
            return None
        if phase == FINAL or not self._has_output(FINAL, self.manifest["phases"].get(FINAL) or {}):
            if not self._has_output(phase, entry):
                log.warning(
                    "phase %s: was done, but its output %s is missing from %s; computing it again.",
                    phase, entry.get("model") or entry.get("file"), self.root,
                )  # fmt: skip
                entry["status"] = "missing"
                return None
        return entry

    def _has_output(self, phase: str, entry: dict) -> bool:
        """Whether the model directory or file ``entry`` records inside the run directory exists (True for
        what lies outside it: M0, a given M1; and for the evaluation)."""
        if entry.get("status") != "done":
            return False
        if phase in (M0, EVAL) or entry.get("reused"):
            return True
        for key in ("model", "file"):
            recorded = entry.get(key)
            if isinstance(recorded, str) and recorded and not Path(recorded).is_absolute():
                path = self.root / recorded
                if key == "file" and not path.is_file():
                    return False
                if key == "model" and not any(
                    (path / n).is_file() for n in ("config.json", "adapter_config.json")
                ):
                    return False
        return True

    def phase(self, name: str, work: Callable[[], dict[str, Any]], alone: bool = False) -> dict[str, Any]:
        """Run ``work`` unless ``name`` is already done; record status, timing and its outputs. The wall
        time includes earlier attempts that were interrupted (not those of a process killed outright).

        Every process calls it, and waits for the others at the end, unless ``alone``: a phase the main
        process runs after the others have finished (evaluation).
        """
        finished = self.done(name)
        if finished:
            log.info("phase %s: already done, skipping", name)
            return finished
        entry = self.manifest["phases"].setdefault(name, {})
        attempts = entry.get("attempts", 0) + 1
        entry.update(status="running", started=_now(), attempts=attempts)
        self.save()
        log.info("phase %s: started%s", name, f" (attempt {attempts}, resuming)" if attempts > 1 else "")
        start = time.perf_counter()
        try:
            outputs = work()
        except BaseException:  # an interrupted attempt's time still counts towards the phase's
            entry["interrupted_time_s"] = round(
                entry.get("interrupted_time_s", 0.0) + time.perf_counter() - start, 2
            )
            self.save()
            raise
        entry.update(outputs)
        elapsed = time.perf_counter() - start + entry.get("interrupted_time_s", 0.0)
        entry.update(status="done", finished=_now(), wall_time_s=round(elapsed, 2))
        self.save()
        if not alone:
            self.sync()
        log.info("phase %s: done in %.1f s", name, entry["wall_time_s"])
        return entry

    def rel(self, path: Path) -> str:
        return str(path.relative_to(self.root))

    def record_data(self, report: DataReport) -> None:
        self.manifest["data"] = report.to_dict()
        self.save()
        log.info("data: %s", report.summary())

    # ------------------------------------------------------------ training phases

    def training(
        self, phase: str, save_to: Path | None = None, learning_rate: float | None = None
    ) -> PhaseTraining:
        """Where and how ``phase`` trains: ``checkpoints/<phase>``, ``tensorboard/<phase>``, the run's
        seed and callbacks, and its segment of the run's learning-rate schedule (``schedule_segments``)."""
        examples = self.manifest.get("data", {}).get("num_examples")
        segments = schedule_segments(self.cfg, examples) if examples else {}
        return PhaseTraining(
            checkpoint_dir=self.root / "checkpoints" / phase,
            seed=self.cfg.seed,
            logging_dir=self.root / "tensorboard" / phase,
            save_to=save_to,
            callbacks=self.callbacks,
            learning_rate=learning_rate,
            segment=segments.get(phase),
            phase=phase,
            run_name=self.root.resolve().name,
        )

    def training_record(self, result: dict[str, Any], phase: str) -> dict[str, Any]:
        """Keep a finished phase's Trainer log (``logs/<phase>.json``), drop its checkpoints; the
        numbers the manifest keeps."""
        if distributed.is_main():
            atomic_write_json(self.root / "logs" / f"{phase}.json", result["log_history"])
            shutil.rmtree(self.root / "checkpoints" / phase, ignore_errors=True)
            if (self.root / "checkpoints").is_dir() and not any((self.root / "checkpoints").iterdir()):
                (self.root / "checkpoints").rmdir()
        keep = ("steps", "train_loss", "train_runtime", "train_samples_per_second")
        return {k: result[k] for k in keep if k in result}

    def record_budget(self, num_examples: int) -> dict[str, Any]:
        """``manifest["budget"]`` (``budget``) of the phases run so far."""
        self.manifest["budget"] = budget(self.manifest["phases"], num_examples, self.cfg)
        self.save()
        return self.manifest["budget"]


MARKER, LOCK = ".wmss-run", ".wmss-lock"


def _describe(old: Any, new: Any) -> str:
    """One input's change in words: another file or model, or the same path with other contents."""

    def name(identity: Any) -> str:
        if isinstance(identity, dict):
            return str(identity.get("model") or identity.get("file") or identity.get("dataset"))
        return str(identity)

    if name(old) == name(new):
        return f"{name(new)} has changed since"
    return f"{name(old)} -> {name(new)}"


def data_identity(path: str, split: str, subset: str | None) -> dict[str, Any]:
    """What a run's training data is: a local file's path and content hash, or a hub dataset's name."""
    local = Path(path).expanduser()
    if local.is_file():
        return {"file": str(local.resolve()), "sha256": file_digest(local)}
    return {"dataset": path, "split": split, "subset": subset}


def claim(root: Path, allow_existing: bool) -> None:
    """Make ``root`` a wmss directory (``MARKER``), refusing a file, an unwritable place, or an existing
    directory with other contents that wmss did not make (unless ``allow_existing``)."""
    if root.exists() and not root.is_dir():
        raise ConfigError(f"output_dir {root} is a file, not a directory: give a directory path.")
    if root.is_symlink() and not root.exists():
        raise ConfigError(
            f"output_dir {root} is a symbolic link to {os.readlink(root)}, which does not exist: create that "
            "directory, remove the link, or give another output_dir."
        )
    ours = (root / MARKER).is_file() or (root / "manifest.json").is_file()
    if root.is_dir() and not ours and any(root.iterdir()) and not allow_existing:
        raise ConfigError(
            f"output_dir {root} already holds files that wmss did not write; a run there would replace its "
            "final/ and models/ folders. Give a new directory, or set allow_existing_output=true to use it."
        )
    try:
        root.mkdir(parents=True, exist_ok=True)
        if not (root / MARKER).is_file():
            atomic_write_json(root / MARKER, {"wmss_version": __version__, "created": _now()})
    except OSError as err:
        if err.errno in (errno.ENOSPC, errno.EDQUOT):  # a full disk: reported as such by the CLI
            raise
        raise ConfigError(f"cannot write to output_dir {root}: {err.strerror or err}.") from None


def lock(root: Path) -> bool:
    """Take ``root``'s lock (``LOCK``: pid and host of its holder); refuse while another live process
    holds it. A lock left by a process that has ended (a crash, a kill -9) is taken over."""
    path, me = root / LOCK, {"pid": os.getpid(), "host": socket.gethostname(), "since": _now()}
    me["started"] = _process_start(os.getpid())
    for _ in range(2):
        try:
            with open(path, "x") as handle:
                json.dump(me, handle)
            return True
        except FileExistsError:
            try:
                holder = json.loads(path.read_text() or "{}")
            except (OSError, json.JSONDecodeError):
                holder = {}
            if _alive(holder) and holder.get("pid") != me["pid"]:
                raise ConfigError(
                    f"{root} is in use by another wmss run (pid {holder['pid']} on {holder['host']}, since "
                    f"{holder.get('since')}). Wait for it to finish or stop it: two runs in one directory "
                    "would overwrite each other."
                ) from None
            if holder.get("pid") != me["pid"]:
                log.warning(
                    "%s: taking over the lock of a run that ended without releasing it (%s).", root, holder
                )
            path.unlink(missing_ok=True)
    raise ConfigError(f"could not take the lock {path}; remove it if no wmss run is using {root}.")


def _process_start(pid: int) -> int | None:
    """When process ``pid`` started (clock ticks since boot, from /proc), or None where unknown: tells a
    lock's holder from another process that got its pid later."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
        return int(fields[19])  # field 22 of stat(5); fields[0] is field 3
    except (OSError, ValueError, IndexError):
        return None


def _alive(holder: dict) -> bool:
    """Whether the lock's holder is a running process (on another host: assumed so). A live process with
    the holder's pid but another start time is not the holder: its pid was reused after the holder ended."""
    pid = holder.get("pid")
    if not isinstance(pid, int):
        return False
    if holder.get("host") != socket.gethostname():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass
    started = holder.get("started")  # None in locks of older versions, or where /proc is missing
    return started is None or _process_start(pid) in (None, started)


def schedule_segments(cfg: RunConfig, num_examples: int) -> dict[str, ScheduleSegment]:
    """With ``wmss.lr_schedule: whole_run`` (method wmss), each training phase's segment of the one
    schedule over the whole budget: ``sft`` first, then ``wdjt-1`` … ``wdjt-K``, each as long as its
    nominal passes over D; empty otherwise (every phase has its own schedule)."""
    if cfg.method != "wmss" or cfg.wmss.lr_schedule != "whole_run" or cfg.wmss.iterations == 0:
        return {}
    per_pass = steps_per_pass(num_examples, cfg.train)
    lengths = [(SFT, math.ceil(cfg.sft_epochs * per_pass))]
    lengths += [
        (wdjt_phase(t), math.ceil(cfg.wmss.epochs * per_pass)) for t in range(1, cfg.wmss.iterations + 1)
    ]
    total, offset, out = sum(n for _, n in lengths), 0, {}
    for name, n in lengths:
        out[name] = ScheduleSegment(offset, total)
        offset += n
    return out


def budget(phases: dict[str, dict], num_examples: int, cfg: RunConfig) -> dict[str, Any]:
    """Optimizer steps and passes over D of every training phase and in all, and the wall time of
    everything but ``NOT_TRAINING``. A pass is epochs × examples trained on / |D| (for DPO and SPIN the
    examples are pairs, each two sequences); an M1 given by ``sft.checkpoint`` is not counted."""
    rows = {}
    for name, entry in phases.items():
        if "steps" not in entry:
            continue
        passes = None
        if entry.get("epochs") is not None and entry.get("examples") is not None:
            passes = round(entry["epochs"] * entry["examples"] / num_examples, 4)
        rows[name] = {"steps": entry["steps"], "passes": passes}
    steps, wall = training_cost(phases)
    out = {
        "method": cfg.method,
        "optimizer_steps": steps,
        "passes_over_data": round(sum(r["passes"] or 0.0 for r in rows.values()), 4),
        "train_wall_time_s": round(wall, 2),
        "m1_given": cfg.sft.checkpoint,
        "phases": rows,
    }
    if PAIRS in phases:
        out["generated_tokens"] = phases[PAIRS].get("generated_tokens")
    return out


def summary_lines(manifest: dict[str, Any]) -> list[str]:
    """The closing summary of a run: each phase's optimizer steps, passes over D and wall time, then the
    totals (from ``manifest["budget"]`` and the phases' records)."""
    spent = manifest.get("budget", {})
    trained = spent.get("phases", {})
    lines = [f"{'phase':<14} {'steps':>7} {'passes':>7} {'time':>9}"]
    for name, entry in manifest.get("phases", {}).items():
        row = trained.get(name, {})
        steps = row.get("steps", "")
        passes = "" if row.get("passes") is None else f"{row['passes']:.2f}"
        seconds = entry.get("wall_time_s")
        time_text = "" if seconds is None else f"{seconds:.1f} s"
        lines.append(f"{name:<14} {steps!s:>7} {passes:>7} {time_text:>9}")
    if spent:
        lines.append(
            f"{'total':<14} {spent.get('optimizer_steps', '')!s:>7} "
            f"{spent.get('passes_over_data', 0.0):>7.2f} {spent.get('train_wall_time_s', 0.0):>7.1f} s"
            " (training)"
        )
    return lines


def training_cost(phases: dict[str, dict]) -> tuple[int, float]:
    """Optimizer steps of every phase, and wall time of every phase but ``NOT_TRAINING``."""
    steps = sum(p.get("steps", 0) for p in phases.values())
    wall = sum(p.get("wall_time_s", 0.0) for k, p in phases.items() if k not in NOT_TRAINING)
    return steps, wall


# ---------------------------------------------------------------- reading a run directory


def read_manifest(run_dir: str | Path) -> dict[str, Any]:
    """The manifest of a run directory, checked to be one written by wmss."""
    root = Path(run_dir)
    path = root / "manifest.json"
    if not root.is_dir():
        raise WmssError(f"run directory {root} does not exist.")
    if not path.is_file():
        raise WmssError(
            f"{root} has no manifest.json, so it is not a wmss run directory (one made by `wmss run`); "
            "give the run's output_dir."
        )
    try:
        manifest = read_json(path)
    except json.JSONDecodeError as err:
        raise WmssError(f"{path} is not valid JSON (line {err.lineno}: {err.msg}).") from None
    if not isinstance(manifest, dict) or "phases" not in manifest or "config" not in manifest:
        raise WmssError(f"{path} has no 'phases' and 'config': it was not written by `wmss run`.")
    return manifest


def load_run(run_dir: str | Path) -> tuple[Path, dict[str, Any], RunConfig]:
    """``(root, manifest, config)`` of a run directory made by ``wmss run``."""
    manifest = read_manifest(run_dir)
    root = Path(run_dir)
    return root, manifest, config_from_dict(manifest["config"], source=str(root / "manifest.json"))


def finished_phases(run_dir: str | Path) -> dict[str, dict] | None:
    """The phases of a run whose evaluation is done; None for a run not (yet) evaluated."""
    path = Path(run_dir) / "manifest.json"
    if not path.is_file():
        return None
    phases = read_json(path)["phases"]
    return phases if phases.get(EVAL, {}).get("status") == "done" else None


def _model_path(root: Path, recorded: str) -> str:
    """A model path from the manifest: relative to the run directory when it lies there."""
    inside = root / recorded
    found = (inside / "config.json").is_file() or (inside / "adapter_config.json").is_file()
    return str(inside) if found else recorded


def run_chain(root: Path, manifest: dict[str, Any]) -> list[str]:
    """Paths of M0, M1, … M_{K+1}: the models of the run's finished phases, in order."""
    phases = manifest["phases"]
    chain = []
    for name in [M0, SFT, *[wdjt_phase(t) for t in range(1, len(phases) + 1)]]:
        entry = phases.get(name)
        if not entry or entry.get("status") != "done" or not entry.get("model"):
            break
        chain.append(_model_path(root, entry["model"]))
    return chain


def run_models(root: Path, manifest: dict[str, Any]) -> dict[str, str]:
    """``weak``, ``strong_before`` and (after a WD-JT) ``strong_after`` of the run's last iteration.

    After K iterations: M_{K-1}, M_K and M_{K+1}; before any WD-JT: M0 and M1.
    """
    chain = run_chain(root, manifest)
    if len(chain) < 2:
        raise WmssError(
            f"{root} has no finished SFT phase yet, so it has no weak/strong pair to diagnose; finish the "
            "run, or give --weak and --strong-before explicitly."
        )
    if len(chain) == 2:
        return {"weak": chain[0], "strong_before": chain[1]}
    return {"weak": chain[-3], "strong_before": chain[-2], "strong_after": chain[-1]}

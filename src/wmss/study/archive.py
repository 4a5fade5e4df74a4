"""A study's records without its weights (``wmss study archive``), small enough to keep beside the code.

A study's run directories hold model weights and checkpoints (hundreds of MB per run) next to the few
files its tables come from: manifests, per-problem predictions, selections, entropies, training logs,
learning curves, tuning results. The archive keeps the latter, in the same layout, so that

    wmss study report <study.yaml> output_dir=<archive>

rebuilds every table, interval and plot of the finished runs on any machine without training again
(intervals included: the per-problem predictions are there). It is not a place to resume training from:
the weights are not in it.

No text of the datasets goes in (they stay where the study reads them): the training subset
``data/<format>/train.jsonl`` is left out (its ids are in ``data.json`` beside it), and JSONL rows lose
their ``DATA_FIELDS`` (a prediction keeps its id, generation, extracted answer and correctness, not the
prompt or the gold answer). Left out as well: the study's ``report/`` (derived from the rest), every file
in a directory that holds model weights (``final/``, ``models/M*``, the learning
curve's ``epochs/epoch-<k>``, checkpoints), ``checkpoints/`` directories, hidden files (locks, partial
predictions) and anything not a text record (see ``RECORD_SUFFIXES``). The archive is built beside its
destination and swapped in at the end: an interrupted archive leaves the previous one as it was.

An archive accumulates: a study that runs over several machines (a fresh one has no ``runs/``) archives
what each one made into the same place. A run directory (one with a ``manifest.json``) of the output
directory replaces the archive's copy of it, unless the archived one is evaluated and this one is not
(an interrupted re-run never hides a finished run); runs only in the archive are kept as they were.
"""

from __future__ import annotations

import logging
import shutil
from pathlib import Path

from wmss.errors import WmssError
from wmss.io import atomic_write_jsonl, read_jsonl
from wmss.rundir import finished_phases
from wmss.study.spec import Study

RECORD_SUFFIXES = {".json", ".jsonl", ".md", ".yaml", ".csv"}
DATA_FIELDS = (
    "prompt",
    "question",
    "gold",
    "answer",
    "solution",
    "completion",
    "messages",
    "chosen",
    "rejected",
)
WEIGHT_SUFFIXES = {".safetensors", ".bin", ".pt", ".pth", ".gguf", ".ckpt"}

log = logging.getLogger("wmss")


def _holds_weights(directory: Path, cache: dict[Path, bool]) -> bool:
    if directory not in cache:
        cache[directory] = any(p.suffix in WEIGHT_SUFFIXES for p in directory.iterdir() if p.is_file())
    return cache[directory]


def archive_files(root: Path) -> list[Path]:
    """The files of the study directory ``root`` that go into its archive, relative to ``root``."""
    cache: dict[Path, bool] = {}
    kept = []
    for path in sorted(root.rglob("*")):
        rel = path.relative_to(root)
        if not path.is_file() or path.suffix not in RECORD_SUFFIXES:
            continue
        if rel.parts[0] == "report":  # derived: `wmss study report` writes it again from the rest
            continue
        if rel.parts[0] == "data" and rel.name != "data.json":  # the training subset's text
            continue
        if any(p.startswith(".") or p == "checkpoints" or p.startswith("checkpoint-") for p in rel.parts):
            continue
        if _holds_weights(path.parent, cache):
            continue
        kept.append(rel)
    return kept


def _copy_record(source: Path, target: Path) -> None:
    if source.suffix != ".jsonl":
        shutil.copy2(source, target)
        return
    rows = read_jsonl(source)
    atomic_write_jsonl(target, [{k: v for k, v in row.items() if k not in DATA_FIELDS} for row in rows])


def _inside(rel: Path, runs: set[Path]) -> bool:
    return any(parent in runs for parent in rel.parents)


def archive_study(study: Study, into: str | Path) -> tuple[Path, int, int]:
    """Copy the records of ``study``'s output directory to ``into``, merged with an earlier archive there
    (see the module's docstring) and swapped in once complete. Returns the archive, its number of files
    and their total bytes."""
    root, into = study.output_dir, Path(into)
    if not root.is_dir():
        raise WmssError(f"{root} does not exist: run `wmss study run {study.path}` first.")
    if into.resolve() == root.resolve() or root.resolve() in into.resolve().parents:
        raise WmssError(f"the archive {into} must lie outside the study's output_dir {root}.")
    files = archive_files(root)
    runs = {rel.parent for rel in files if rel.name == "manifest.json"}
    kept_runs = {run for run in runs if finished_phases(into / run) and not finished_phases(root / run)}
    for run in sorted(kept_runs):
        log.warning("study archive: %s is unfinished in %s; the archive keeps its finished copy", run, root)
    sources = [(root, rel) for rel in files if not _inside(rel, kept_runs)]
    if into.is_dir():
        new = {rel for _, rel in sources}
        replaced = runs - kept_runs
        sources += [
            (into, rel) for rel in archive_files(into) if rel not in new and not _inside(rel, replaced)
        ]
    staging = into.with_name(into.name + ".partial")
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    size = 0
    for source, rel in sources:
        target = staging / rel
        target.parent.mkdir(parents=True, exist_ok=True)
        _copy_record(source / rel, target)
        size += target.stat().st_size
    old = into.with_name(into.name + ".old")
    shutil.rmtree(old, ignore_errors=True)
    if into.exists():
        into.rename(old)
    staging.rename(into)
    shutil.rmtree(old, ignore_errors=True)
    return into, len(sources), size

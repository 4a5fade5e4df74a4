"""The GSM8K table of scripts/offline_gpu/gsm8k.sh: SFT against WMSS per seed and over the seeds.

    python scripts/offline_gpu/compare.py runs/gsm8k-gpu

reads ``<root>/{sft,wmss}/seed-N`` (finished, evaluated runs) and prints a Markdown table: test accuracy
per seed, optimizer steps and training wall time, the machine, and Δ WMSS − SFT with a paired bootstrap
95% interval over problems (per seed, and over the seeds both arms finished, per-problem scores
averaged over those seeds, as `wmss study report` does).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np

from wmss.evaluation.metrics import paired_bootstrap
from wmss.reporting import markdown_table
from wmss.rundir import EVAL, finished_phases, training_cost
from wmss.study.report import _scores

ARMS = ("sft", "wmss")


def _runs(root: Path, arm: str) -> dict[int, dict]:
    found = {}
    for run in sorted((root / arm).glob("seed-*")):
        phases = finished_phases(run)
        if phases is None or EVAL not in phases:
            print(f"compare: {run} is not finished and evaluated; left out", file=sys.stderr)
            continue
        steps, wall = training_cost(phases)
        machine = run / "machine.json"
        found[int(run.name.split("-", 1)[1])] = {
            "accuracy": phases[EVAL]["accuracy"],
            "scores": _scores(run, phases),  # per problem, in the order `wmss study report` pairs them
            "steps": steps,
            "wall": wall,
            "machine": json.loads(machine.read_text())["machine"] if machine.is_file() else "unrecorded",
        }
    return found


def _delta(mine: list[np.ndarray], theirs: list[np.ndarray]) -> str:
    delta, low, high = paired_bootstrap(np.mean(mine, axis=0), np.mean(theirs, axis=0), seed=0)
    return f"{100 * delta:+.1f} [{100 * low:+.1f}, {100 * high:+.1f}]"


def main(root: Path) -> str:
    runs = {arm: _runs(root, arm) for arm in ARMS}
    shared = sorted(set(runs["sft"]) & set(runs["wmss"]))
    if not shared:
        raise SystemExit(f"compare: no seed has both arms finished under {root}")
    rows = []
    for seed in shared:
        sft, wmss = runs["sft"][seed], runs["wmss"][seed]
        if len(sft["scores"]) != len(wmss["scores"]):
            raise SystemExit(f"compare: seed {seed}: the two arms were evaluated on different problem sets")
        for arm, run in (("SFT (2 epochs)", sft), ("WMSS (1 + 1)", wmss)):
            delta = _delta([wmss["scores"]], [sft["scores"]]) if run is wmss else ""
            rows.append([arm, str(seed), f"{100 * run['accuracy']:.1f}", delta, str(run["steps"]),
                         f"{run['wall']:.0f} s", run["machine"]])  # fmt: skip
    pooled = _delta([runs["wmss"][s]["scores"] for s in shared], [runs["sft"][s]["scores"] for s in shared])
    for arm, key in (("SFT (2 epochs)", "sft"), ("WMSS (1 + 1)", "wmss")):
        accuracies = [100 * runs[key][s]["accuracy"] for s in shared]
        spread = f" ± {np.std(accuracies, ddof=1):.1f}" if len(shared) > 1 else ""
        rows.append([f"**{arm}, mean**", ",".join(map(str, shared)), f"{np.mean(accuracies):.1f}{spread}",
                     pooled if key == "wmss" else "", "", "", ""])  # fmt: skip
    header = ["arm", "seed", "test accuracy %", "Δ WMSS − SFT [95% CI]", "optimizer steps", "train wall time",
              "machine"]  # fmt: skip
    problems = len(runs["sft"][shared[0]]["scores"])
    return (
        f"GSM8K test ({problems} problems), SmolLM2-135M-Instruct, `scripts/offline_gpu/gsm8k.sh` "
        f"(configs/gsm8k-smollm2.yaml, GPU settings); runs under {root}.\n\n" + markdown_table(header, rows)
    )


if __name__ == "__main__":
    if len(sys.argv) != 2:
        raise SystemExit(__doc__)
    print(main(Path(sys.argv[1])))

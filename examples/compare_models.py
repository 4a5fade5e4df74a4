"""Evaluate two models on a task and compare them (difference with a paired-bootstrap 95% interval).

    python examples/compare_models.py --model sft=runs/sft/final --model wmss=runs/wmss/final \
        --task mawps=../shared/data/mawps/testset.json --baseline sft
"""

import argparse
from pathlib import Path

import wmss


def main(
    models: dict[str, str], tasks: list[str], output_dir: Path, baseline: str | None, limit: int | None
) -> dict:
    config = {"eval": {"limit": limit}} if limit else None
    table = wmss.evaluate(models, tasks, output_dir, config=config, baseline=baseline)
    for name, row in table["rows"].items():
        delta = row.get("average_delta")
        versus = (
            f", {100 * delta['value']:+.1f} points vs {baseline} (95% CI {100 * delta['ci95'][0]:+.1f} to "
            f"{100 * delta['ci95'][1]:+.1f})"
            if delta
            else ""
        )
        print(f"{name}: {row['average']:.1%}{versus}")
    print(f"summary in {output_dir / 'summary.md'}")
    return table


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", action="append", required=True, metavar="NAME=PATH")
    parser.add_argument("--task", action="append", required=True, metavar="TASK[=PATH]")
    parser.add_argument("--baseline", help="the model the others are compared with")
    parser.add_argument("--limit", type=int, help="only the first N problems of each task")
    parser.add_argument("--output-dir", type=Path, default=Path("runs/example-compare"))
    args = parser.parse_args()
    main(dict(m.split("=", 1) for m in args.model), args.task, args.output_dir, args.baseline, args.limit)

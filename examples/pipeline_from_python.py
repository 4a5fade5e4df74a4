"""The whole pipeline from Python: WMSS and the SFT baseline at the same budget on the demo's problems.

python examples/pipeline_from_python.py                    # SmolLM2-135M-Instruct, ~10 min on 2 CPU cores
python examples/pipeline_from_python.py --model DIR --train 32 --test 16
"""

import argparse
import json
from pathlib import Path

import wmss
from wmss.demo_data import demo_splits


def main(model: str, output_dir: Path, n_train: int, n_test: int) -> dict[str, float]:
    train, test = demo_splits(n_train, n_test, seed=0)  # generated arithmetic word problems
    output_dir.mkdir(parents=True, exist_ok=True)
    for name, rows in (("train", train), ("test", test)):
        (output_dir / f"{name}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    config = {
        "model": model,
        "data": {
            "path": str(output_dir / "train.jsonl"),
            "prompt_template": "{question}",
            "completion_template": "{solution}",
            "system_prompt": "Solve the problem step by step.",
        },
        "train": {"learning_rate": 1e-4, "per_device_batch_size": 8, "max_length": 160},
        "eval": {"path": str(output_dir / "test.jsonl"), "answer_field": "answer", "max_new_tokens": 96},
    }
    accuracy = {}
    for method in ("sft", "wmss"):  # sft: two SFT epochs; wmss: one SFT epoch, then WD-DS and one WD-JT epoch
        manifest = wmss.run(config, [f"method={method}", f"output_dir={output_dir / method}"])
        accuracy[method] = manifest["phases"]["eval"]["accuracy"]
        print(
            f"{method}: {accuracy[method]:.1%} on {len(test)} held-out problems, "
            f"{manifest['budget']['optimizer_steps']} optimizer steps; model in {output_dir / method}/final"
        )
    return accuracy


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="smollm2-135m-instruct")
    parser.add_argument("--output-dir", type=Path, default=Path("runs/example-pipeline"))
    parser.add_argument("--train", type=int, default=160)
    parser.add_argument("--test", type=int, default=100)
    args = parser.parse_args()
    main(args.model, args.output_dir, args.train, args.test)

"""WD-JT written the way a TRL user writes `SFTTrainer`: model ids or paths, a raw chat dataset, LoRA.

    python examples/trl_style_lora.py --weak BASE --strong SFT_CHECKPOINT --output-dir runs/trl-style

`--weak` is the earlier model (e.g. the base before SFT), `--strong` the later one (a checkpoint
directory, or an adapter directory of that base); both share the tokenizer. With `peft_config` the
two become two LoRA adapters on one frozen copy of the base weights, and `save_model` writes the
strong adapter.
"""

import argparse
from pathlib import Path

from datasets import Dataset
from peft import LoraConfig

import wmss


def chat_dataset() -> Dataset:
    """TRL's conversational form: a `messages` column (the last assistant turn is learnt)."""
    rows = []
    for a in range(2, 8):
        for b in range(3, 7):
            rows.append(
                {
                    "messages": [
                        {"role": "user", "content": f"What is {a} + {b}?"},
                        {"role": "assistant", "content": f"{a} + {b} = {a + b}. The answer is {a + b}."},
                    ]
                }
            )
    return Dataset.from_list(rows)


def main(weak: str, strong: str, output_dir: Path, max_steps: int) -> Path:
    trainer = wmss.WDJTTrainer(
        model=strong,
        weak_model=weak,
        args=wmss.WDJTConfig(
            output_dir=str(output_dir / "checkpoints"),
            mix_lambda=0.5,
            learning_rate=1e-4,
            per_device_train_batch_size=4,
            num_train_epochs=1,
            max_steps=max_steps,
            max_length=256,
            report_to="none",
            save_strategy="no",
        ),
        train_dataset=chat_dataset(),  # tokenised here, with the tokenizer's chat template
        peft_config=LoraConfig(r=16, lora_alpha=32, target_modules="all-linear", task_type="CAUSAL_LM"),
    )
    trainer.train()
    trainer.save_model(str(output_dir / "strong"))  # the strong adapter (and the tokenizer)
    print(f"strong adapter at {output_dir / 'strong'}")
    return output_dir / "strong"


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--weak", required=True, help="weak model: hub id or path (e.g. the base)")
    parser.add_argument("--strong", required=True, help="strong model: hub id or path (e.g. after SFT)")
    parser.add_argument("--output-dir", type=Path, default=Path("runs/trl-style"))
    parser.add_argument(
        "--max-steps", type=int, default=-1, help="stop after this many steps (-1: one epoch)"
    )
    args = parser.parse_args()
    main(args.weak, args.strong, args.output_dir, args.max_steps)

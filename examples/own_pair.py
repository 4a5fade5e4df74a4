"""WD-DS and WD-JT on your own pair of checkpoints and your own `datasets.Dataset`, step by step.

    python examples/own_pair.py --weak BASE_DIR --strong SFT_DIR --output-dir runs/example-pair

The weak model is an earlier checkpoint of the strong one (e.g. the base before SFT); both must share
the tokenizer. Only the strong model is kept.
"""

import argparse
from pathlib import Path

from datasets import Dataset
from transformers import AutoModelForCausalLM, AutoTokenizer

import wmss


def my_dataset() -> Dataset:
    """Any rows with prompt/completion columns (or chat `messages`) will do."""
    rows = [
        {"prompt": f"What is {a} + {b}?", "completion": f"{a} + {b} = {a + b}. The answer is {a + b}."}
        for a in range(2, 8)
        for b in range(3, 7)
    ]
    return Dataset.from_list(rows)


def main(weak_dir: str, strong_dir: str, output_dir: Path) -> Path:
    tokenizer = AutoTokenizer.from_pretrained(strong_dir)
    weak = AutoModelForCausalLM.from_pretrained(weak_dir)
    strong = AutoModelForCausalLM.from_pretrained(strong_dir)
    data = wmss.tokenize_dataset(my_dataset(), tokenizer, max_length=128)

    # WD-DS: Eq. 7 entropy of every example under each model, Eq. 9 weights, |D| draws, de-duplicated
    h_weak = wmss.dataset_entropies(weak, data, tokenizer.pad_token_id)
    h_strong = wmss.dataset_entropies(strong, data, tokenizer.pad_token_id)
    selection = wmss.select(
        h_weak, h_strong, alpha=0.1, beta=0.8, gamma=0.1, form="paper", dedup=True, seed=0
    )
    active = data.select(selection.active_rows)
    print(f"WD-DS kept {len(active)} of {len(data)} examples")

    # WD-JT: both models trained on the cross-entropy of λ·z_strong + (1−λ)·z_weak
    args = wmss.WDJTConfig(
        output_dir=str(output_dir / "checkpoints"),
        mix_lambda=0.5,
        learning_rate=1e-4,
        per_device_train_batch_size=4,
        num_train_epochs=1,
        report_to="none",
        save_strategy="no",
    )
    trainer = wmss.WDJTTrainer(
        model=strong, weak_model=weak, args=args, train_dataset=active, processing_class=tokenizer
    )
    trainer.train()
    trainer.save_model(str(output_dir / "strong"))  # the strong model alone, a standard checkpoint
    print(f"strong model at {output_dir / 'strong'}")
    return output_dir / "strong"


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--weak", required=True, help="weak checkpoint (e.g. the base model)")
    parser.add_argument("--strong", required=True, help="strong checkpoint (e.g. after one SFT epoch)")
    parser.add_argument("--output-dir", type=Path, default=Path("runs/example-pair"))
    args = parser.parse_args()
    main(args.weak, args.strong, args.output_dir)

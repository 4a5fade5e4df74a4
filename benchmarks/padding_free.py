"""Steps per second with padded, padding-free and length-grouped batches, side by side in one run:
SFT, WD-JT (both branches trained) and the entropy pass (Eq. 7), on real training data.

The data (GSM8K or MAWPS from ``--data-dir``) is tokenised as ``wmss run`` does (chat template,
prompt/completion, ``--max-length``). From it, ``--batches`` random batches of ``--batch`` examples
are drawn (seeded); each is run three ways:
  padded        the batch right-padded to its longest row (``CompletionCollator``, today's default),
  padding-free  the same examples flattened into one row with ``position_ids`` (``train.padding_free``),
  grouped       batches of the same size made by transformers' ``LengthGroupedSampler``
                (``train.group_by_length``), drawn at random from one epoch of them: other examples
                per batch, less padding, still padded.
A step is what Trainer does per batch (forward, fused loss head, backward, clipping to 1.0, AdamW,
zero_grad); an entropy step is one batch of the no-grad entropy pass. The variants' steps are
interleaved (round-robin, the order rotating each round) on one model per phase, so that a busy
machine slows them alike. Reported per variant: the median step time as steps/s, and the median
of real (non-pad) tokens per second over its steps. The ratios compare real tokens per second,
which is what sets the time of an epoch (an epoch holds the same real tokens however it is
batched); for padded and padding-free batches, which hold the same examples, it equals the ratio
of step times, while the grouped batches hold other examples (shorter or longer ones). The
padding share (pad tokens ÷ tokens computed) of the padded and grouped batches bounds what
flattening can give: 1 / (1 − share) when attention cost is negligible.

Usage: python benchmarks/padding_free.py [--data gsm8k|mawps] [--batch 16] [--batches 8] [--rounds 5]
       [--model smollm2-135m-instruct] [--dtype float32|bfloat16] [--attn sdpa|eager|flash_attention_2]
       [--phases sft,wdjt,entropy] [--quick]
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import torch
from _common import device, print_header, synchronize
from transformers.trainer_pt_utils import LengthGroupedSampler

from wmss.config import DataConfig
from wmss.data import CompletionCollator, padding_free_collator, tokenize_examples
from wmss.entropy import chunked_sequence_entropy
from wmss.heads import final_hidden_states, output_head
from wmss.losses import fused_completion_cross_entropy
from wmss.models import load_model, load_tokenizer, resolve_model
from wmss.packing import packing_unsupported
from wmss.trainers import WeakStrongPair

VARIANTS = ("padded", "padding-free", "grouped")


def read_rows(data: str, data_dir: Path) -> tuple[list[dict], DataConfig]:
    if data == "gsm8k":
        rows = [json.loads(line) for line in (data_dir / "gsm8k" / "train.jsonl").read_text().splitlines()]
        return rows, DataConfig(prompt_template="{question}", completion_template="{answer}", overlong="drop")
    rows = json.loads((data_dir / "mawps" / "trainset.json").read_text())
    template = "{equation} = {ans}"
    return rows, DataConfig(prompt_template="{original_text}", completion_template=template, overlong="drop")


def make_batches(dataset, batch: int, batches: int, seed: int, pad_id: int) -> dict[str, list[dict]]:
    """The same number of batches per variant: random ones, flattened or padded; length-grouped ones,
    drawn at random from one epoch of ``LengthGroupedSampler``'s batches (its first batches are the
    longest of their mega-batch, so taking those would time longer batches than the random ones)."""
    g = torch.Generator().manual_seed(seed)
    order = torch.randperm(len(dataset), generator=g).tolist()
    random = [[dataset[i] for i in order[k * batch : (k + 1) * batch]] for k in range(batches)]
    torch.manual_seed(seed)
    grouped_order = list(iter(LengthGroupedSampler(batch, lengths=[len(x) for x in dataset["input_ids"]])))
    full = len(grouped_order) // batch  # whole batches of the epoch
    picked = torch.randperm(full, generator=g)[:batches].tolist()
    grouped = [[dataset[i] for i in grouped_order[k * batch : (k + 1) * batch]] for k in picked]
    pad, flat = CompletionCollator(pad_id), padding_free_collator()
    return {
        "padded": [pad(b) for b in random],
        "padding-free": [flat(b) for b in random],
        "grouped": [pad(b) for b in grouped],
    }


def real_tokens(batch: dict) -> int:
    return int(batch["attention_mask"].sum()) if "attention_mask" in batch else batch["input_ids"].numel()


def padding_share(batches: list[dict]) -> float:
    tokens = sum(b["input_ids"].numel() for b in batches)
    return 1 - sum(real_tokens(b) for b in batches) / tokens


def _inputs(batch: dict) -> dict:
    return {k: v.to(device()) for k, v in batch.items()}


def step_functions(phase: str, base: torch.nn.Module):
    """``(run one step on a batch)`` for a phase, on one model (or pair) shared by all variants."""
    if phase == "entropy":
        model = base.eval()

        @torch.inference_mode()
        def entropy_step(batch: dict) -> None:
            b = _inputs(batch)
            hidden = final_hidden_states(
                model, b["input_ids"], b.get("attention_mask"), b.get("position_ids")
            )
            chunked_sequence_entropy(
                hidden, output_head(model), b["labels"], position_ids=b.get("position_ids")
            )

        return entropy_step
    if phase == "sft":
        module = base.train()

        def loss(b: dict) -> torch.Tensor:
            hidden = final_hidden_states(
                module, b["input_ids"], b.get("attention_mask"), b.get("position_ids")
            )
            return fused_completion_cross_entropy(hidden, output_head(module), b["labels"])

    else:
        import copy

        module = WeakStrongPair(copy.deepcopy(base), base, 0.5).train()

        def loss(b: dict) -> torch.Tensor:
            return module(**b)["loss"]

    params = [p for p in module.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=1e-6)

    def train_step(batch: dict) -> None:
        loss(_inputs(batch)).backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    return train_step


def time_interleaved(
    step, batches: dict[str, list[dict]], rounds: int, warmup: int
) -> tuple[dict[str, float], dict[str, float]]:
    """Median seconds per step and median real tokens per second of each variant; each round runs
    every batch of every variant, the variants' order rotating from round to round."""
    times: dict[str, list[float]] = {v: [] for v in VARIANTS}
    rates: dict[str, list[float]] = {v: [] for v in VARIANTS}
    for r in range(warmup + rounds):
        for k in range(len(batches["padded"])):
            for v in VARIANTS[r % 3 :] + VARIANTS[: r % 3]:
                synchronize()
                start = time.perf_counter()
                step(batches[v][k])
                synchronize()
                if r >= warmup:
                    elapsed = time.perf_counter() - start
                    times[v].append(elapsed)
                    rates[v].append(real_tokens(batches[v][k]) / elapsed)
    return (
        {v: statistics.median(t) for v, t in times.items()},
        {v: statistics.median(t) for v, t in rates.items()},
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", choices=("gsm8k", "mawps"), default="gsm8k")
    parser.add_argument(
        "--data-dir", type=Path, default=Path(__file__).resolve().parents[2] / "shared" / "data"
    )
    parser.add_argument("--model", default="smollm2-135m-instruct")
    parser.add_argument("--dtype", default="float32", choices=("float32", "bfloat16"))
    parser.add_argument("--attn", default="sdpa", choices=("sdpa", "eager", "flash_attention_2"))
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--batches", type=int, default=8, help="batches per variant")
    parser.add_argument("--rounds", type=int, default=3, help="timed passes over the batches")
    parser.add_argument("--warmup", type=int, default=1, help="untimed passes first")
    parser.add_argument("--max-length", type=int, default=1024)
    parser.add_argument("--phases", default="sft,wdjt,entropy")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--limit", type=int, default=None, help="use the first N rows of the data")
    parser.add_argument("--quick", action="store_true", help="2 batches, 1 round, no warm-up: a smoke test")
    args = parser.parse_args()
    if args.quick:
        args.batches, args.rounds, args.warmup = 2, 1, 0
        args.limit = args.limit or 200

    print_header(f"padded vs padding-free vs length-grouped batches ({args.model}, {args.data})")
    source = resolve_model(args.model)
    tokenizer = load_tokenizer(source)
    rows, data_cfg = read_rows(args.data, args.data_dir)
    rows = rows[: args.limit]
    dataset, _ = tokenize_examples(rows, tokenizer, data_cfg, args.max_length, source=args.data)
    base = load_model(source, args.dtype, args.attn).to(device())
    reason = packing_unsupported(base)
    if reason:
        raise SystemExit(f"{args.model} cannot run padding-free batches: {reason}")
    batches = make_batches(dataset, args.batch, args.batches, args.seed, tokenizer.pad_token_id)
    shares = {v: padding_share(batches[v]) for v in VARIANTS}
    print(
        f"batch {args.batch}, {args.batches} batches per variant, {args.warmup} warm-up + "
        f"{args.rounds} timed rounds, {args.dtype}, attention {base.config._attn_implementation}, "
        f"{len(dataset)} examples"
    )
    print(
        f"padding share: padded {shares['padded']:.1%}, grouped {shares['grouped']:.1%}, padding-free 0% "
        f"(bound on the speed-up from flattening: {1 / (1 - shares['padded']):.2f}x)"
    )
    columns = " | ".join(f"{v} steps/s (real tok/s)" for v in VARIANTS)
    print(f"| phase | {columns} | padding-free ÷ padded | grouped ÷ padded |")
    print("|---|---|---|---|---|---|")
    for phase in args.phases.split(","):
        seconds, tokens = time_interleaved(step_functions(phase, base), batches, args.rounds, args.warmup)
        cells = " | ".join(f"{1 / seconds[v]:.3f} ({tokens[v]:.0f})" for v in VARIANTS)
        print(
            f"| {phase} | {cells} | {tokens['padding-free'] / tokens['padded']:.2f}x | "
            f"{tokens['grouped'] / tokens['padded']:.2f}x |"
        )


if __name__ == "__main__":
    main()

"""WD-JT step time ÷ SFT step time on SmolLM2-135M, and fused vs naive SFT, on one fixed batch.

A step is what Trainer does per batch: forward, loss, backward, gradient clipping (1.0), AdamW
step, zero_grad. Variants, all on the same batch and sequence length:
  SFT (fused loss head, the default), SFT (naive: full logits),
  WD-JT with both branches trained (fused, the default), WD-JT with the weak branch frozen.
Each variant gets fresh copies of the model and its own optimizer, a few warm-up steps, then the
median of ``--steps`` timed steps. Targets: WD-JT both trained <= 2.1x SFT, weak frozen <= 1.45x.

Usage: python benchmarks/step_time.py [--steps 10] [--warmup 2] [--batch 4] [--seq-len 128] [--quick]
"""

from __future__ import annotations

import argparse
import copy

import torch
from _common import fixed_batch, load_smollm2, median_seconds, print_header

from wmss.heads import final_hidden_states, output_head
from wmss.losses import completion_cross_entropy, fused_completion_cross_entropy
from wmss.trainers import WeakStrongPair


def _trainer_step(loss_fn, params: list[torch.nn.Parameter], lr: float = 1e-5):
    """One Trainer-like step: backward, clip to 1.0, AdamW, zero_grad."""
    optimizer = torch.optim.AdamW(params, lr=lr)

    def step() -> None:
        loss = loss_fn()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    return step


def time_sft(base: torch.nn.Module, batch: dict, fused: bool, warmup: int, steps: int) -> float:
    model = copy.deepcopy(base).train()
    ids, mask, labels = batch["input_ids"], batch["attention_mask"], batch["labels"]

    def loss() -> torch.Tensor:
        if fused:
            hidden = final_hidden_states(model, ids, mask)
            return fused_completion_cross_entropy(hidden, output_head(model), labels)
        return completion_cross_entropy(model(input_ids=ids, attention_mask=mask).logits, labels)

    return median_seconds(_trainer_step(loss, list(model.parameters())), warmup, steps)


def time_wdjt(base: torch.nn.Module, batch: dict, freeze_weak: bool, warmup: int, steps: int) -> float:
    pair = WeakStrongPair(copy.deepcopy(base), copy.deepcopy(base), 0.5, freeze_weak).train()
    assert pair.fused_loss
    params = [p for p in pair.parameters() if p.requires_grad]
    return median_seconds(_trainer_step(lambda: pair(**batch)["loss"], params), warmup, steps)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=10, help="timed steps per variant (median reported)")
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--seq-len", type=int, default=128)
    parser.add_argument("--completion-fraction", type=float, default=0.5, help="labelled share of each row")
    parser.add_argument("--quick", action="store_true", help="1 warm-up and 2 timed steps: a smoke test")
    args = parser.parse_args()
    if args.quick:
        args.warmup, args.steps = 1, 2

    print_header("WD-JT vs SFT step time (SmolLM2-135M)")
    base = load_smollm2()
    batch = fixed_batch(base.config.vocab_size, args.batch, args.seq_len, args.completion_fraction)
    labelled = int((batch["labels"][:, 1:] != -100).sum())
    print(
        f"batch {args.batch} x {args.seq_len} tokens ({labelled} completion tokens), float32, AdamW, "
        f"{args.warmup} warm-up + median of {args.steps} steps"
    )
    sft = time_sft(base, batch, True, args.warmup, args.steps)
    print(f"SFT, fused loss head:           {sft:7.3f} s/step")
    sft_naive = time_sft(base, batch, False, args.warmup, args.steps)
    print(f"SFT, naive loss head:           {sft_naive:7.3f} s/step")
    frozen = time_wdjt(base, batch, True, args.warmup, args.steps)
    print(f"WD-JT, weak frozen (fused):     {frozen:7.3f} s/step")
    both = time_wdjt(base, batch, False, args.warmup, args.steps)
    print(f"WD-JT, both trained (fused):    {both:7.3f} s/step")
    print(f"ratio SFT fused/naive: {sft / sft_naive:.3f}")
    print(f"ratio WD-JT weak frozen / SFT: {frozen / sft:.3f} (target <= 1.45)")
    print(f"ratio WD-JT both trained / SFT: {both / sft:.3f} (target <= 2.1)")


if __name__ == "__main__":
    main()

"""Eq. 7 entropy pass time ÷ a plain no-grad forward of the decoder alone, on SmolLM2-135M.

Per batch, in inference mode and eval mode, on the same fixed batch:
  decoder: ``model.base_model(input_ids, attention_mask)``, no output head at all (the floor);
  entropy, chunked (the default): what ``dataset_entropies`` does per batch, the decoder plus the
    output head on the completion-predicting positions only, a chunk at a time;
  entropy, naive: full logits for every position, then ``sequence_entropy`` (for reference);
  head floor: the decoder plus only the output head's matrix product on the completion-predicting
    positions, nothing else: what any exact entropy pass must at least compute.
Median of ``--steps`` after ``--warmup`` calls. Target: chunked entropy <= 1.1x the decoder.

The head costs vocabulary x hidden multiply-adds per projected position (SmolLM2: 49,152 x 576, about
a fifth of the whole model's per-token work), so the ratio grows with the completion fraction.

Usage: python benchmarks/entropy_time.py [--steps 10] [--batch 8] [--seq-len 128] [--quick]
"""

from __future__ import annotations

import argparse

import torch
from _common import fixed_batch, load_smollm2, median_seconds, print_header

from wmss.entropy import chunked_sequence_entropy, sequence_entropy
from wmss.heads import final_hidden_states, output_head


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=10, help="timed calls per variant (median reported)")
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--batch", type=int, default=8, help="the default wmss.entropy_batch_size")
    parser.add_argument("--seq-len", type=int, default=128)
    parser.add_argument("--completion-fraction", type=float, default=0.5, help="labelled share of each row")
    parser.add_argument("--quick", action="store_true", help="1 warm-up and 2 timed calls: a smoke test")
    args = parser.parse_args()
    if args.quick:
        args.warmup, args.steps = 1, 2

    print_header("Eq. 7 entropy pass vs decoder-only forward (SmolLM2-135M)")
    model = load_smollm2().eval()
    batch = fixed_batch(model.config.vocab_size, args.batch, args.seq_len, args.completion_fraction)
    ids, mask, labels = batch["input_ids"], batch["attention_mask"], batch["labels"]
    labelled = int((labels[:, 1:] != -100).sum())
    print(f"batch {args.batch} x {args.seq_len} tokens ({labelled} completion tokens), float32")

    @torch.inference_mode()
    def decoder() -> None:
        model.base_model(input_ids=ids, attention_mask=mask, use_cache=False)

    @torch.inference_mode()
    def chunked() -> torch.Tensor:
        return chunked_sequence_entropy(final_hidden_states(model, ids, mask), output_head(model), labels)

    head = output_head(model)
    keep = labels[:, 1:] != -100

    @torch.inference_mode()
    def head_floor() -> torch.Tensor:
        hidden = final_hidden_states(model, ids, mask)[:, :-1][keep]
        return torch.cat([head(rows) for rows in hidden.split(1024)])

    @torch.inference_mode()
    def naive() -> torch.Tensor:
        return sequence_entropy(model(input_ids=ids, attention_mask=mask).logits, labels)

    torch.testing.assert_close(chunked(), naive(), rtol=1e-4, atol=1e-5)
    times = {}
    variants = (
        ("decoder only", decoder),
        ("head floor", head_floor),
        ("entropy, naive", naive),
        ("entropy, chunked", chunked),
    )
    for name, fn in variants:
        times[name] = median_seconds(fn, args.warmup, args.steps)
        print(f"{name:<17} {times[name]:7.3f} s/batch")
    print(f"ratio entropy naive / decoder: {times['entropy, naive'] / times['decoder only']:.3f}")
    print(f"ratio head floor / decoder: {times['head floor'] / times['decoder only']:.3f}")
    print(f"ratio entropy chunked / head floor: {times['entropy, chunked'] / times['head floor']:.3f}")
    ratio = times["entropy, chunked"] / times["decoder only"]
    print(f"ratio entropy chunked / decoder: {ratio:.3f} (target <= 1.1)")


if __name__ == "__main__":
    main()

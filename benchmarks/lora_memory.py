"""WD-JT with full-parameter training vs LoRA: measured on SmolLM2-135M, computed for a Qwen3-8B pair.

Measured (side by side in one run; each variant in a fresh subprocess so that its peak memory is its own):
a WD-JT step — forward of both models, the fused mixed-logit loss, backward, clipping, AdamW, zero_grad —
on one fixed batch, for
  full: the weak and the strong model, every parameter trained (two fp32 models, their gradients and
        AdamW moments);
  lora: two LoRA adapters (r = --rank, all linear layers) on one frozen fp32 copy of the base
        (``wmss.lora.trainable_pair``), only the adapters trained.
Peak memory is the process's peak resident set (``ru_maxrss``), which includes the loaded weights; step
time is the median of ``--steps`` steps after ``--warmup``.

Computed (no download, no allocation): model states of a Qwen3-8B-Base pair on one GPU with bf16 mixed
precision and AdamW, from the architecture built on the meta device —
  full: two models, each parameter with fp32 weight, fp32 gradient and two fp32 moments (16 B);
  LoRA: one bf16 copy of the base (2 B per parameter, frozen, shared by both adapters) plus two adapters
        at 16 B per adapter parameter;
plus the activations kept by activation checkpointing (``train.activation_checkpointing``) for one
sequence of --tokens tokens: each decoder layer's bf16 input for both models, and one layer's working
set recomputed in the backward (an estimate: ~12 hidden-sized and 3 intermediate-sized bf16 tensors).
The fused loss head holds one chunk of logits at a time and is left out; so are the CUDA context and
allocator fragmentation (budget a few GiB).

    python benchmarks/lora_memory.py [--rank 16] [--steps 5] [--warmup 1] [--batch 4] [--seq-len 128]
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time
from pathlib import Path

import torch
from _common import fixed_batch, median_seconds, print_header

GIB, MIB = 2**30, 2**20
QWEN3_8B = dict(
    hidden_size=4096, intermediate_size=12288, num_hidden_layers=36, tie_word_embeddings=False,
    num_attention_heads=32, num_key_value_heads=8, head_dim=128, vocab_size=151936,
)  # fmt: skip


def measure(variant: str, rank: int, batch: int, seq_len: int, warmup: int, steps: int) -> dict:
    """One variant, in this process: peak RSS and median step time."""
    from wmss.config import PEFTConfig
    from wmss.lora import trainable_pair
    from wmss.models import resolve_model
    from wmss.trainers import WeakStrongPair

    base = resolve_model("smollm2-135m-instruct")
    if variant == "lora":
        weak, strong = trainable_pair(base, base, PEFTConfig(enabled=True, r=rank, alpha=2.0 * rank), seed=0)
    else:
        from wmss.models import load_model

        weak, strong = load_model(base), load_model(base)
    pair = WeakStrongPair(weak, strong, 0.5)
    params = [p for p in pair.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=1e-5)
    data = fixed_batch(strong.config.vocab_size, batch, seq_len)

    def step() -> None:
        pair(**data)["loss"].backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    seconds = median_seconds(step, warmup, steps)
    return {
        "variant": variant,
        "trained_parameters": sum(p.numel() for p in params),
        "held_parameters": sum({p.data_ptr(): p.numel() for p in pair.parameters()}.values()),
        "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "seconds_per_step": seconds,
    }


def lora_parameters(model: torch.nn.Module, rank: int) -> int:
    """Parameters of a rank-``rank`` adapter on every linear layer but the output head (``all-linear``)."""
    head = model.get_output_embeddings()
    return sum(
        rank * (m.in_features + m.out_features)
        for m in model.modules()
        if isinstance(m, torch.nn.Linear) and m is not head
    )


def computed(rank: int, tokens: int) -> list[tuple[str, float]]:
    from transformers import AutoModelForCausalLM, Qwen3Config

    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(Qwen3Config(**QWEN3_8B))
    params = sum(p.numel() for p in model.parameters())
    adapter = lora_parameters(model, rank)
    h, i, layers = QWEN3_8B["hidden_size"], QWEN3_8B["intermediate_size"], QWEN3_8B["num_hidden_layers"]
    checkpoints = 2 * layers * tokens * h * 2  # both models, every layer's bf16 input
    working = tokens * (12 * h + 3 * i) * 2  # one layer recomputed in the backward
    activations = checkpoints + working
    full = 2 * params * 16
    lora = params * 2 + 2 * adapter * 16
    return [
        ("parameters per model", params),
        (f"LoRA adapter parameters (r = {rank}, all-linear)", adapter),
        ("full-parameter pair, model states (GiB)", full / GIB),
        ("LoRA pair, model states (GiB)", lora / GIB),
        (f"activations with checkpointing, 1 × {tokens} tokens (GiB)", activations / GIB),
        ("full-parameter pair in all (GiB)", (full + activations) / GIB),
        ("LoRA pair in all (GiB)", (lora + activations) / GIB),
    ]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rank", type=int, default=16)
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--seq-len", type=int, default=128)
    parser.add_argument("--tokens", type=int, default=4096, help="sequence length of the 8B estimate")
    parser.add_argument("--variant", choices=("full", "lora"), help=argparse.SUPPRESS)  # the subprocess
    args = parser.parse_args()
    if args.variant:
        print(json.dumps(measure(args.variant, args.rank, args.batch, args.seq_len, args.warmup, args.steps)))
        return
    print_header("WD-JT: full-parameter vs LoRA pair")
    print(f"\nSmolLM2-135M-Instruct, fp32, batch {args.batch} × {args.seq_len} tokens, LoRA r = {args.rank}, "
          f"median of {args.steps} steps after {args.warmup}\n")  # fmt: skip
    rows = {}
    for variant in ("full", "lora"):
        start = time.perf_counter()
        out = subprocess.run(
            [sys.executable, str(Path(__file__)), "--variant", variant, *sys.argv[1:]],
            capture_output=True, text=True, check=True,
        )  # fmt: skip
        rows[variant] = json.loads(out.stdout.strip().splitlines()[-1])
        rows[variant]["wall_s"] = time.perf_counter() - start
    print("| variant | trained parameters | parameters held | peak RSS | s/step |")
    print("|---|---|---|---|---|")
    for r in rows.values():
        print(f"| {r['variant']} | {r['trained_parameters']:,} | {r['held_parameters']:,} | "
              f"{r['peak_rss_mib']:,.0f} MiB | {r['seconds_per_step']:.3f} |")  # fmt: skip
    full, lora = rows["full"], rows["lora"]
    print(f"| **LoRA ÷ full** | {lora['trained_parameters'] / full['trained_parameters']:.4f} | "
          f"{lora['held_parameters'] / full['held_parameters']:.3f} | "
          f"**{lora['peak_rss_mib'] / full['peak_rss_mib']:.3f}** | "
          f"**{lora['seconds_per_step'] / full['seconds_per_step']:.3f}** |")  # fmt: skip
    print("\nQwen3-8B-Base pair on one GPU, bf16 mixed precision, AdamW (computed)\n")
    print("| quantity | value |")
    print("|---|---|")
    for name, value in computed(args.rank, args.tokens):
        print(f"| {name} | {value:,.1f} |" if isinstance(value, float) else f"| {name} | {value:,} |")
    print("\nOne 80 GB GPU holds about 74.5 GiB (nvidia-smi's 81,559 MiB less the CUDA context).")


if __name__ == "__main__":
    main()

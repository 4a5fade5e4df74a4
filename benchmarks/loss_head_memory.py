"""Peak memory of the WD-JT loss head (forward + backward), fused vs naive, on the same batch.

The loss head is everything after the two models' final hidden states: projecting both through
their output heads, mixing (Eq. 5), cross-entropy on completion tokens (Eq. 6), and the backward
to both hidden states and both head weights. Default shape: 8,192 completion tokens, vocabulary
49,152, hidden 576 (SmolLM2), float32, both branches trained.

How peak memory is measured:
- CUDA: ``torch.cuda.max_memory_allocated()`` after ``reset_peak_memory_stats()``, minus the memory
  allocated just before the loss head (inputs and weights), in the same process.
- CPU: torch's CPU allocator keeps no peak statistics, so each variant runs in a fresh subprocess
  that allocates its inputs, reads its resident set size (``/proc/self/statm``), runs the loss head
  once and reads the process's peak resident set size (``resource.getrusage(RUSAGE_SELF).ru_maxrss``);
  the peak minus the resident size before is the loss head's peak. Large tensors are mmap-backed,
  so freed memory leaves the resident set and the peak reflects what was alive at once.

Usage: python benchmarks/loss_head_memory.py [--tokens 8192] [--vocab 49152] [--hidden 576]
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time

import torch
from _common import device, print_header, synchronize

from wmss.data import IGNORE_INDEX
from wmss.losses import fused_mixed_logit_cross_entropy, mixed_logit_cross_entropy


def _inputs(tokens: int, vocab: int, hidden: int, dtype: torch.dtype) -> dict:
    g = torch.Generator().manual_seed(0)
    dev = device()

    def leaf(*shape: int, scale: float) -> torch.Tensor:
        return (torch.randn(*shape, generator=g) * scale).to(dev, dtype).requires_grad_(True)

    # one sequence of tokens + 1 positions: the first predicts nothing (its label is the prompt)
    labels = torch.randint(0, vocab, (1, tokens + 1), generator=g).to(dev)
    labels[0, 0] = IGNORE_INDEX
    return {
        "strong_hidden": leaf(1, tokens + 1, hidden, scale=1.0),
        "weak_hidden": leaf(1, tokens + 1, hidden, scale=1.0),
        "strong_head": torch.nn.Linear(hidden, vocab, bias=False).to(dev, dtype),
        "weak_head": torch.nn.Linear(hidden, vocab, bias=False).to(dev, dtype),
        "labels": labels,
    }


def _loss_head(variant: str, x: dict) -> None:
    if variant == "fused":
        loss = fused_mixed_logit_cross_entropy(
            x["strong_hidden"], x["strong_head"], x["weak_hidden"], x["weak_head"], x["labels"], 0.5
        )
    else:
        strong_logits, weak_logits = x["strong_head"](x["strong_hidden"]), x["weak_head"](x["weak_hidden"])
        loss = mixed_logit_cross_entropy(strong_logits, weak_logits, x["labels"], 0.5)
    loss.backward()


def _resident_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def measure_cpu_subprocess(variant: str, args: argparse.Namespace) -> dict:
    """Run in a fresh process (``--variant``): print ``{"peak_bytes", "seconds"}`` as JSON."""
    x = _inputs(args.tokens, args.vocab, args.hidden, getattr(torch, args.dtype))
    before = _resident_bytes()
    start = time.perf_counter()
    _loss_head(variant, x)
    seconds = time.perf_counter() - start
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # kilobytes on Linux
    return {"peak_bytes": peak - before, "seconds": seconds}


def measure_cuda(variant: str, args: argparse.Namespace) -> dict:
    x = _inputs(args.tokens, args.vocab, args.hidden, getattr(torch, args.dtype))
    _loss_head(variant, x)  # warm-up (kernels, cuBLAS workspace)
    for t in (
        x["strong_hidden"],
        x["weak_hidden"],
        *x["strong_head"].parameters(),
        *x["weak_head"].parameters(),
    ):
        t.grad = None
    synchronize()
    torch.cuda.empty_cache()
    torch.cuda.reset_peak_memory_stats()
    before = torch.cuda.memory_allocated()
    start = time.perf_counter()
    _loss_head(variant, x)
    synchronize()
    return {"peak_bytes": torch.cuda.max_memory_allocated() - before, "seconds": time.perf_counter() - start}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tokens", type=int, default=8192, help="completion tokens in the batch")
    parser.add_argument("--vocab", type=int, default=49152)
    parser.add_argument("--hidden", type=int, default=576)
    parser.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"])
    parser.add_argument("--variant", choices=["fused", "naive"], help=argparse.SUPPRESS)  # subprocess mode
    args = parser.parse_args()
    if args.variant:
        print(json.dumps(measure_cpu_subprocess(args.variant, args)))
        return

    print_header("WD-JT loss head: peak memory, fused vs naive")
    on_cuda = torch.cuda.is_available()
    print(
        f"shape: {args.tokens} completion tokens x vocabulary {args.vocab}, hidden {args.hidden}, "
        f"{args.dtype}, λ=0.5, both branches trained"
    )
    print(
        "method: "
        + (
            "torch.cuda.max_memory_allocated delta, same process"
            if on_cuda
            else "peak RSS delta (ru_maxrss - RSS before), fresh subprocess per variant"
        )
    )
    results = {}
    for variant in ("naive", "fused"):
        if on_cuda:
            results[variant] = measure_cuda(variant, args)
        else:
            command = [sys.executable, __file__, "--variant", variant]
            command += [
                "--tokens",
                str(args.tokens),
                "--vocab",
                str(args.vocab),
                "--hidden",
                str(args.hidden),
            ]
            command += ["--dtype", args.dtype]
            out = subprocess.run(command, check=True, capture_output=True, text=True).stdout
            results[variant] = json.loads(out.strip().splitlines()[-1])
        r = results[variant]
        print(f"{variant:>5}: peak {r['peak_bytes'] / 2**20:10.1f} MiB   time {r['seconds']:7.2f} s")
    one_logits = args.tokens * args.vocab * 4 / 2**20
    print(f"(one {args.tokens} x {args.vocab} float32 logits tensor: {one_logits:.1f} MiB)")
    ratio = results["fused"]["peak_bytes"] / results["naive"]["peak_bytes"]
    print(f"ratio fused/naive peak memory: {ratio:.3f} (target <= 0.25)")


if __name__ == "__main__":
    main()

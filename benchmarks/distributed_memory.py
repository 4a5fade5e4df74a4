"""Memory per device of WD-JT's weak+strong pair under DDP, FSDP and ZeRO-2/3 (computed, not measured).

The parameter counts come from the models' architectures (Qwen3-4B-Base and Qwen3-8B-Base, built on the
meta device: nothing is downloaded or allocated); the bytes per parameter from how each strategy keeps
the training state, with mixed precision (``train.bf16: true``) and AdamW:

- DDP and FSDP run Trainer's automatic mixed precision: fp32 weights (4 B) and fp32 gradients (4 B), bf16
  compute; DeepSpeed keeps bf16 weights (2 B) and gradients (2 B) plus an fp32 master copy (4 B).
- AdamW: two fp32 moments (8 B) per trained parameter.
- DDP: everything on every device, plus (N > 1) its fp32 gradient buckets (4 B;
  ``gradient_as_bucket_view`` is off by default): 16 or 20 B.  FSDP FULL_SHARD: (4 + 4 + 8) / N.
  ZeRO-2: 2 + (2 + 4 + 8) / N.  ZeRO-3: (2 + 2 + 4 + 8) / N.
- A frozen weak model (``wmss.freeze_weak``) has weights alone: 4 B (DDP), 4/N (FSDP), 2 (ZeRO-2),
  2/N (ZeRO-3).

Model states only: activations (which grow with batch × length and shrink with
``train.activation_checkpointing``), buffers, the CUDA context and fragmentation come on top. So do
FSDP's gathered units: the pair's root unit (embeddings and output heads of both models) is gathered for
the whole step, and one or two decoder layers at a time.

    python benchmarks/distributed_memory.py [--devices 1 2 4 8]
"""

from __future__ import annotations

import argparse

import torch
from transformers import AutoModelForCausalLM, Qwen3Config

GIB = 2**30

# Architectures of the paper's Qwen3 bases (their config.json files).
MODELS = {
    "Qwen3-4B-Base": dict(
        hidden_size=2560, intermediate_size=9728, num_hidden_layers=36, tie_word_embeddings=True
    ),
    "Qwen3-8B-Base": dict(
        hidden_size=4096, intermediate_size=12288, num_hidden_layers=36, tie_word_embeddings=False
    ),
}
SHARED = dict(num_attention_heads=32, num_key_value_heads=8, head_dim=128, vocab_size=151936)


STRATEGIES = {  # name: (bytes per trained parameter, bytes per frozen parameter, formula), N devices
    "DDP": (lambda n: 4 + 4 + 8 + (4 if n > 1 else 0), lambda n: 4, "16, +4 if N > 1"),
    "FSDP FULL_SHARD": (lambda n: (4 + 4 + 8) / n, lambda n: 4 / n, "16/N"),
    "ZeRO-2": (lambda n: 2 + (2 + 4 + 8) / n, lambda n: 2, "2 + 14/N"),
    "ZeRO-3": (lambda n: (2 + 2 + 4 + 8) / n, lambda n: 2 / n, "16/N"),
}


def count(name: str) -> tuple[int, int]:
    """(parameters, of which embeddings and output head) of one model, built on the meta device."""
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(Qwen3Config(**MODELS[name], **SHARED))
    params = sum(p.numel() for p in model.parameters())  # a tied head is counted once
    heads = (model.get_input_embeddings(), model.get_output_embeddings())
    return params, sum({id(m.weight): m.weight.numel() for m in heads}.values())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--devices", type=int, nargs="+", default=[1, 2, 4, 8])
    args = parser.parse_args()
    print("# WD-JT memory per device: model states of the weak+strong pair (GiB)\n")
    for name in MODELS:
        params, ends = count(name)
        print(f"## {name} pair: 2 × {params:,} = {2 * params:,} parameters\n")
        devices = " | ".join(f"{n} GPU{'s' if n > 1 else ''}" for n in args.devices)
        print(f"| strategy | weak | bytes/param (trained) | {devices} |")
        print("|---|---|---|" + "---|" * len(args.devices))
        for frozen in (False, True):
            for strategy, (trained, weights_only, formula) in STRATEGIES.items():
                weak = weights_only if frozen else trained
                cells = [f"{params * (trained(n) + weak(n)) / GIB:.1f}" for n in args.devices]
                print(
                    f"| {strategy} | {'frozen' if frozen else 'trained'} | {formula} | {' | '.join(cells)} |"
                )
        print(
            f"\nFSDP also gathers the root unit for the whole step: embeddings and heads of both models, "
            f"{2 * ends:,} parameters ({2 * ends * 2 / GIB:.1f} GiB in bf16). One whole model for the "
            f"entropy pass, evaluation or pair generation (fp32, per process): {params * 4 / GIB:.1f} GiB. "
            f"Host memory before sharding: every process loads both models in fp32, "
            f"{2 * params * 4 / GIB:.1f} GiB each.\n"
        )


if __name__ == "__main__":
    main()

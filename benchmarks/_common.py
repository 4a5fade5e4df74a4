"""Shared by the benchmark scripts: the header, timing, the SmolLM2 model and a fixed batch."""

from __future__ import annotations

import os
import platform
import statistics
import time
from collections.abc import Callable

import torch

from wmss.data import IGNORE_INDEX


def device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def print_header(title: str) -> None:
    """Title, machine, torch version and date: every benchmark prints this first."""
    if torch.cuda.is_available():
        accelerator = torch.cuda.get_device_name()
    else:
        accelerator = f"CPU only, {torch.get_num_threads()} torch threads"
    print(f"# {title}")
    print(f"machine: {platform.node()} | {platform.machine()} | {os.cpu_count()} CPUs | {accelerator}")
    print(f"python {platform.python_version()} | torch {torch.__version__}")
    print(f"date: {time.strftime('%Y-%m-%d %H:%M:%S %Z')}")


def synchronize() -> None:
    if torch.cuda.is_available():
        torch.cuda.synchronize()


def median_seconds(step: Callable[[], object], warmup: int, steps: int) -> float:
    """Median wall time of ``steps`` calls of ``step`` after ``warmup`` untimed calls."""
    for _ in range(warmup):
        step()
    synchronize()
    times = []
    for _ in range(steps):
        start = time.perf_counter()
        step()
        synchronize()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def load_smollm2() -> torch.nn.Module:
    """SmolLM2-135M-Instruct (Llama architecture, tied head, vocabulary 49,152) in float32."""
    from wmss.models import load_model, resolve_model

    return load_model(resolve_model("smollm2-135m-instruct")).to(device())


def fixed_batch(
    vocab_size: int, batch: int, seq_len: int, completion_fraction: float = 0.5, seed: int = 0
) -> dict[str, torch.Tensor]:
    """Random token ids; the last ``completion_fraction`` of every row is completion (labelled)."""
    g = torch.Generator().manual_seed(seed)
    input_ids = torch.randint(0, vocab_size, (batch, seq_len), generator=g)
    labels = input_ids.clone()
    labels[:, : seq_len - int(seq_len * completion_fraction)] = IGNORE_INDEX
    batch_ = {"input_ids": input_ids, "attention_mask": torch.ones_like(input_ids), "labels": labels}
    return {k: v.to(device()) for k, v in batch_.items()}

"""Training phases and the entropy pass run the same way on one process and on N (``torchrun``).

``tests/test_distributed.py`` launches this module with 2 processes (gloo, CPU) and runs the same
functions in its own process as the reference. The data and the global batch are the same in both:
16 rows, a global batch of 4 (2 processes × 2 per device, or 1 × 4), so both see the same examples in
every optimizer step (Trainer's seeded sampler gives one permutation, and accelerate hands consecutive
per-device batches of it to consecutive processes; 16 is a multiple of 4, so no batch is padded).

    python -m torch.distributed.run --nproc_per_node 2 -m tests.distributed_worker phases MODEL WEAK OUT
    python -m torch.distributed.run --nproc_per_node 2 -m tests.distributed_worker interrupted-pipeline \
        CONFIG PHASE STEP
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import torch
from transformers import TrainerCallback

from tests.conftest import arithmetic_rows
from wmss import distributed
from wmss.config import DataConfig, TrainConfig
from wmss.data import IGNORE_INDEX, CompletionCollator, tokenize_examples
from wmss.entropy import dataset_entropies
from wmss.heads import capture_head_input, output_head
from wmss.losses import fused_completion_cross_entropy
from wmss.models import load_model, load_tokenizer, save_model
from wmss.trainers import PhaseTraining, WeakStrongPair, branch_state, train_joint, train_sft

GLOBAL_BATCH = 4


def dataset(tokenizer, n: int):
    cfg = DataConfig(prompt_template="{question}", completion_template="{answer}")
    return tokenize_examples(arithmetic_rows(n), tokenizer, cfg, 96)[0]


def write_steps(out: Path, name: str, steps: list[dict]) -> None:
    """Per optimizer step: the loss and the gradient norm (before clipping), as the main process sees them."""
    if distributed.is_main():
        (out / f"{name}-steps.json").write_text(json.dumps(steps))


def trainer_steps(result: dict) -> list[dict]:
    return [{"loss": h["loss"], "grad_norm": h["grad_norm"]} for h in result["log_history"] if "loss" in h]


def train_config() -> TrainConfig:
    per_device = GLOBAL_BATCH // distributed.world_size()
    return TrainConfig(learning_rate=1e-2, per_device_batch_size=per_device, save_steps=100, logging_steps=1)


def sft(model_dir: str, out: Path) -> None:
    """SFT of ``model_dir`` on 16 rows; the model is saved at ``out/sft``."""
    tokenizer = load_tokenizer(model_dir)
    result = train_sft(
        load_model(model_dir),
        tokenizer,
        dataset(tokenizer, 16),
        train_config(),
        1.0,
        PhaseTraining(out / "ckpt-sft", 0, save_to=out / "sft"),
    )
    write_steps(out, "sft", trainer_steps(result))


def joint(weak_dir: str, strong_dir: str, out: Path, freeze_weak: bool) -> None:
    """WD-JT (λ = 0.5) on 16 rows; the strong model is saved at ``out/joint[-frozen]`` and the weak one
    (trained in place on every process under DDP) beside it."""
    tokenizer = load_tokenizer(strong_dir)
    weak, strong = load_model(weak_dir), load_model(strong_dir)
    name = "joint-frozen" if freeze_weak else "joint"
    result = train_joint(
        weak,
        strong,
        tokenizer,
        dataset(tokenizer, 16),
        train_config(),
        1.0,
        0.5,
        freeze_weak,
        PhaseTraining(out / f"ckpt-{name}", 0, save_to=out / name),
    )
    write_steps(out, name, trainer_steps(result))
    if distributed.is_main():
        save_model(weak, tokenizer, out / f"{name}-weak")


def entropy(model_dir: str, out: Path) -> None:
    """Eq. 7 on 17 rows in batches of 4 (5 batches, the last of one row), saved as ``out/entropy.npy``."""
    tokenizer = load_tokenizer(model_dir)
    values = dataset_entropies(load_model(model_dir), dataset(tokenizer, 17), tokenizer.pad_token_id, 4)
    if distributed.is_main():
        np.save(out / "entropy.npy", values)


def fsdp(kind: str, weak_dir: str, strong_dir: str, out: Path, steps: int = 4) -> None:
    """Training steps with the model(s) sharded by FSDP2 (``fully_shard``, gloo, CPU) and one AdamW.

    ``joint``: WD-JT (λ = 0.5). Every decoder layer of both models is its own FSDP unit and the
    ``WeakStrongPair`` the root, which holds the embeddings and output heads; the fused mixed loss (no
    logits tensor) runs inside the pair's forward. ``sft``: the strong model alone, with the fused loss
    computed after the model's forward from the captured head input, as ``CompletionTrainer`` does.

    Trainer's FSDP goes through accelerate, which enables FSDP on GPUs only, so this loop does by hand
    what Trainer does: rows in order, each process its share of every global batch, the loss divided by
    the global batch's completion-token count and multiplied by the number of processes (FSDP averages
    gradients over them), gradients clipped to norm 1. The strong model is saved at ``out/fsdp-<kind>``
    from the gathered full state dict.
    """
    tokenizer = load_tokenizer(strong_dir)
    data = dataset(tokenizer, GLOBAL_BATCH * steps)
    strong = load_model(strong_dir)
    models = [strong] if kind == "sft" else [load_model(weak_dir), strong]
    module = strong if kind == "sft" else WeakStrongPair(models[0], strong, 0.5)
    world, rank = distributed.world_size(), distributed.rank()
    if world > 1:
        from torch.distributed.device_mesh import init_device_mesh
        from torch.distributed.fsdp import fully_shard

        mesh = init_device_mesh("cpu", (world,))
        for model in models:
            for layer in model.model.layers:
                fully_shard(layer, mesh=mesh)
        fully_shard(module, mesh=mesh)
        sharded = [p for p in module.parameters() if isinstance(p, torch.distributed.tensor.DTensor)]
        assert len(sharded) == len(list(module.parameters())), "every parameter should be sharded"
    optimizer = torch.optim.AdamW(module.parameters(), lr=1e-2, weight_decay=0.0)
    collate = CompletionCollator(tokenizer.pad_token_id)
    per_device = GLOBAL_BATCH // world
    log = []
    for step in range(steps):
        rows = [data[i] for i in range(step * GLOBAL_BATCH, (step + 1) * GLOBAL_BATCH)]
        tokens = sum(sum(label != IGNORE_INDEX for label in row["labels"][1:]) for row in rows)
        batch = collate(rows[rank * per_device : (rank + 1) * per_device])
        if kind == "sft":
            with capture_head_input(strong) as captured:
                strong(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], use_cache=False)
            loss = fused_completion_cross_entropy(captured[0], output_head(strong), batch["labels"], tokens)
        else:
            loss = module(**batch, num_items_in_batch=tokens)["loss"]
        loss = loss * world
        loss.backward()
        norm = torch.nn.utils.clip_grad_norm_(module.parameters(), 1.0)
        norm = norm.full_tensor() if isinstance(norm, torch.distributed.tensor.DTensor) else norm
        log.append({"loss": sum(distributed.gather(loss.item())) / world, "grad_norm": norm.item()})
        optimizer.step()
        optimizer.zero_grad()
    if world > 1:
        from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

        options = StateDictOptions(full_state_dict=True, cpu_offload=True)
        state = get_model_state_dict(module, options=options)
    else:
        state = module.state_dict()
    if kind == "joint":
        state = branch_state(state, "strong")
    if distributed.is_main():
        save_model(strong, tokenizer, out / f"fsdp-{kind}", state_dict=state)
    write_steps(out, f"fsdp-{kind}", log)
    distributed.barrier()


class InterruptAfterSave(TrainerCallback):
    """Every process stops (KeyboardInterrupt) once all have written checkpoint ``step`` of ``phase``."""

    def __init__(self, phase: str, step: int):
        self.phase, self.step = phase, step

    def on_save(self, args, state, control, **kwargs):
        if args.output_dir.endswith(self.phase) and state.global_step == self.step:
            distributed.barrier()
            raise KeyboardInterrupt


def phases(model_dir: str, weak_dir: str, out: str) -> None:
    """Every check above, the outputs in ``out``."""
    distributed.init(timeout_s=300)
    out_dir = Path(out)
    sft(model_dir, out_dir)
    joint(weak_dir, model_dir, out_dir, freeze_weak=False)
    joint(weak_dir, model_dir, out_dir, freeze_weak=True)
    entropy(model_dir, out_dir)
    fsdp("joint", weak_dir, model_dir, out_dir)
    fsdp("sft", weak_dir, model_dir, out_dir)
    distributed.shutdown()


def interrupted_pipeline(config: str, phase: str, step: str) -> None:
    """``wmss run CONFIG``, stopped on every process right after checkpoint ``step`` of ``phase``."""
    from wmss.config import load_config
    from wmss.pipeline import run_pipeline

    try:
        run_pipeline(load_config(config, []), callbacks=[InterruptAfterSave(phase, int(step))])
    except KeyboardInterrupt:
        sys.exit(130)
    finally:
        distributed.shutdown()
    sys.exit("the run was not interrupted")


if __name__ == "__main__":
    {"phases": phases, "interrupted-pipeline": interrupted_pipeline}[sys.argv[1]](*sys.argv[2:])

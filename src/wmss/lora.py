"""LoRA through ``peft``: every model of a run's chain is one frozen base plus an adapter.

With ``peft.enabled`` a model path in the chain is either the base checkpoint itself (M0, or an M1
given as a full checkpoint) or an adapter directory (``adapter_config.json`` + weights, as
``PeftModel.save_pretrained`` writes it, with the tokenizer beside it). transformers loads such a
directory on its own (``from_pretrained`` finds the base through the adapter's
``base_model_name_or_path``), so every read-only use — the entropy pass, diagnostics, sampling DPO
pairs, evaluation — works on it unchanged; training phases go through ``trainable_model`` and
``trainable_pair``.

In WD-JT the weak and the strong model are two ``PeftModel``s whose frozen base weights are the same
tensors (``twin``): one copy of the base in memory, two small sets of trainable weights, and two
ordinary modules, so the pair's forward, activation checkpointing and the mixed-logit loss are those
of full-parameter WD-JT.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import TYPE_CHECKING

import torch
from transformers import AutoModelForCausalLM, PreTrainedModel

from wmss.config import PEFTConfig
from wmss.errors import ModelError
from wmss.models import load_model

if TYPE_CHECKING:
    from peft import LoraConfig, PeftModel

log = logging.getLogger("wmss")

ADAPTER_CONFIG = "adapter_config.json"


def is_adapter(path: str | Path) -> bool:
    """Whether ``path`` is a PEFT adapter directory."""
    return (Path(path) / ADAPTER_CONFIG).is_file()


def adapter_base(path: str | Path) -> str:
    """The base checkpoint an adapter directory was trained on."""
    config = json.loads((Path(path) / ADAPTER_CONFIG).read_text())
    base = config.get("base_model_name_or_path")
    if not base:
        raise ModelError(f"{path}/{ADAPTER_CONFIG} names no base model (base_model_name_or_path).")
    return base


def base_of(path: str | Path) -> str:
    """The checkpoint whose weights ``path`` starts from: the adapter's base, or ``path`` itself."""
    return adapter_base(path) if is_adapter(path) else str(path)


def lora_config(cfg: PEFTConfig) -> LoraConfig:
    from peft import LoraConfig

    names = cfg.target_modules.strip()
    targets = names if names == "all-linear" else [n.strip() for n in names.split(",") if n.strip()]
    return LoraConfig(
        r=cfg.r, lora_alpha=cfg.alpha, lora_dropout=cfg.dropout, target_modules=targets, task_type="CAUSAL_LM"
    )


def twin(model: PreTrainedModel) -> PreTrainedModel:
    """A second module of ``model``'s architecture whose parameters and buffers are ``model``'s own
    tensors (no copy): for a frozen base shared by two adapters."""
    with torch.device("meta"):
        copy = AutoModelForCausalLM.from_config(model.config, dtype=model.dtype)
    state = model.state_dict()
    copy.load_state_dict(state, assign=True)
    for name, buffer in model.named_buffers():  # non-persistent buffers (rotary tables) are not in it
        if name not in state:
            module_name, _, attr = name.rpartition(".")
            copy.get_submodule(module_name).register_buffer(attr, buffer, persistent=False)
    copy.generation_config = model.generation_config
    copy.tie_weights()
    return copy.train(model.training)


def attach(
    model: PreTrainedModel, path: str | Path | None, cfg: PEFTConfig | LoraConfig, seed: int
) -> PeftModel:
    """``model`` (a base) with a trainable adapter: ``path``'s when it is an adapter directory, else a
    new one (its B matrices start at zero, so the wrapped model equals the base; A is seeded).
    ``cfg``: our ``peft`` section, or a ``peft.LoraConfig`` (``WDJTTrainer``'s ``peft_config``)."""
    from peft import PeftModel, get_peft_model

    model.requires_grad_(False)
    if path is not None and is_adapter(path):
        return PeftModel.from_pretrained(model, str(path), is_trainable=True)
    torch.manual_seed(seed)
    return get_peft_model(model, lora_config(cfg) if isinstance(cfg, PEFTConfig) else cfg)


def trainable_model(
    path: str,
    cfg: PEFTConfig,
    seed: int,
    dtype: torch.dtype | str = torch.float32,
    attn_implementation: str = "sdpa",
):  # -> PeftModel
    """The model at ``path`` ready for LoRA training: its base, frozen (in ``dtype``; bfloat16 under
    ``train.bf16``; with ``attn_implementation``), with its adapter (or a new one; adapters are kept in
    float32)."""
    model = attach(load_model(base_of(path), dtype, attn_implementation), path, cfg, seed)
    log.info("LoRA: %s trainable parameters on %s", f"{trainable_parameters(model):,}", base_of(path))
    return model


def trainable_pair(
    weak_path: str,
    strong_path: str,
    cfg: PEFTConfig | LoraConfig,
    seed: int,
    dtype: torch.dtype | str = torch.float32,
    attn_implementation: str = "sdpa",
) -> tuple[PeftModel, PeftModel]:
    """(weak, strong) for WD-JT with LoRA: two adapters on one copy of the base weights. When the two
    start from different bases (e.g. a full M1 given as ``sft.checkpoint`` and M0), each keeps its own."""
    strong_base = load_model(base_of(strong_path), dtype, attn_implementation)
    if base_of(weak_path) == base_of(strong_path):
        weak_base = twin(strong_base)
    else:
        log.warning(
            "LoRA WD-JT: the weak model (%s) and the strong model (%s) start from different base weights; "
            "both bases are held in memory.",
            base_of(weak_path),
            base_of(strong_path),
        )
        weak_base = load_model(base_of(weak_path), dtype, attn_implementation)
    return attach(weak_base, weak_path, cfg, seed + 1), attach(strong_base, strong_path, cfg, seed)


def peft_pair(
    weak: str | PreTrainedModel,
    strong: str | PreTrainedModel,
    config: PEFTConfig | LoraConfig,
    seed: int,
    dtype: torch.dtype = torch.float32,
) -> tuple[PeftModel, PeftModel]:
    """(weak, strong) for WD-JT with LoRA, each given as a path (checkpoint or adapter directory) or a
    plain model: two adapters on one copy of the base weights when both start from the same base
    (same base path, or the same module), else each on its own base (``WDJTTrainer``'s ``peft_config``)."""
    from peft import PeftModel

    for name, source in (("weak_model", weak), ("model", strong)):
        if isinstance(source, PeftModel):
            raise ModelError(
                f"{name} already has an adapter and peft_config asks for a new one: pass the base model with "
                "peft_config, or the PeftModels without it."
            )
    if isinstance(weak, str) and isinstance(strong, str):
        return trainable_pair(weak, strong, config, seed, dtype)
    strong_base = load_model(base_of(strong), dtype) if isinstance(strong, str) else strong
    if weak is strong:
        weak_base = twin(strong_base)
    else:
        weak_base = load_model(base_of(weak), dtype) if isinstance(weak, str) else weak
    return (
        attach(weak_base, weak if isinstance(weak, str) else None, config, seed + 1),
        attach(strong_base, strong if isinstance(strong, str) else None, config, seed),
    )


def trainable_parameters(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


def merged_model(path: str | Path, dtype: torch.dtype | str = torch.float32) -> PreTrainedModel:
    """The adapter at ``path`` merged into its base: a plain model, for a standard checkpoint, with
    weights in ``dtype`` (``model_args.torch_dtype``; ``auto``: the base checkpoint's own). The base is
    loaded in ``dtype`` and the adapter, kept in float32, adds its update B·A to each weight in float32,
    rounded once to ``dtype``: the merged weights are those of the base the adapter was trained on."""
    from peft import PeftModel

    return PeftModel.from_pretrained(load_model(adapter_base(path), dtype), str(path)).merge_and_unload()

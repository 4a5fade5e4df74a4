"""Padding-free batches (``train.padding_free``), with TRL's meaning: the same examples per batch,
concatenated into one row of shape ``(1, total tokens)`` with ``position_ids`` that restart at 0 for
every example, no attention mask and no pad token (``wmss.data.padding_free_collator``).

transformers (5.x) turns such ``position_ids`` into a block-diagonal causal mask when no attention mask
and no KV cache is given (``masking_utils.find_packed_sequence_indices``): every example attends to
itself alone. Its labels are -100 at each example's first position, so the last token of one example
never predicts the first token of the next (the shift by one of ``wmss.losses``).

Measured on a CPU (transformers 5.24, torch 2.13): ``sdpa`` and ``eager`` honour packed
``position_ids`` for Llama, Qwen2 and GPT-2 (logits equal to one example at a time, to 2e-7; losses
and gradients to 1e-5: ``tests/test_padding_free.py``); ``flex_attention`` does too in the forward
but has no backward on a CPU (``NotImplementedError``), and GPT-2 has no flex attention.
``flash_attention_2`` (a GPU; not measured here) reads the example boundaries from ``position_ids``
itself. An architecture whose forward ignores them is found by ``packing_unsupported`` (a probe, not
a list) and runs on padded batches, with a log line.
"""

from __future__ import annotations

import logging
from typing import Any

import torch
from torch import nn

log = logging.getLogger("wmss")


def packed_forward_kwargs(position_ids: torch.Tensor | None) -> dict[str, Any]:
    """Keyword arguments for a model's forward on a padding-free batch: its ``position_ids`` and no KV
    cache (with a cache, transformers does not look for packed sequences). Empty for a padded batch."""
    return {} if position_ids is None else {"position_ids": position_ids, "use_cache": False}


def example_index(position_ids: torch.Tensor) -> torch.Tensor:
    """``(1, T)`` -> ``(1, T)``: the example (0, 1, …) of the flattened batch that each token belongs to."""
    return (position_ids == 0).cumsum(dim=-1) - 1


def packing_unsupported(model: nn.Module) -> str | None:
    """Why ``model`` cannot run a padding-free batch; None if it can.

    Probes the model once (eval mode, no gradient): three short examples of different lengths run one
    at a time and flattened into one row with ``position_ids``; their logits must agree.
    """
    embeddings = model.get_input_embeddings() if hasattr(model, "get_input_embeddings") else None
    if embeddings is None:
        return "it has no input embeddings to probe with"
    vocab, device = embeddings.weight.shape[0], embeddings.weight.device
    lengths = (5, 3, 4)
    examples = [(torch.arange(n, device=device) * 7 + 3 * i) % vocab for i, n in enumerate(lengths)]
    flat = torch.cat(examples)[None]
    positions = torch.cat([torch.arange(n, device=device) for n in lengths])[None]
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            alone = torch.cat([model(input_ids=e[None], use_cache=False).logits[0] for e in examples])
            packed = model(input_ids=flat, **packed_forward_kwargs(positions)).logits[0]
    except Exception as err:  # an architecture that rejects position_ids or the packed mask
        return f"its forward failed on a flattened batch ({type(err).__name__}: {err})"
    finally:
        model.train(was_training)
    tolerance = 1e-3 if alone.dtype == torch.float32 else 5e-2
    if packed.shape != alone.shape or not torch.allclose(packed.float(), alone.float(), atol=tolerance):
        impl = getattr(getattr(model, "config", None), "_attn_implementation", None)
        return f"its attention ({impl}) lets flattened examples see each other"
    return None


def use_padding_free(models: list[nn.Module], enabled: bool, what: str) -> bool:
    """Whether ``what`` may flatten its batches for all of ``models`` (logs once when it may not)."""
    if not enabled:
        return False
    for model in models:
        reason = packing_unsupported(model)
        if reason is not None:
            name = type(model).__name__
            log.warning("%s: padded batches for %s, train.padding_free is ignored (%s).", what, name, reason)
            return False
    log.info("%s: padding-free batches (train.padding_free).", what)
    impl = getattr(getattr(models[0], "config", None), "_attn_implementation", None)
    if next(models[0].parameters()).device.type == "cpu" and impl != "flash_attention_2":
        log.info(
            "%s: on a CPU a flattened row attends through a block-diagonal mask (%s), whose memory grows "
            "with the square of the row's length; train.group_by_length=true was faster on a CPU "
            "(benchmarks/RESULTS.md, issue 25).",
            what,
            impl,
        )
    return True

"""Final hidden states and output head of any ``AutoModelForCausalLM``, for the fused loss head.

The fused losses (``wmss.losses``) and the chunked entropy pass (``wmss.entropy``) need what goes
*into* a model's output head, not the tokens×vocabulary logits that come out of it. Rather than
copy modeling code, we run the model's own forward with a pre-hook on its output head
(``model.get_output_embeddings()``): the hook records the head's input and hands the head an empty
slice of it, so the forward costs the decoder alone and returns zero-length logits. Whatever a
model does to its hidden states before the head (a final norm, a scale) is thus included, and the
call goes through the top-level module, so wrappers such as DDP still see a forward.

Models that post-process the head's output (soft-capping, logit scaling, a head that is not one
linear map, or anything else the probe below finds) are reported by ``fused_head_unsupported``;
callers then fall back to the naive path with a one-line log message.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import contextmanager

import torch
from torch import nn

log = logging.getLogger("wmss")

# Config fields with which transformers' (5.x) CausalLM forwards change the logits after the head
# (Gemma 2/3/4, Inkling and nanochat soft-cap, RecurrentGemma caps, Cohere and Granite scale, Muse
# multiplies).
LOGIT_POST_PROCESSING = {
    "final_logit_softcapping": None,
    "logits_soft_cap": None,
    "logit_scale": 1.0,
    "logits_scaling": 1.0,
    "output_multiplier": 1.0,
}
"""Field name -> the value that leaves the logits unchanged (``None``: unset)."""


def output_head(model: nn.Module) -> nn.Module:
    """The model's output head: a module with a ``(vocab, hidden)`` ``weight`` and optional ``bias``."""
    head = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    weight = getattr(head, "weight", None)
    if not isinstance(weight, torch.Tensor) or weight.dim() != 2:
        raise ValueError(f"{type(model).__name__} has no linear output head (get_output_embeddings()).")
    return head


@contextmanager
def capture_head_input(model: nn.Module, skip_head: bool = True) -> Iterator[list[torch.Tensor]]:
    """Within the block, every call of the model's output head appends its input to the yielded list.

    With ``skip_head`` the head is given an empty slice of the sequence instead, so the model's
    forward returns zero-length logits and never builds the tokens×vocabulary tensor.
    """
    captured: list[torch.Tensor] = []

    def hook(module: nn.Module, args: tuple) -> tuple | None:
        hidden = args[0]
        captured.append(hidden)
        return (hidden.narrow(-2, 0, 0), *args[1:]) if skip_head else None

    handle = output_head(model).register_forward_pre_hook(hook)
    try:
        yield captured
    finally:
        handle.remove()


def final_hidden_states(
    model: nn.Module,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor | None = None,
    position_ids: torch.Tensor | None = None,
) -> torch.Tensor:
    """``(batch, seq, hidden)``: the input of the model's output head, without computing any logits.

    ``position_ids`` (and no ``attention_mask``): a padding-free batch (``wmss.packing``)."""
    with capture_head_input(model) as captured:
        model(input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids, use_cache=False)
    if len(captured) != 1:
        raise RuntimeError(f"{type(model).__name__} called its output head {len(captured)} times, not once.")
    return captured[0]


def fused_head_unsupported(model: nn.Module) -> str | None:
    """Why ``head(final_hidden_states(model))`` would not equal ``model(...).logits``; None if it does.

    Checks the config fields that post-process logits (``LOGIT_POST_PROCESSING``), then probes the
    model once on a few tokens (eval mode, no gradient): its logits must equal its head applied to
    the captured hidden states. The probe catches post-processing that no config field announces.
    """
    try:
        head = output_head(model)
    except ValueError as err:
        return str(err)
    config = getattr(model, "config", None)
    configs = [config] if config is not None else []
    if config is not None and hasattr(config, "get_text_config"):
        configs.append(config.get_text_config())
    for cfg in configs:
        for key, neutral in LOGIT_POST_PROCESSING.items():
            value = getattr(cfg, key, None)
            if value is not None and value != neutral:
                return f"config.{key}={value} post-processes the logits"
    return _probe(model, head)


def _probe(model: nn.Module, head: nn.Module) -> str | None:
    embeddings = model.get_input_embeddings() if hasattr(model, "get_input_embeddings") else None
    device = embeddings.weight.device if embeddings is not None else head.weight.device
    ids = (torch.arange(8, device=device) % head.weight.shape[0])[None]
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad(), capture_head_input(model, skip_head=False) as captured:
            logits = model(input_ids=ids, use_cache=False).logits
    except Exception as err:  # a model that needs more than input_ids cannot be probed
        return f"probing its forward failed ({type(err).__name__}: {err})"
    finally:
        model.train(was_training)
    if len(captured) != 1:
        return f"its forward calls the output head {len(captured)} times"
    with torch.no_grad():
        expected = head(captured[0])
    if logits.shape != expected.shape or not torch.allclose(logits.float(), expected.float(), 1e-4, 1e-5):
        return "its logits differ from its output head applied to its last hidden states"
    return None


def use_fused_head(models: list[nn.Module], enabled: bool, what: str) -> bool:
    """Whether ``what`` may use the fused loss head for all of ``models`` (logs once when it may not)."""
    if not enabled:
        return False
    for model in models:
        reason = fused_head_unsupported(model)
        if reason is not None:
            log.warning("%s: naive loss head for %s (%s).", what, type(model).__name__, reason)
            return False
    return True

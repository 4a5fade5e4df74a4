"""Batched greedy decoding for evaluation."""

from __future__ import annotations

import torch
from tqdm.auto import tqdm
from transformers import PreTrainedModel, PreTrainedTokenizerBase


def generate_greedy(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    prompts: list[str],
    max_new_tokens: int,
    batch_size: int = 16,
    stop_strings: list[str] | None = None,
    show_progress: bool = True,
) -> list[str]:
    """Greedily continue each prompt; return only the new text, in the order of ``prompts``.

    Prompts must be fully rendered (chat template already applied); they are tokenized without
    special tokens. Prompts are batched by length and left-padded; decoding uses the KV cache and
    stops at the tokenizer's or the model's EOS tokens. With ``stop_strings``, each text is cut
    before the first stop string it contains. The model's training mode is restored afterwards.
    """
    if max_new_tokens < 1:
        raise ValueError(f"max_new_tokens must be at least 1, got {max_new_tokens}")
    if batch_size < 1:
        raise ValueError(f"batch_size must be at least 1, got {batch_size}")
    eos_ids = _eos_token_ids(model, tokenizer)
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else eos_ids[0]
    token_ids = [tokenizer(prompt, add_special_tokens=False)["input_ids"] for prompt in prompts]
    for index, ids in enumerate(token_ids):
        if not ids:
            raise ValueError(f"prompt {index} is empty: there is nothing to continue")
    order = sorted(range(len(prompts)), key=lambda index: len(token_ids[index]), reverse=True)
    batches = [order[start : start + batch_size] for start in range(0, len(order), batch_size)]
    texts: list[str] = [""] * len(prompts)
    was_training = model.training
    model.eval()
    try:
        with torch.inference_mode():
            for batch in tqdm(batches, desc="generating", unit="batch", disable=not show_progress):
                new_ids = _generate_batch(
                    model,
                    tokenizer,
                    [token_ids[index] for index in batch],
                    max_new_tokens,
                    eos_ids,
                    pad_id,
                    stop_strings,
                )
                for index, ids in zip(batch, new_ids, strict=True):
                    texts[index] = _cut_at_stop_strings(
                        tokenizer.decode(ids, skip_special_tokens=True), stop_strings or []
                    )
    finally:
        model.train(was_training)
    return texts


def _eos_token_ids(model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase) -> list[int]:
    """EOS ids of the tokenizer and of the model's generation config, without duplicates."""
    candidates = [tokenizer.eos_token_id]
    configured = getattr(getattr(model, "generation_config", None), "eos_token_id", None)
    candidates += configured if isinstance(configured, list) else [configured]
    eos_ids = list(dict.fromkeys(token for token in candidates if token is not None))
    if not eos_ids:
        raise ValueError("neither the tokenizer nor the model's generation config defines an EOS token")
    return eos_ids


def _generate_batch(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    batch: list[list[int]],
    max_new_tokens: int,
    eos_ids: list[int],
    pad_id: int,
    stop_strings: list[str] | None,
) -> list[list[int]]:
    """Left-pad one batch, decode greedily, and return each row's new tokens up to its first EOS."""
    width = max(len(ids) for ids in batch)
    input_ids = torch.tensor([[pad_id] * (width - len(ids)) + ids for ids in batch], device=model.device)
    attention_mask = torch.tensor(
        [[0] * (width - len(ids)) + [1] * len(ids) for ids in batch], device=model.device
    )
    stop_kwargs = {"stop_strings": stop_strings, "tokenizer": tokenizer} if stop_strings else {}
    output = model.generate(
        input_ids=input_ids,
        attention_mask=attention_mask,
        max_new_tokens=max_new_tokens,
        # Explicit values, so that sampling or penalties in the model's generation config cannot apply.
        do_sample=False,
        num_beams=1,
        repetition_penalty=1.0,
        no_repeat_ngram_size=0,
        min_new_tokens=0,
        num_return_sequences=1,
        return_dict_in_generate=False,
        use_cache=True,
        eos_token_id=eos_ids,
        pad_token_id=pad_id,
        **stop_kwargs,
    )
    rows = []
    for new_tokens in output[:, width:].tolist():
        ends = [position for position, token in enumerate(new_tokens) if token in eos_ids]
        rows.append(new_tokens[: ends[0]] if ends else new_tokens)
    return rows


def _cut_at_stop_strings(text: str, stop_strings: list[str]) -> str:
    """``text`` up to (not including) the earliest stop string in it."""
    positions = [text.find(stop) for stop in stop_strings if stop and stop in text]
    return text[: min(positions)] if positions else text

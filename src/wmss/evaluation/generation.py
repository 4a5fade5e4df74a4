"""Batched greedy decoding for evaluation."""

from __future__ import annotations

import hashlib
import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from tqdm.auto import tqdm
from transformers import PreTrainedModel, PreTrainedTokenizerBase, StoppingCriteria, StoppingCriteriaList

from wmss.errors import ConfigError


def _eos_token_ids(model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase) -> list[int]:
    """EOS ids of the tokenizer and of the model's generation config, without duplicates."""
    candidates = [tokenizer.eos_token_id]
    configured = getattr(getattr(model, "generation_config", None), "eos_token_id", None)
    candidates += configured if isinstance(configured, list) else [configured]
    eos_ids = list(dict.fromkeys(token for token in candidates if token is not None))
    if not eos_ids:
        raise ValueError("neither the tokenizer nor the model's generation config defines an EOS token")
    return eos_ids


ANSWER_COMPLETE = r"(?i)the (?:final )?answer is\b[^\n]*?(?:\.\s|\n)|\\boxed\{(?:[^{}]|\{[^{}]*\})*\}"
"""Text after which an answer is complete: an "answer is …" sentence ended by a period and a space or a
newline, or a closed ``\\boxed{…}``. Generation stops there even if the model would go on."""


@dataclass
class Generation:
    """One sampled continuation."""

    text: str
    num_tokens: int
    finish: str
    """``eos`` (the model stopped), ``pattern`` (the answer was complete) or ``length`` (budget hit)."""


class _PatternStop(StoppingCriteria):
    """Per-row stop once the generated text (not the prompt) matches ``pattern``."""

    def __init__(self, tokenizer: PreTrainedTokenizerBase, pattern: str, prompt_width: int):
        self.tokenizer, self.regex, self.width = tokenizer, re.compile(pattern), prompt_width

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor, **kwargs) -> torch.BoolTensor:
        tails = self.tokenizer.batch_decode(input_ids[:, self.width :][:, -64:], skip_special_tokens=True)
        return torch.tensor([bool(self.regex.search(t)) for t in tails], device=input_ids.device)


def generate(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    prompts: list[str],
    max_new_tokens: int,
    *,
    batch_size: int = 16,
    num_samples: int = 1,
    temperature: float = 0.0,
    top_p: float = 1.0,
    seed: int = 0,
    stop_pattern: str | None = ANSWER_COMPLETE,
    show_progress: bool = True,
    on_batch: Callable[[list[int], list[list[Generation]]], None] | None = None,
) -> list[list[Generation]]:
    """``num_samples`` continuations of each prompt (greedy when ``temperature`` is 0), in prompt order.

    Batched by length with left padding and the KV cache. Sampling is seeded per batch from ``seed``
    and the batch's prompts, so a rerun with the same settings gives the same samples. ``on_batch``
    receives each finished batch (prompt indices and their generations), e.g. to save progress.
    """
    if num_samples < 1 or (num_samples > 1 and temperature <= 0):
        raise ValueError("num_samples > 1 needs temperature > 0 (greedy decoding gives one answer)")
    eos_ids = _eos_token_ids(model, tokenizer)
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else eos_ids[0]
    token_ids = [tokenizer(p, add_special_tokens=False)["input_ids"] for p in prompts]
    order = sorted(range(len(prompts)), key=lambda i: len(token_ids[i]), reverse=True)
    batches = [order[s : s + batch_size] for s in range(0, len(order), batch_size)]
    results: list[list[Generation]] = [[] for _ in prompts]
    regex = re.compile(stop_pattern) if stop_pattern else None
    was_training = model.training
    model.eval()
    try:
        with torch.inference_mode():
            for batch in tqdm(batches, desc="generating", unit="batch", disable=not show_progress):
                rows = [token_ids[i] for i in batch]
                width = max(len(r) for r in rows)
                input_ids = torch.tensor([[pad_id] * (width - len(r)) + r for r in rows], device=model.device)
                mask = torch.tensor(
                    [[0] * (width - len(r)) + [1] * len(r) for r in rows], device=model.device
                )
                sampling = {"do_sample": False}
                if temperature > 0:
                    key = "\x00".join([str(seed), *(prompts[i] for i in batch)]).encode()
                    torch.manual_seed(int.from_bytes(hashlib.sha256(key).digest()[:4], "little"))
                    sampling = {"do_sample": True, "temperature": temperature, "top_p": top_p, "top_k": 0}
                output = model.generate(
                    input_ids=input_ids,
                    attention_mask=mask,
                    max_new_tokens=max_new_tokens,
                    num_beams=1,
                    num_return_sequences=num_samples,
                    repetition_penalty=1.0,
                    no_repeat_ngram_size=0,
                    min_new_tokens=0,
                    use_cache=True,
                    eos_token_id=eos_ids,
                    pad_token_id=pad_id,
                    stopping_criteria=StoppingCriteriaList([_PatternStop(tokenizer, stop_pattern, width)])
                    if stop_pattern
                    else None,
                    **sampling,
                )
                new = output[:, width:].tolist()
                generated = []
                for k, i in enumerate(batch):
                    for tokens in new[k * num_samples : (k + 1) * num_samples]:
                        results[i].append(_finish(tokenizer, tokens, eos_ids, regex))
                    generated.append(results[i])
                if on_batch:
                    on_batch(batch, generated)
    finally:
        model.train(was_training)
    return results


def _finish(
    tokenizer: PreTrainedTokenizerBase, tokens: list[int], eos_ids: list[int], regex: re.Pattern | None
) -> Generation:
    ends = [p for p, t in enumerate(tokens) if t in eos_ids]
    if ends:
        return Generation(tokenizer.decode(tokens[: ends[0]], skip_special_tokens=True), ends[0], "eos")
    text = tokenizer.decode(tokens, skip_special_tokens=True)
    match = regex.search(text) if regex else None
    if match:
        return Generation(text[: match.end()].rstrip(), len(tokens), "pattern")
    return Generation(text, len(tokens), "length")


def vllm_usable() -> bool:
    """vLLM is installed and a CUDA GPU is present."""
    import importlib.util

    return importlib.util.find_spec("vllm") is not None and torch.cuda.is_available()


VLLM_DTYPES = ("auto", "float32", "bfloat16", "float16")
"""Weight dtypes ``vllm.LLM`` is given by name (``auto``: vLLM's own choice for the checkpoint)."""


def vllm_engine_args(model_path: str, seed: int = 0, dtype: str = "auto") -> dict[str, Any]:
    """Keyword arguments of ``vllm.LLM`` for ``model_path``: its tokenizer, the seed and the weights'
    ``dtype`` (one of ``VLLM_DTYPES``; ``auto`` is vLLM's default: the checkpoint's own dtype, except that
    vLLM runs a float32 checkpoint in half precision)."""
    if dtype not in VLLM_DTYPES:
        raise ConfigError(f"the vLLM backend's dtype must be one of {', '.join(VLLM_DTYPES)}; got {dtype!r}.")
    return {"model": model_path, "tokenizer": model_path, "seed": seed, "dtype": dtype}


class VLLMGenerator:
    """The vLLM backend: same prompts (as token ids, no special tokens added), same settings, same
    ``Generation`` records as ``generate``. vLLM has no regex stop, so an answer-complete pattern is
    applied to the finished text (the time saving is lost, the result is the same)."""

    def __init__(
        self, model_path: str, tokenizer: PreTrainedTokenizerBase, seed: int = 0, dtype: str = "auto"
    ):
        from vllm import LLM

        self.tokenizer = tokenizer
        self.llm = LLM(**vllm_engine_args(model_path, seed, dtype))

    def generate(
        self,
        prompts: list[str],
        max_new_tokens: int,
        *,
        num_samples: int = 1,
        temperature: float = 0.0,
        top_p: float = 1.0,
        seed: int = 0,
        stop_pattern: str | None = ANSWER_COMPLETE,
        on_batch: Callable[[list[int], list[list[Generation]]], None] | None = None,
        **_: object,
    ) -> list[list[Generation]]:
        from vllm import SamplingParams
        from vllm.inputs import TokensPrompt

        params = SamplingParams(
            n=num_samples,
            temperature=temperature,
            top_p=top_p if temperature > 0 else 1.0,
            max_tokens=max_new_tokens,
            seed=seed,
            skip_special_tokens=True,
        )
        inputs = [
            TokensPrompt(prompt_token_ids=self.tokenizer(p, add_special_tokens=False)["input_ids"])
            for p in prompts
        ]
        regex = re.compile(stop_pattern) if stop_pattern else None
        results = []
        for request in self.llm.generate(inputs, params):
            samples = []
            for out in request.outputs:
                match = regex.search(out.text) if regex else None
                if match and out.finish_reason == "length":
                    samples.append(
                        Generation(out.text[: match.end()].rstrip(), len(out.token_ids), "pattern")
                    )
                else:
                    finish = "eos" if out.finish_reason == "stop" else "length"
                    samples.append(Generation(out.text, len(out.token_ids), finish))
            results.append(samples)
        if on_batch:
            on_batch(list(range(len(prompts))), results)
        return results

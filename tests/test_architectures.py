"""Every common decoder architecture, end to end: `wmss run` with K = 1 on a tiny random model of each
(SFT, entropy, selection, WD-JT, final checkpoint reloaded and generating), and the fused loss head
against the naive one (or, for models whose logits are post-processed, the documented fallback)."""

import pytest
import torch
import transformers
from transformers import AutoModelForCausalLM

from tests.conftest import arithmetic_rows
from tests.test_pipeline import _config
from wmss.config import DataConfig
from wmss.data import CompletionCollator, tokenize_examples
from wmss.heads import fused_head_unsupported
from wmss.pipeline import run_pipeline
from wmss.trainers import WeakStrongPair

SMALL = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
             num_key_value_heads=2, max_position_embeddings=256)  # fmt: skip
ARCHITECTURES = {
    "llama": ("LlamaConfig", SMALL),
    "qwen2": ("Qwen2Config", SMALL),
    "qwen3": ("Qwen3Config", {**SMALL, "head_dim": 8}),
    "mistral": ("MistralConfig", SMALL),
    "gemma2": ("Gemma2Config", {**SMALL, "head_dim": 8, "final_logit_softcapping": 30.0}),
    "gemma3": ("Gemma3TextConfig", {**SMALL, "head_dim": 8}),
    "phi3": ("Phi3Config", SMALL),
    "gpt_neox": ("GPTNeoXConfig", {**SMALL, "tie_word_embeddings": False}),
    "gpt2": ("GPT2Config", {"n_embd": 32, "n_layer": 2, "n_head": 4, "n_positions": 256}),
}
POST_PROCESSED = {"gemma2"}
"""Architectures whose logits are soft-capped after the head: the fused head falls back to the naive one."""
TESTED = sorted(ARCHITECTURES)


def tiny(arch, tokenizer, seed=0):
    name, values = ARCHITECTURES[arch]
    config = getattr(transformers, name)(vocab_size=len(tokenizer), **values)
    for key in ("pad_token_id", "bos_token_id", "eos_token_id"):
        setattr(config, key, tokenizer.pad_token_id if key == "pad_token_id" else tokenizer.eos_token_id)
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(config)
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    return model


@pytest.mark.parametrize("arch", TESTED)
def test_wmss_run_end_to_end(tmp_path, tokenizer, train_file, arch):
    base = tmp_path / "base"
    tiny(arch, tokenizer).save_pretrained(base)
    tokenizer.save_pretrained(base)
    manifest = run_pipeline(_config(base, train_file, tmp_path / "run"))
    phases = manifest["phases"]
    assert [k for k in phases] == ["M0", "sft", "entropy-M0", "entropy-M1", "selection-1", "wdjt-1", "final"]
    assert all(p["status"] == "done" for p in phases.values()) and phases["wdjt-1"]["steps"] > 0
    final = AutoModelForCausalLM.from_pretrained(tmp_path / "run" / "final")
    assert type(final).__name__ == type(tiny(arch, tokenizer)).__name__
    ids = tokenizer("Tom has 3 apples.", return_tensors="pt").input_ids
    assert final.generate(ids, max_new_tokens=4, do_sample=False).shape[1] > ids.shape[1]


@pytest.mark.parametrize("arch", TESTED)
def test_fused_wdjt_loss_and_gradients_equal_naive(tokenizer, arch):
    weak, strong = tiny(arch, tokenizer, seed=1), tiny(arch, tokenizer, seed=2)
    assert (fused_head_unsupported(strong) is not None) == (arch in POST_PROCESSED)
    dataset, _ = tokenize_examples(arithmetic_rows(3), tokenizer, DataConfig(prompt_template="{question}",
                                   completion_template="{answer}"), 96)  # fmt: skip
    batch = CompletionCollator(tokenizer.pad_token_id)([dataset[i] for i in range(3)])
    batch = {k: batch[k] for k in ("input_ids", "attention_mask", "labels")}
    results = []
    for fused in (True, False):
        pair = WeakStrongPair(weak, strong, 0.4, fused_loss=fused).eval()  # no dropout (GPT-2 has some)
        assert pair.fused_loss == (fused and arch not in POST_PROCESSED)
        pair.zero_grad()
        loss = pair(**batch)["loss"]
        loss.backward()
        results.append((loss.detach(), [p.grad.clone() for p in pair.parameters() if p.grad is not None]))
    (fused_loss, fused_grads), (naive_loss, naive_grads) = results
    torch.testing.assert_close(fused_loss, naive_loss, rtol=1e-5, atol=1e-6)
    for a, b in zip(fused_grads, naive_grads, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-6)

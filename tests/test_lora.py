"""LoRA (``peft.enabled``): two adapters on one frozen base train exactly like the merged pair, a LoRA
run resumes to the same adapter, and every training method runs with it."""

import pytest
import torch
from peft import PeftModel
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM

from tests.conftest import arithmetic_rows
from tests.test_pipeline import InterruptAfterSave, _config
from wmss.config import DataConfig, PEFTConfig
from wmss.data import CompletionCollator, tokenize_examples
from wmss.lora import attach, is_adapter, merged_model, trainable_pair
from wmss.models import load_model
from wmss.pipeline import run_pipeline
from wmss.run_report import write_run_report
from wmss.trainers import WeakStrongPair

LORA = PEFTConfig(enabled=True, r=4, alpha=8.0, dropout=0.0)


def _adapter(base_dir, tokenizer, out, seed):
    """An adapter on the tiny base with random A and B (B = 0 would make it the base itself)."""
    model = attach(load_model(str(base_dir)), str(base_dir), LORA, seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.05, generator=torch.Generator().manual_seed(seed + hash(name) % 1000))
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    return out


@pytest.mark.parametrize("fused", [True, False])
def test_lora_pair_has_the_loss_and_adapter_gradients_of_the_merged_pair(
    tmp_path, tokenizer, tiny_model_dir, fused
):
    weak_dir = _adapter(tiny_model_dir, tokenizer, tmp_path / "weak", seed=1)
    strong_dir = _adapter(tiny_model_dir, tokenizer, tmp_path / "strong", seed=2)
    weak, strong = trainable_pair(str(weak_dir), str(strong_dir), LORA, seed=0)
    q_weak = weak.get_base_model().model.layers[0].self_attn.q_proj.base_layer.weight
    q_strong = strong.get_base_model().model.layers[0].self_attn.q_proj.base_layer.weight
    assert q_weak.data_ptr() == q_strong.data_ptr() and not q_strong.requires_grad  # one frozen base

    cfg = DataConfig(prompt_template="{question}", completion_template="{answer}")
    dataset, _ = tokenize_examples(arithmetic_rows(4), tokenizer, cfg, 96)
    batch = CompletionCollator(tokenizer.pad_token_id)([dataset[i] for i in range(4)])
    batch = {k: batch[k] for k in ("input_ids", "attention_mask", "labels")}
    loss = WeakStrongPair(weak, strong, 0.3, fused_loss=fused)(**batch)["loss"]
    loss.backward()

    merged_weak, merged_strong = (
        merged_model(weak_dir).requires_grad_(True),
        merged_model(strong_dir).requires_grad_(True),
    )
    reference = WeakStrongPair(merged_weak, merged_strong, 0.3, fused_loss=fused)(**batch)["loss"]
    reference.backward()
    torch.testing.assert_close(loss, reference, rtol=1e-5, atol=1e-6)

    scale = LORA.alpha / LORA.r
    checked = 0
    for branch, merged in ((weak, merged_weak), (strong, merged_strong)):
        for name, module in branch.get_base_model().named_modules():
            if not hasattr(module, "lora_A"):
                continue
            a, b = module.lora_A["default"].weight, module.lora_B["default"].weight
            w_grad = merged.get_submodule(name).weight.grad  # dL/dW of the merged W = W0 + s·B·A
            torch.testing.assert_close(b.grad, scale * w_grad @ a.detach().T, rtol=1e-4, atol=1e-7)
            torch.testing.assert_close(a.grad, scale * b.detach().T @ w_grad, rtol=1e-4, atol=1e-7)
            checked += 1
    assert checked == 2 * 2 * 7  # 2 branches × 2 layers × (q, k, v, o, gate, up, down)


def test_lora_run_resumes_to_the_same_adapter_and_publishes_a_merged_model(
    tmp_path, tiny_model_dir, train_file
):
    lora = ["peft.enabled=true", "peft.r=4", "peft.dropout=0.1"]
    reference = tmp_path / "reference"
    run_pipeline(_config(tiny_model_dir, train_file, reference, *lora))
    out = tmp_path / "interrupted"
    cfg = _config(tiny_model_dir, train_file, out, *lora)
    with pytest.raises(KeyboardInterrupt):
        run_pipeline(cfg, callbacks=[InterruptAfterSave("sft", 2)])
    with pytest.raises(KeyboardInterrupt):
        run_pipeline(cfg, callbacks=[InterruptAfterSave("wdjt-1", 2)])
    manifest = run_pipeline(cfg)
    assert manifest["phases"]["wdjt-1"]["attempts"] == 2 and manifest["phases"]["final"]["merged_adapter"]
    for model in ("M1", "M2"):
        assert is_adapter(out / "models" / model)
        a = load_file(str(reference / "models" / model / "adapter_model.safetensors"))
        b = load_file(str(out / "models" / model / "adapter_model.safetensors"))
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a), model
    # the adapter loads with peft on the base; final/ is a standard checkpoint, the same model merged
    adapter = PeftModel.from_pretrained(
        AutoModelForCausalLM.from_pretrained(tiny_model_dir), out / "models" / "M2"
    )
    final = AutoModelForCausalLM.from_pretrained(out / "final")
    assert not (out / "final" / "adapter_config.json").exists()
    ids = torch.tensor([[5, 6, 7, 8, 9]])
    with torch.no_grad():
        torch.testing.assert_close(
            final(ids).logits, adapter.eval()(input_ids=ids).logits, rtol=1e-4, atol=1e-5
        )
    assert final.generate(ids, max_new_tokens=3, do_sample=False).shape == (1, 8)
    # the run report, with the logit statistics of the adapter chain (M0, M1, M2)
    page = write_run_report(out, compute_logits=True).read_text()
    assert 'id="wdjt-1"' in page and "target logit z[y]" in page


@pytest.mark.parametrize("method", ["sft", "neftune", "undial", "spin", "dpo"])
def test_every_training_method_runs_with_lora(tmp_path, tiny_model_dir, train_file, method):
    extra = [
        "peft.enabled=true",
        "peft.r=4",
        f"method={method}",
        "data.answer_field=final",
        "dpo.max_new_tokens=8",
    ]
    manifest = run_pipeline(_config(tiny_model_dir, train_file, tmp_path / "run", *extra))
    trained = [k for k, v in manifest["phases"].items() if v.get("steps")]
    assert trained and manifest["phases"]["final"]["merged_adapter"]
    last = manifest["phases"]["final"]["from"]
    assert is_adapter(last)
    base = load_model(str(tiny_model_dir)).state_dict()
    final = load_model(str(tmp_path / "run" / "final")).state_dict()
    assert final.keys() == base.keys() and any(not torch.equal(final[k], base[k]) for k in base)

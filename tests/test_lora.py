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


@pytest.mark.parametrize("dtype", ["bfloat16", "float16"])
def test_merged_model_is_in_the_asked_dtype_with_the_update_rounded_once(
    tmp_path, tokenizer, tiny_model_dir, dtype
):
    adapter = _adapter(tiny_model_dir, tokenizer, tmp_path / "adapter", seed=3)
    want = getattr(torch, dtype)
    merged = merged_model(adapter, dtype)
    assert {p.dtype for p in merged.parameters()} == {want}
    assert merged_model(adapter).dtype == torch.float32  # the default is as before

    base = load_model(str(tiny_model_dir), dtype)  # the base the adapter trains on in this dtype
    lora = PeftModel.from_pretrained(load_model(str(tiny_model_dir)), str(adapter))
    scale = LORA.alpha / LORA.r
    checked = 0
    for name, module in lora.get_base_model().named_modules():
        if not hasattr(module, "lora_A"):
            continue
        a, b = module.lora_A["default"].weight, module.lora_B["default"].weight
        expected = (base.get_submodule(name).weight.float() + (b @ a) * scale).to(want)
        assert torch.equal(merged.get_submodule(name).weight, expected), name
        checked += 1
    assert checked == 2 * 7
    assert torch.equal(merged.model.embed_tokens.weight, base.model.embed_tokens.weight)


@pytest.mark.parametrize("torch_dtype", ["float32", "bfloat16"])
def test_final_of_a_lora_run_is_saved_in_model_args_torch_dtype(
    tmp_path, tokenizer, tiny_model_dir, train_file, torch_dtype
):
    from wmss.pipeline import phase_final
    from wmss.rundir import RunDir

    adapter = _adapter(tiny_model_dir, tokenizer, tmp_path / "adapter", seed=4)
    out = tmp_path / "run"
    cfg = _config(
        tiny_model_dir, train_file, out, "peft.enabled=true", f"model_args.torch_dtype={torch_dtype}"
    )
    run = RunDir(cfg)
    try:
        record = phase_final(run, adapter, out / "final")
    finally:
        run.release()
    assert record["merged_adapter"]
    saved = load_file(str(out / "final" / "model.safetensors"))
    assert {t.dtype for t in saved.values()} == {getattr(torch, torch_dtype)}
    reloaded = AutoModelForCausalLM.from_pretrained(out / "final", dtype="auto")
    assert reloaded.dtype == getattr(torch, torch_dtype)
    for name, value in merged_model(adapter, torch_dtype).state_dict().items():
        assert torch.equal(reloaded.state_dict()[name], value), name

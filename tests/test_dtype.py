"""``model_args`` (weights' dtype, attention implementation) and bfloat16 end to end on the CPU.

Tolerances, bfloat16 against float32 (measured on the tiny model; bfloat16 keeps 8 bits of mantissa,
a relative rounding of 2^-8 ≈ 4e-3 per operation):
- fused loss head with bfloat16 weights vs the float32 oracle on the same weights: loss 1e-3 relative
  (measured 2e-6), gradients 2e-2 in relative Frobenius norm (measured 7e-3), and the tied head's
  gradient no further from float32 than the naive bfloat16 head's (x1.5);
- ``wmss run`` with ``train.bf16`` (autocast) or bfloat16 weights: every logged training loss (SFT, 6
  steps; WD-JT, 4) within 5e-3 relative of the float32 run's (measured: 2e-5 autocast, 7e-4 bfloat16
  weights; the tiny model's losses are ~6 nats); with ``train.padding_free``, within 1e-5.
"""

import copy
import json

import pytest
import torch

from tests.conftest import build_model
from tests.test_padding_free import _batches
from tests.test_pipeline import _config
from wmss.config import load_config
from wmss.errors import ConfigError, ModelError
from wmss.models import load_model
from wmss.pipeline import run_pipeline
from wmss.trainers import WeakStrongPair


def test_default_loading_is_todays(tiny_model_dir):
    from transformers import AutoModelForCausalLM

    before = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32)  # what load_model did
    now = load_model(str(tiny_model_dir), **load_config(None, []).model_args.load_kwargs())
    assert (
        now.dtype == torch.float32 and now.config._attn_implementation == before.config._attn_implementation
    )
    assert now.config._attn_implementation == "sdpa"


@pytest.mark.parametrize("dtype", ["bfloat16", "float16", "auto"])
def test_dtype_and_eager_attention_reach_the_loaded_model(tiny_model_dir, dtype):
    model = load_model(str(tiny_model_dir), dtype, "eager")
    assert model.dtype == (torch.float32 if dtype == "auto" else getattr(torch, dtype))  # saved in float32
    assert model.config._attn_implementation == "eager"


def test_flash_attention_without_its_package_or_gpu_is_a_clear_error(tiny_model_dir):
    if torch.cuda.is_available():
        pytest.skip("a GPU machine may have flash-attn")
    with pytest.raises(ModelError, match="flash_attention_2, but there is no CUDA GPU"):
        load_model(str(tiny_model_dir), "bfloat16", "flash_attention_2")


@pytest.mark.parametrize("override,match", [
    ("model_args.torch_dtype=float64", "model_args.torch_dtype must be one of"),
    ("model_args.attn_implementation=flash", "model_args.attn_implementation must be one of"),
])  # fmt: skip
def test_model_args_config_errors(override, match):
    with pytest.raises(ConfigError, match=match):
        load_config(None, [override])


def _relative_error(actual, expected):
    return float((actual.double() - expected.double()).norm() / expected.double().norm())


@pytest.mark.parametrize("padding_free", [False, True])
def test_fused_head_in_bfloat16_is_close_to_float32(tokenizer, padding_free):
    """WD-JT's pair with bfloat16 weights: the fused head (chunks of logits in bfloat16, float32
    accumulation) against the float32 naive oracle on the same weights, beside the naive bfloat16 head."""
    padded, flat = _batches(tokenizer)
    batch = flat if padding_free else padded
    weak, strong = build_model(len(tokenizer), seed=1), build_model(len(tokenizer), seed=2)
    # weights that bfloat16 holds exactly, so that only the computation's rounding differs
    for p in [*weak.parameters(), *strong.parameters()]:
        p.data = p.data.bfloat16().float()

    def run(dtype, fused):
        pair = WeakStrongPair(
            copy.deepcopy(weak).to(dtype), copy.deepcopy(strong).to(dtype), 0.4, fused_loss=fused
        )
        loss = pair.eval()(**batch)["loss"]
        loss.backward()
        return loss.detach(), {n: p.grad.float() for n, p in pair.named_parameters()}

    oracle, oracle_grads = run(torch.float32, fused=False)
    for fused in (True, False):
        loss, grads = run(torch.bfloat16, fused)
        assert loss.dtype == torch.float32
        assert _relative_error(loss, oracle) < 1e-3
        errors = {n: _relative_error(g, oracle_grads[n]) for n, g in grads.items()}
        assert max(errors.values()) < 2e-2, max(errors.items(), key=lambda kv: kv[1])
        print(
            "fused" if fused else "naive", f"loss {_relative_error(loss, oracle):.2e}", max(errors.values())
        )
        if fused:
            fused_errors = errors
    naive_errors = errors
    for name in ("strong.model.embed_tokens.weight", "weak.model.embed_tokens.weight"):  # = lm_head (tied)
        assert fused_errors[name] <= 1.5 * naive_errors[name] + 1e-3, (
            name,
            fused_errors[name],
            naive_errors[name],
        )


def _training_losses(out):
    losses = {}
    for phase in ("sft", "wdjt-1"):
        losses[phase] = [
            r["loss"] for r in json.loads((out / "logs" / f"{phase}.json").read_text()) if "loss" in r
        ]
    return losses


@pytest.fixture(scope="module")
def float32_run(tmp_path_factory, tiny_model_dir):
    from tests.conftest import arithmetic_rows, write_jsonl

    root = tmp_path_factory.mktemp("fp32")
    train_file = write_jsonl(root / "train.jsonl", arithmetic_rows(24))
    out = root / "run"
    run_pipeline(_config(tiny_model_dir, train_file, out))
    return train_file, _training_losses(out)


@pytest.mark.parametrize("overrides,tolerance", [
    (["train.bf16=true"], 5e-3),
    (["model_args.torch_dtype=bfloat16"], 5e-3),
    (["train.padding_free=true"], 1e-5),
])  # fmt: skip
def test_bfloat16_and_padding_free_runs_end_to_end_stay_close_to_float32(
    tmp_path, tiny_model_dir, float32_run, overrides, tolerance, caplog
):
    caplog.set_level("INFO", logger="wmss")
    train_file, expected = float32_run
    out = tmp_path / "run"
    manifest = run_pipeline(_config(tiny_model_dir, train_file, out, *overrides))
    assert all(p["status"] == "done" for p in manifest["phases"].values())
    losses = _training_losses(out)
    for phase, values in expected.items():
        assert len(losses[phase]) == len(values) >= 3
        assert losses[phase] == pytest.approx(values, rel=tolerance), phase
    weights = json.loads((out / "final" / "config.json").read_text())["dtype"]
    assert weights == ("bfloat16" if "model_args.torch_dtype=bfloat16" in overrides else "float32")
    flattened = [p for p in ("entropy M0", "entropy M1", "CompletionTrainer", "JointTrainer")
                 if f"{p}: padding-free batches" in caplog.text]  # fmt: skip
    assert len(flattened) == (4 if "train.padding_free=true" in overrides else 0), flattened

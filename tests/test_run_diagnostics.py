"""Diagnostics of a whole run on a tiny model: automatic λ, the separation check, `wmss diagnose logits`,
`wmss pick-weak`, `wmss report` (a self-contained HTML page) and TensorBoard logs."""

import base64
import json
import logging
import re
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
import yaml
from transformers.integrations import is_tensorboard_available

from tests.conftest import arithmetic_rows, write_jsonl
from wmss.cli import main
from wmss.config import load_config
from wmss.data import load_training_data
from wmss.diagnostics import crossover_lambda, diagnostic_sample, measure_auto_lambda
from wmss.entropy import read_entropy_file
from wmss.errors import ConfigError
from wmss.io import read_json, read_jsonl
from wmss.models import load_model, load_tokenizer
from wmss.pipeline import run_pipeline
from wmss.rundir import RunDir
from wmss.selection import select_for_config

REPO = Path(__file__).resolve().parents[1]


def _overrides(model_dir, train_file, out, *extra):
    return [
        f"model={model_dir}",
        f"data.path={train_file}",
        f"output_dir={out}",
        "data.prompt_template={question}",
        "data.completion_template={answer}",
        "train.learning_rate=1e-2",
        "train.per_device_batch_size=4",
        "train.max_length=96",
        "train.save_steps=100",
        "train.logging_steps=1",
        *extra,
    ]


@pytest.fixture(scope="module")
def data_file(tmp_path_factory):
    return write_jsonl(tmp_path_factory.mktemp("data") / "train.jsonl", arithmetic_rows(24))


@pytest.fixture(scope="module")
def auto_run(tmp_path_factory, tiny_model_dir, data_file):
    """A finished run with mix_lambda=auto, 2 SFT epochs and an evaluation."""
    out = tmp_path_factory.mktemp("runs") / "auto"
    overrides = _overrides(
        tiny_model_dir,
        data_file,
        out,
        "sft.epochs=2",
        "wmss.mix_lambda=auto",
        f"eval.path={data_file}",
        "eval.answer_field=final",
        "eval.max_new_tokens=8",
    )
    cfg = load_config(None, overrides)
    run_pipeline(cfg)
    return out, cfg


def test_auto_lambda_is_the_crossover_of_the_measured_norms(auto_run, tiny_model_dir):
    out, cfg = auto_run
    entry = read_json(out / "manifest.json")["phases"]["wdjt-1"]
    auto = entry["mix_lambda_auto"]
    assert 0.0 < entry["mix_lambda"] < 1.0 and entry["mix_lambda"] == auto["mix_lambda"]
    assert auto["examples"] == 24 and auto["positions"] > 24
    expected = crossover_lambda(auto["strong_centred_norm"], auto["weak_centred_norm"])
    assert auto["mix_lambda"] == pytest.approx(expected["mix_lambda"])
    # measured on M0 (weak) and M1 (strong), before WD-JT changed them
    tokenizer = load_tokenizer(str(tiny_model_dir))
    dataset, _ = load_training_data(cfg.data, tokenizer, cfg.train.max_length)
    again = measure_auto_lambda(
        load_model(str(tiny_model_dir)),
        load_model(str(out / "models" / "M1")),
        diagnostic_sample(dataset, cfg),
        tokenizer.pad_token_id,
    )
    assert again["mix_lambda"] == pytest.approx(entry["mix_lambda"], rel=1e-5)
    # SFT made the strong logits larger than the weak ones, so the strong branch gets λ < 0.5
    assert auto["strong_centred_norm"] > auto["weak_centred_norm"] and entry["mix_lambda"] < 0.5


def test_auto_lambda_config_round_trips_and_the_run_resumes(auto_run):
    out, cfg = auto_run
    saved = yaml.safe_load((out / "config.yaml").read_text())
    assert saved["wmss"]["mix_lambda"] == "auto"
    reloaded = load_config(out / "config.yaml")
    assert reloaded.to_dict() == cfg.to_dict()
    manifest = run_pipeline(reloaded)  # every phase done: nothing runs again
    assert all(p["attempts"] == 1 for p in manifest["phases"].values())


def test_selection_phase_records_the_separation_without_changing_selection(auto_run):
    out, cfg = auto_run
    entry = read_json(out / "manifest.json")["phases"]["selection-1"]
    rows = read_jsonl(out / "selection-1.jsonl")
    delta = np.array([r["entropy_strong"] - r["entropy_weak"] for r in rows])
    gap = entry["entropy_gap"]
    assert gap["mean"] == pytest.approx(entry["mean_entropy_gap"]) == pytest.approx(delta.mean())
    assert gap["quantiles"]["q50"] == pytest.approx(np.median(delta))
    assert gap["share_negative"] == pytest.approx((delta < 0).mean())
    assert gap["too_close"] is False and entry["separation_warning"] is None  # SFT moved M1 well away
    _, h_weak = read_entropy_file(out / "entropy" / "M0.jsonl")
    _, h_strong = read_entropy_file(out / "entropy" / "M1.jsonl")
    selection = select_for_config(h_weak, h_strong, cfg, seed=cfg.seed + 1)
    assert [r["draws"] for r in rows] == selection.draws.tolist()


def test_a_pair_too_close_is_warned_about(tmp_path, tiny_model_dir, data_file, caplog):
    """M1 = M0 (sft.checkpoint is the base model): ΔH = 0 for every example."""
    cfg = load_config(
        None,
        _overrides(
            tiny_model_dir, data_file, tmp_path / "run", f"sft.checkpoint={tiny_model_dir}", "wmss.epochs=0.5"
        ),
    )
    with caplog.at_level(logging.WARNING, logger="wmss"):
        manifest = run_pipeline(cfg)
    entry = manifest["phases"]["selection-1"]
    assert entry["entropy_gap"]["mean"] == 0.0 and entry["entropy_gap"]["too_close"] is True
    assert "mean ΔH = H_strong − H_weak = +0.0000 nats over 24 examples" in entry["separation_warning"]
    assert any("barely separated" in r.getMessage() for r in caplog.records)


def test_resume_accepts_a_manifest_from_before_new_config_keys(tmp_path):
    common = [f"output_dir={tmp_path / 'run'}", "wmss.mix_lambda=auto"]
    cfg = load_config(None, common)
    RunDir(cfg)
    manifest = read_json(tmp_path / "run" / "manifest.json")
    del manifest["result_config"]["wmss.diagnostic_examples"]  # a run made before the key existed
    (tmp_path / "run" / "manifest.json").write_text(json.dumps(manifest))
    RunDir(cfg)  # the missing key counts as its default
    with pytest.raises(ConfigError, match=r"wmss.diagnostic_examples: 200 -> 7"):
        RunDir(load_config(None, [*common, "wmss.diagnostic_examples=7"]))
    RunDir(load_config(None, [*common, "wmss.min_entropy_gap=0.2"]))  # only a warning threshold


def test_the_diagnostic_sample_matters_to_a_run_only_with_automatic_lambda(tmp_path):
    RunDir(load_config(None, [f"output_dir={tmp_path / 'run'}", "wmss.mix_lambda=0.4"]))
    RunDir(
        load_config(
            None, [f"output_dir={tmp_path / 'run'}", "wmss.mix_lambda=0.4", "wmss.diagnostic_examples=7"]
        )
    )


def test_diagnose_logits_of_a_run(auto_run, tiny_model_dir, capsys):
    out, _ = auto_run
    assert main(["diagnose", "logits", "--run", str(out)]) == 0
    assert "| target logit z[y] |" in capsys.readouterr().out
    result = read_json(out / "diagnostics" / "logits.json")
    assert result["paths"] == {
        "weak": str(tiny_model_dir),
        "strong_before": str(out / "models" / "M1"),
        "strong_after": str(out / "models" / "M2"),
    }
    assert result["examples"] == 24 and set(result["models"]) == {"weak", "strong_before", "strong_after"}
    assert set(result["pairs"]) == {"weak vs strong_before", "weak vs strong_after"}
    # same sample, same models: the crossover λ of (weak, strong before) is the λ the run used
    used = read_json(out / "manifest.json")["phases"]["wdjt-1"]["mix_lambda"]
    assert result["crossover"]["weak vs strong_before"]["mix_lambda"] == pytest.approx(used, rel=1e-5)
    # after SFT the strong model is more certain of the targets than the random base model
    weak, before = result["models"]["weak"], result["models"]["strong_before"]
    assert before["target_background_gap"] > weak["target_background_gap"]
    assert before["entropy"] < weak["entropy"]
    md = (out / "diagnostics" / "logits.md").read_text()
    assert "| pair statistic |" in md and "Theorem 1" in md
    assert main(["diagnose", "logits", "--run", str(out), "wmss.diagnostic_examples=5", "--output",
                 str(out / "diag5")]) == 0  # fmt: skip
    assert read_json(out / "diag5" / "logits.json")["examples"] == 5


def test_pick_weak_ranks_candidates_by_separation(auto_run, tiny_model_dir, tmp_path, capsys):
    out, cfg = auto_run
    m1 = str(out / "models" / "M1")
    overrides = _overrides(tiny_model_dir, cfg.data.path, tmp_path / "unused")
    args = ["pick-weak", *overrides, "--strong", m1, "--weak", m1, "--weak", str(tiny_model_dir)]
    assert main([*args, "--output", str(tmp_path / "pick.json")]) == 0
    printed = capsys.readouterr().out
    assert "| rank | weak |" in printed and "too close" in printed
    result = read_json(tmp_path / "pick.json")
    first, second = result["candidates"]
    assert (
        first["weak"] == str(tiny_model_dir) and first["rank"] == 1 and not first["separation"]["too_close"]
    )
    assert second["weak"] == m1 and second["separation"]["mean"] == 0.0 and second["separation"]["too_close"]
    selection = read_json(out / "manifest.json")["phases"]["selection-1"]
    assert first["separation"]["mean"] == pytest.approx(selection["mean_entropy_gap"], rel=1e-5)


def test_report_is_one_self_contained_page(auto_run, capsys):
    out, _ = auto_run
    assert main(["report", str(out), "--logits"]) == 0
    assert "report:" in capsys.readouterr().out
    page = (out / "report" / "report.html").read_text()
    sources = re.findall(r'\bsrc="([^"]*)"', page)
    links = re.findall(r'\bhref="([^"]*)"', page)
    assert sources and all(s.startswith("data:image/png;base64,") for s in sources)
    assert links and all(h.startswith("#") for h in links)
    assert "<link" not in page and "<script" not in page and "url(" not in page and "@import" not in page
    for anchor in (
        "overview",
        "configuration",
        "timings",
        "losses",
        "selection-1",
        "wdjt-1",
        "logits",
        "evaluation",
    ):
        assert f'id="{anchor}"' in page and f'href="#{anchor}"' in page
    # every figure embedded is also saved beside the page, byte for byte
    files = sorted((out / "report").glob("*.png"))
    assert {f.name for f in files} == {
        "timings.png",
        "losses.png",
        "selection-1-entropies.png",
        "wdjt-1-gradients.png",
        "logits.png",
    }
    embedded = {base64.b64decode(s.split(",", 1)[1]) for s in sources}
    assert embedded == {f.read_bytes() for f in files}
    # the ten highest-weight examples, as text joined by idx
    rows = sorted(read_jsonl(out / "selection-1.jsonl"), key=lambda r: -r["weight"])[:10]
    by_idx = {i: r for i, r in enumerate(arithmetic_rows(24))}
    for r in rows:
        assert by_idx[r["idx"]]["answer"] in page
    assert "λ = 1/(1+√a)" in page
    grads = read_json(out / "manifest.json")["phases"]["wdjt-1"]["gradients"]
    assert 0 < grads["clip_factor"] <= 1 and 0 < grads["strong_grad_share"] < 1
    assert "clip factor (mean; 1 = not clipped)" in page and f"{grads['grad_norm_weak']:.4f}"[:5] in page
    assert "accuracy" in page and "target logit z[y]" in page and "Theorem 1" in page


def test_report_without_logit_statistics_says_how_to_get_them(tmp_path, auto_run):
    out, _ = auto_run
    copy = tmp_path / "copy"
    shutil.copytree(out, copy, ignore=shutil.ignore_patterns("models", "final", "diagnostics", "report"))
    path = main(["report", str(copy), "--output", str(tmp_path / "page")])
    assert path == 0
    page = (tmp_path / "page" / "report.html").read_text()
    assert "Not computed for this run: `wmss diagnose logits --run" in page


@pytest.mark.parametrize(
    "make,message",
    [
        (lambda p: p / "nothing", "does not exist"),
        (lambda p: p, "has no manifest.json, so it is not a wmss run directory"),
    ],
)
def test_report_of_something_else_is_a_clear_error(tmp_path, make, message, capsys):
    assert main(["report", str(make(tmp_path))]) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err


def test_diagnose_logits_needs_models(capsys):
    assert main(["diagnose", "logits", "--weak", "x"]) == 2
    assert "without --run, give --weak" in capsys.readouterr().err


@pytest.mark.skipif(shutil.which("chromium") is None, reason="needs Chromium (apt-get install chromium)")
def test_screenshot_script_renders_the_report(auto_run, tmp_path):
    out, _ = auto_run
    if not (out / "report" / "report.html").is_file():
        main(["report", str(out)])
    shot = tmp_path / "report.png"
    env = {"PATH": "/usr/bin:/bin", "HEIGHT": "1200"}
    subprocess.run([REPO / "scripts" / "screenshot_report.sh", out, shot], check=True, env=env)
    assert shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and shot.stat().st_size > 20_000


@pytest.mark.skipif(not is_tensorboard_available(), reason="needs tensorboard (pip install tensorboard)")
def test_tensorboard_event_files_outlive_the_checkpoints(tmp_path, tiny_model_dir, data_file):
    out = tmp_path / "run"
    run_pipeline(load_config(None, _overrides(tiny_model_dir, data_file, out, "train.report_to=tensorboard")))
    for phase in ("sft", "wdjt-1"):
        assert list((out / "tensorboard" / phase).glob("events.out.tfevents.*"))
    assert not (out / "checkpoints").exists()


@pytest.mark.skipif(is_tensorboard_available(), reason="tensorboard is installed")
def test_tensorboard_missing_is_a_clear_error(tmp_path, tiny_model_dir, data_file):
    with pytest.raises(ConfigError, match="pip install tensorboard"):  # when the config is read
        load_config(
            None, _overrides(tiny_model_dir, data_file, tmp_path / "run", "train.report_to=tensorboard")
        )
    assert not (tmp_path / "run").exists()

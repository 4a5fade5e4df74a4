"""What a user can get wrong ends in one `wmss: error: …` (exit 2) that names the key, file or line, before
any work starts and without leaving a run directory behind; faults (a kill, SIGTERM, a full disk, a second
run, a foreign directory) leave nothing lost and nothing that looks finished."""

from __future__ import annotations

import errno
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.conftest import write_jsonl as write_rows
from wmss.cli import main

ROOT = Path(__file__).resolve().parents[1]


def _base(model, data, out):
    return [
        f"model={model}",
        f"data.path={data}",
        "data.prompt_template={question}",
        "data.completion_template={answer}",
        "train.max_length=96",
        "train.per_device_batch_size=4",
        "train.learning_rate=3e-3",
        f"output_dir={out}",
    ]


def _fails(capsys, args, message):
    code = main(args)
    err = capsys.readouterr().err
    assert code == 2, err
    assert message in err, err
    assert "Traceback" not in err and err.count("wmss: error: ") == 1, err  # after a progress bar, if any
    return err


CONFIG_CASES = [
    ("train.learning_rate=.nan", "train.learning_rate must be a finite number"),
    ("train.learning_rate=-1e-5", "train.learning_rate must be > 0"),
    ("train.lr_scheduler_type=cosinus", "'cosinus' is not a scheduler transformers knows"),
    ("train.warmup_ratio=1.5", "train.warmup_ratio must lie in [0, 1)"),
    ("train.save_steps=0", "train.save_steps must be >= 1"),
    ("train.per_device_batch_size=0", "train.per_device_batch_size must be >= 1"),
    ("wmss.entropy_batch_size=0", "wmss.entropy_batch_size must be >= 1"),
    ("wmss.mix_lambda=2", "wmss.mix_lambda must lie in [0, 1]"),
    ("wmss.mix_lambda=half", "wmss.mix_lambda must be a number in [0, 1] or 'auto'"),
    ("wmss.lr_schedule=global", "wmss.lr_schedule must be one of per_phase, whole_run"),
    ("wmss.strong_lr_scale=0", "wmss.strong_lr_scale must be > 0"),
    ("wmss.mix_lambda_end=1.5", "wmss.mix_lambda_end must lie in [0, 1]"),
    ("wmss.selection=best", "wmss.selection must be one of"),
    ("peft.r=0", "peft.r must be >= 1"),
    ("peft.dropout=1.0", "peft.dropout must lie in [0, 1)"),
    ("method=ppo", "method must be one of"),
    ("wmss.mixlambda=0.5", "Did you mean 'wmss.mix_lambda'"),
    ("train.learning_rate=fast", "'train.learning_rate' must be float"),
    ("eval.num_samples=4", "needs eval.temperature > 0"),
    # round 2: ±inf and NaN wherever an out-of-range number is refused, and ranges that were unchecked
    ("wmss.learning_rate=.inf", "wmss.learning_rate must be a finite number; got inf"),
    ("wmss.strong_lr_scale=.inf", "wmss.strong_lr_scale must be a finite number; got inf"),
    ("sft.epochs=.nan", "sft.epochs must be a finite number; got nan"),
    ("wmss.epochs=.nan", "wmss.epochs must be a finite number; got nan"),
    ("wmss.sample_multiplier=.inf", "wmss.sample_multiplier must be a finite number"),
    ("wmss.alpha=.nan", "wmss.alpha must be a finite number"),
    ("eval.temperature=.nan", "eval.temperature must be a finite number"),
    ("train.max_grad_norm=-.inf", "train.max_grad_norm must be a finite number"),
    ("seed=-1", "seed must lie in [0, 2**32 - 1]"),
    (f"seed={2**33}", "seed must lie in [0, 2**32 - 1]"),
    ("data.limit=-1", "data.limit must be >= 1"),
    ("eval.temperature=-1", "eval.temperature must be >= 0"),
    ("eval.max_new_tokens=0", "eval.max_new_tokens must be >= 1"),
    ("eval.max_new_tokens=-5", "eval.max_new_tokens must be >= 1"),
    ("eval.limit=-1", "eval.limit must be >= 1"),
    ("eval.prompt_template={question", "eval.prompt_template '{question' is not a valid format string"),
    ("eval.prompt_template=Q: {}", "it has a positional field {}"),
    ("eval.prompt_template={problem}", "it names the field {problem}, which is not one of question"),
]


@pytest.mark.parametrize("override,message", CONFIG_CASES)
def test_bad_config_values_stop_before_any_work(
    tmp_path, capsys, tiny_model_dir, train_file, override, message
):
    out = tmp_path / "out"
    _fails(capsys, ["run", *_base(tiny_model_dir, train_file, out), override], message)
    assert not out.exists()


@pytest.mark.parametrize(
    "content,message",
    [
        ("model: [unclosed", "is not valid YAML"),
        ("- just\n- a list\n", "the top level must be a mapping"),
        ("train: 3\n", "'train' is a section"),
        (
            "seed: 1\ntrain:\n  learning_rate: 1.0e-5\n  learning_rate: 2.0e-5\n",
            "line 4 is not valid YAML: the key 'learning_rate' is given twice (lines 3 and 4)",
        ),
    ],
)
def test_bad_config_files(tmp_path, capsys, content, message):
    config = tmp_path / "cfg.yaml"
    config.write_text(content)
    _fails(capsys, ["run", str(config)], message)
    _fails(capsys, ["run", str(tmp_path / "missing.yaml")], "missing.yaml does not exist")


def test_a_study_file_with_a_key_given_twice_is_refused(tmp_path, capsys):
    study = tmp_path / "study.yaml"
    study.write_text("name: s\nseeds: [1]\nseeds: [2]\n")
    _fails(capsys, ["study", "report", str(study)], "the key 'seeds' is given twice (lines 2 and 3)")


DATA_CASES = [
    ('{"question": 5, "answer": "1"}\n', "prompt", "line 1"),
    ('{"prompt": 7, "completion": "x"}\n', "raw", "the prompt must be text"),
    ('{"prompt": "q", "completion": 3}\n', "raw", "the completion must be text"),
    ('{"question": "q", "answer": ""}\n', "prompt", "the completion is empty"),
    ('{"question": "q"}\n', "prompt", "refers to the column 'answer'"),
    ('{"question": "q", "answer": "a"}\n{"question": "q", "answer"\n', "prompt", "line 2: not valid JSON"),
    ("[1, 2]\n", "prompt", "expected a JSON object"),
]


@pytest.mark.parametrize("text,layout,message", DATA_CASES)
def test_bad_training_rows_are_named(tmp_path, capsys, tiny_model_dir, text, layout, message):
    data = tmp_path / "train.jsonl"
    data.write_text(text)
    out = tmp_path / "out"
    args = _base(tiny_model_dir, data, out)
    if layout == "raw":
        args = [a for a in args if not a.startswith(("data.prompt_template", "data.completion_template"))]
    if message == "line 1":  # a number where the template expects text is formatted, so it is fine
        assert main(["config", *args]) == 0
        return
    _fails(capsys, ["run", *args], message)
    assert not out.exists()


def test_a_file_that_is_not_utf8(tmp_path, capsys, tiny_model_dir):
    data = tmp_path / "train.jsonl"
    data.write_bytes('{"question": "caf\xe9", "answer": "1"}\n'.encode("latin-1"))
    _fails(capsys, ["run", *_base(tiny_model_dir, data, tmp_path / "out")], "line 1: not UTF-8 text")
    data = tmp_path / "train.json"
    data.write_bytes('[{"question": "caf\xe9", "answer": "1"}]'.encode("latin-1"))
    _fails(capsys, ["run", *_base(tiny_model_dir, data, tmp_path / "out")], "is not UTF-8 text (byte")


def test_output_dir_that_is_a_file_or_cannot_be_made(tmp_path, capsys, tiny_model_dir, train_file):
    target = tmp_path / "a-file"
    target.write_text("keep me")
    _fails(capsys, ["run", *_base(tiny_model_dir, train_file, target)], "is a file, not a directory")
    assert target.read_text() == "keep me"
    _fails(
        capsys,
        ["run", *_base(tiny_model_dir, train_file, "/proc/wmss-test/run")],
        "cannot write to output_dir",
    )


def test_a_foreign_directory_is_refused_unless_allowed(tmp_path, capsys, tiny_model_dir, train_file):
    foreign = tmp_path / "mine"
    (foreign / "final").mkdir(parents=True)
    (foreign / "final" / "notes.txt").write_text("precious")
    args = [*_base(tiny_model_dir, train_file, foreign), "wmss.iterations=0", "sft.epochs=1"]
    _fails(capsys, ["run", *args], "already holds files that wmss did not write")
    assert (foreign / "final" / "notes.txt").read_text() == "precious"
    assert sorted(p.name for p in foreign.iterdir()) == ["final"]
    assert main(["run", *args, "allow_existing_output=true"]) == 0
    assert (foreign / "manifest.json").is_file() and (foreign / ".wmss-run").is_file()


def test_a_second_run_in_the_same_directory_is_refused_and_a_dead_lock_recovered(
    tmp_path, capsys, tiny_model_dir, train_file
):
    out = tmp_path / "out"
    out.mkdir()
    (out / ".wmss-run").write_text("{}")
    holder = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        (out / ".wmss-lock").write_text(
            json.dumps({"pid": holder.pid, "host": os.uname().nodename, "since": "x"})
        )
        args = [*_base(tiny_model_dir, train_file, out), "wmss.iterations=0", "sft.epochs=1"]
        _fails(capsys, ["run", *args], f"is in use by another wmss run (pid {holder.pid}")
    finally:
        holder.kill()
        holder.wait()
    assert main(["run", *args]) == 0  # the holder has ended: its lock is taken over
    assert not (out / ".wmss-lock").exists()  # and given back at the end


def test_phase_commands_refuse_to_resume_another_setting(tmp_path, capsys, tiny_model_dir, train_file):
    base = _base(tiny_model_dir, train_file, tmp_path / "unused")
    assert main(["sft", *base, "--output", str(tmp_path / "sft")]) == 0
    capsys.readouterr()
    before = (tmp_path / "sft" / "model" / "model.safetensors").read_bytes()
    _fails(capsys, ["sft", *base, "train.learning_rate=1e-2", "--output", str(tmp_path / "sft")],
           "different configuration (train.learning_rate: 0.003 -> 0.01)")  # fmt: skip
    assert (tmp_path / "sft" / "model" / "model.safetensors").read_bytes() == before


def test_training_data_edited_between_a_kill_and_the_rerun(tmp_path, capsys, tiny_model_dir, train_file):
    out = tmp_path / "out"
    args = [*_base(tiny_model_dir, train_file, out), "wmss.iterations=0", "sft.epochs=1"]
    assert main(["run", *args]) == 0
    capsys.readouterr()
    rows = train_file.read_text().splitlines()
    train_file.write_text("\n".join(rows[1:] + rows[:1]) + "\n")  # same path, other contents
    _fails(capsys, ["run", *args], f"data: {train_file.resolve()} has changed since")


def test_a_damaged_manifest(tmp_path, capsys, tiny_model_dir, train_file):
    out = tmp_path / "out"
    args = [*_base(tiny_model_dir, train_file, out), "wmss.iterations=0", "sft.epochs=1"]
    assert main(["run", *args]) == 0
    capsys.readouterr()
    (out / "manifest.json").write_text('{"phases": ')
    _fails(capsys, ["run", *args], "manifest.json is damaged")


def test_missing_or_malformed_entropy_and_selection_files(tmp_path, capsys, tiny_model_dir, train_file):
    base = _base(tiny_model_dir, train_file, tmp_path / "unused")
    good = tmp_path / "h.jsonl"
    good.write_text("".join(json.dumps({"idx": i, "entropy": 1.0}) + "\n" for i in range(24)))
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"idx": 0, "ent": 1}\n')
    select = ["select", *base, "--output", str(tmp_path / "sel.jsonl")]
    _fails(capsys, [*select, "--weak", str(tmp_path / "none.jsonl"), "--strong", str(good)], "does not exist")
    _fails(capsys, [*select, "--weak", str(bad), "--strong", str(good)], "is not an entropy file")
    joint = ["joint", *base, "--weak", str(tiny_model_dir), "--strong", str(tiny_model_dir)]
    _fails(capsys, [*joint, "--selection", str(tmp_path / "none.jsonl"), "--output", str(tmp_path / "j1")],
           "selection file")  # fmt: skip
    _fails(
        capsys, [*joint, "--selection", str(bad), "--output", str(tmp_path / "j2")], "is not a selection file"
    )


def test_a_full_disk_is_reported_as_such(tmp_path, capsys, tiny_model_dir, train_file, monkeypatch):
    import wmss.rundir

    def full(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device", str(tmp_path / "out" / "manifest.json"))

    monkeypatch.setattr(wmss.rundir, "atomic_write_json", full)
    args = [*_base(tiny_model_dir, train_file, tmp_path / "out"), "wmss.iterations=0"]
    err = _fails(capsys, ["run", *args], "no space left on the device while writing")
    assert "re-run the same command to resume" in err


def test_sigterm_stops_a_run_like_ctrl_c_and_it_resumes(tmp_path, tiny_model_dir, train_file):
    out = tmp_path / "out"
    args = [
        *_base(tiny_model_dir, train_file, out),
        "sft.epochs=30",
        "wmss.iterations=0",
        "train.save_steps=5",
    ]
    process = subprocess.Popen([sys.executable, "-m", "wmss", "run", *args], cwd=ROOT, stderr=subprocess.PIPE,
                               stdout=subprocess.DEVNULL, text=True)  # fmt: skip
    deadline = time.time() + 120
    while not list((out / "checkpoints" / "sft").glob("checkpoint-*")) and time.time() < deadline:
        time.sleep(0.2)
    process.send_signal(signal.SIGTERM)
    _, err = process.communicate(timeout=120)
    assert process.returncode == 130, err
    assert "interrupted. Re-run the same command to resume" in err and "Traceback" not in err
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["phases"]["sft"]["status"] == "running" and not (out / ".wmss-lock").exists()
    assert main(["run", *args]) == 0
    assert json.loads((out / "manifest.json").read_text())["phases"]["sft"]["attempts"] == 2


def _mawps_file(path, answers):
    rows = [{"original_text": f"Tom has {i} apples and buys 2 more .", "equation": "x=1+1", "ans": a}
            for i, a in enumerate(answers)]  # fmt: skip
    path.write_text(json.dumps(rows))
    return path


def test_missing_and_unparsable_golds_are_counted_apart_and_said(tmp_path, capsys, caplog, tiny_model_dir):
    task = _mawps_file(tmp_path / "test.json", [3, None, "?", 5])
    args = ["eval", "eval.max_new_tokens=4", "--model", f"m={tiny_model_dir}", "--task", f"mawps={task}"]
    assert main([*args, "--output", str(tmp_path / "a")]) == 0
    summary = json.loads((tmp_path / "a" / "m" / "mawps" / "predictions.jsonl").read_text().splitlines()[1])
    assert summary["gold"] == "" and summary["missing_gold"] is True  # never the text "None"
    assert "1 of 4 problems have no gold answer and 1 one that cannot be read" in caplog.text
    assert "graded as wrong (eval.exclude_bad_golds=true" in caplog.text
    results = json.loads((tmp_path / "a" / "summary.json").read_text())
    assert '"num_missing_gold": 1' in json.dumps(results) and '"num_unparsable_gold": 1' in json.dumps(
        results
    )
    assert main([*args, "eval.exclude_bad_golds=true", "--output", str(tmp_path / "b")]) == 0
    assert "left out of the accuracy" in caplog.text


def test_an_interrupted_evaluation_resumed_with_another_model_starts_afresh(tmp_path, tokenizer, monkeypatch):
    from tests.conftest import build_model
    from wmss.evaluation import evaluate as evaluate_module

    other = tmp_path / "other"
    build_model(len(tokenizer), seed=9).save_pretrained(other)
    tokenizer.save_pretrained(other)
    task = _mawps_file(tmp_path / "test.json", [1, 2, 3, 4])
    common = ["eval", "eval.max_new_tokens=4", "eval.batch_size=2", "--task", f"mawps={task}"]
    real = evaluate_module.generate

    def stop_after_one_batch(*args, on_batch=None, **kwargs):
        def save(batch, generations):
            on_batch(batch, generations)
            raise KeyboardInterrupt

        return real(*args, on_batch=save, **kwargs)

    first = tmp_path / "first"
    build_model(len(tokenizer), seed=3).save_pretrained(tmp_path / "first-model")
    tokenizer.save_pretrained(tmp_path / "first-model")
    monkeypatch.setattr(evaluate_module, "generate", stop_after_one_batch)
    assert main([*common, "--model", f"m={tmp_path / 'first-model'}", "--output", str(first)]) == 130
    partial = first / "m" / "mawps" / ".predictions.partial.jsonl"
    assert len(partial.read_text().splitlines()) == 3  # settings + one batch of two problems
    monkeypatch.undo()
    assert main([*common, "--model", f"m={other}", "--output", str(first)]) == 0  # same name, other model
    assert main([*common, "--model", f"m={other}", "--output", str(tmp_path / "clean")]) == 0
    resumed = (first / "m" / "mawps" / "predictions.jsonl").read_text()
    assert resumed == (tmp_path / "clean" / "m" / "mawps" / "predictions.jsonl").read_text()


def test_evaluation_inputs_are_checked_before_training(tmp_path, capsys, tiny_model_dir, train_file):
    out = tmp_path / "out"
    args = [*_base(tiny_model_dir, train_file, out), f"eval.path={tmp_path / 'no-such-test.jsonl'}"]
    _fails(capsys, ["run", *args], "no-such-test.jsonl does not exist")
    assert not out.exists()
    _fails(capsys, ["run", *_base(tiny_model_dir, train_file, out), "eval.task=gsm9k"], "gsm9k")


def test_checkpoints_by_default_about_four_per_phase(tmp_path, tiny_model_dir, train_file):
    from transformers import TrainerCallback

    from wmss.config import load_config
    from wmss.pipeline import run_pipeline

    saved = []

    class Saves(TrainerCallback):
        def on_save(self, args, state, control, **kwargs):
            saved.append(state.global_step)

    cfg = load_config(None, [*_base(tiny_model_dir, train_file, tmp_path / "out"), "wmss.iterations=0",
                             "sft.epochs=2"])  # fmt: skip
    assert cfg.train.save_steps is None
    run_pipeline(cfg, callbacks=[Saves()])
    assert saved == [3, 6, 9, 12]  # 12 steps (24 rows / 4, two epochs): a quarter of them apart


@pytest.mark.parametrize("phase", ["entropy", "eval"])
def test_a_kill_in_the_entropy_pass_or_the_evaluation_resumes_to_the_same_result(
    tmp_path, tiny_model_dir, train_file, monkeypatch, phase
):
    from wmss import entropy as entropy_module
    from wmss.config import load_config
    from wmss.evaluation import evaluate as evaluate_module
    from wmss.pipeline import run_pipeline

    extra = ["wmss.entropy_batch_size=4", f"eval.path={train_file}", "eval.answer_field=final",
             "eval.max_new_tokens=4", "eval.batch_size=8"]  # fmt: skip
    reference = run_pipeline(
        load_config(None, [*_base(tiny_model_dir, train_file, tmp_path / "ref"), *extra])
    )
    cfg = load_config(None, [*_base(tiny_model_dir, train_file, tmp_path / "run"), *extra])
    module, name = (
        (entropy_module, "chunked_sequence_entropy") if phase == "entropy" else (evaluate_module, "generate")
    )
    real, calls = getattr(module, name), []

    def dies_later(*args, **kwargs):
        calls.append(1)
        if len(calls) == (9 if phase == "entropy" else 1):  # entropy: M0's 6 batches, then M1's third
            if phase == "eval":
                on_batch = kwargs.pop("on_batch")

                def save(batch, generations):
                    on_batch(batch, generations)
                    raise KeyboardInterrupt

                return real(*args, on_batch=save, **kwargs)
            raise KeyboardInterrupt
        return real(*args, **kwargs)

    monkeypatch.setattr(module, name, dies_later)
    with pytest.raises(KeyboardInterrupt):
        run_pipeline(cfg)
    monkeypatch.undo()
    manifest = run_pipeline(cfg)
    killed = "entropy-M1" if phase == "entropy" else "eval"
    assert manifest["phases"][killed]["attempts"] == 2
    out, ref = tmp_path / "run", tmp_path / "ref"
    assert (out / "entropy" / "M1.jsonl").read_text() == (ref / "entropy" / "M1.jsonl").read_text()
    assert (out / "final" / "model.safetensors").read_bytes() == (
        ref / "final" / "model.safetensors"
    ).read_bytes()
    assert manifest["phases"]["eval"]["num_correct"] == reference["phases"]["eval"]["num_correct"]
    drop = ("wall_time_s",)
    mine = [
        {k: v for k, v in r.items() if k not in drop}
        for r in map(json.loads, (out / "eval" / "predictions.jsonl").read_text().splitlines())
    ]
    theirs = [
        {k: v for k, v in r.items() if k not in drop}
        for r in map(json.loads, (ref / "eval" / "predictions.jsonl").read_text().splitlines())
    ]
    assert mine == theirs


def test_a_finished_evaluation_is_redone_only_when_its_settings_changed(tmp_path, tiny_model_dir, train_file):
    """A key added to the eval section since a run was evaluated counts as its default (upgrading wmss does
    not re-evaluate finished runs); a changed key re-evaluates."""
    from wmss.config import load_config
    from wmss.pipeline import run_pipeline

    task = _mawps_file(tmp_path / "test.json", [1, 2, 3])
    out = tmp_path / "out"
    args = [*_base(tiny_model_dir, train_file, out), "wmss.iterations=0", "eval.task=mawps",
            f"eval.path={task}", "eval.max_new_tokens=4"]  # fmt: skip
    run_pipeline(load_config(None, args))
    manifest_path = out / "manifest.json"
    manifest = json.loads(manifest_path.read_text())
    assert manifest["phases"]["eval"]["attempts"] == 1
    del manifest["phases"]["eval"]["eval_config"]["exclude_bad_golds"]  # as written before the key existed
    manifest_path.write_text(json.dumps(manifest))
    run_pipeline(load_config(None, args))
    assert json.loads(manifest_path.read_text())["phases"]["eval"]["attempts"] == 1  # not evaluated again
    run_pipeline(load_config(None, [*args, "eval.exclude_bad_golds=true"]))
    assert json.loads(manifest_path.read_text())["phases"]["eval"]["attempts"] == 2
    run_pipeline(load_config(None, [*args, "eval.exclude_bad_golds=true", "eval.max_new_tokens=6"]))
    evaluated = json.loads(manifest_path.read_text())["phases"]["eval"]
    assert evaluated["attempts"] == 3 and evaluated["eval_config"]["max_new_tokens"] == 6


# ---------------------------------------------------------------- round 2 (issue 26)


def _nan_model(path, tokenizer, where="model.embed_tokens.weight"):
    import torch

    from tests.conftest import build_model

    model = build_model(len(tokenizer))
    with torch.no_grad():
        model.get_parameter(where).fill_(float("nan"))
    model.save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


def test_a_base_model_with_nan_weights_stops_sft_at_step_1(tmp_path, capsys, tokenizer, train_file):
    out = tmp_path / "out"
    base = _nan_model(tmp_path / "nan-model", tokenizer)
    args = [*_base(base, train_file, out), "wmss.iterations=0", "sft.epochs=1"]
    err = _fails(capsys, ["run", *args], "sft: the training loss is nan at optimizer step 1 of 6")
    assert "lower the learning rate" in err
    assert not (out / "final").exists() and not (out / "models" / "M1").exists()
    assert json.loads((out / "manifest.json").read_text())["phases"]["sft"]["status"] == "running"
    assert not (out / ".wmss-lock").exists()


def test_a_diverging_wdjt_stops_naming_the_phase_and_step(tmp_path, capsys, tiny_model_dir, train_file):
    out = tmp_path / "out"
    args = [*_base(tiny_model_dir, train_file, out), "sft.epochs=1", "wmss.learning_rate=1e30",
            "wmss.selection=all"]  # fmt: skip
    err = _fails(capsys, ["run", *args], "wdjt-1: the training ")
    assert re.search(r"wdjt-1: the training (loss|gradient norm) is (nan|inf) at optimizer step \d of 6", err)
    assert (out / "models" / "M1" / "model.safetensors").is_file()  # SFT was fine and is kept
    assert not (out / "models" / "M2").exists() and not (out / "final").exists()
    phases = json.loads((out / "manifest.json").read_text())["phases"]
    assert phases["sft"]["status"] == "done" and phases["wdjt-1"]["status"] == "running"


def test_nothing_non_finite_is_ever_published(tmp_path, tokenizer, tiny_model_dir):
    import torch

    from tests.conftest import build_model
    from wmss.errors import ModelError
    from wmss.models import nonfinite_weight, save_model

    model = build_model(len(tokenizer))
    with torch.no_grad():
        model.get_parameter("model.norm.weight")[3] = float("inf")
    with pytest.raises(ModelError, match="its weight 'model.norm.weight' holds NaN or infinite values"):
        save_model(model, tokenizer, tmp_path / "M1")
    assert not (tmp_path / "M1").exists() and list(tmp_path.iterdir()) == []
    assert (
        nonfinite_weight(_nan_model(tmp_path / "nan", tokenizer))
        == "model.safetensors: model.embed_tokens.weight"
    )
    assert nonfinite_weight(tiny_model_dir) is None


def test_a_non_finite_checkpoint_is_not_published_as_final(tmp_path, capsys, tokenizer, train_file):
    out = tmp_path / "out"
    given = _nan_model(tmp_path / "given-m1", tokenizer, "model.layers.1.mlp.up_proj.weight")
    args = [*_base(given, train_file, out), "method=sft", "sft.epochs=1", f"sft.checkpoint={given}"]
    _fails(capsys, ["run", *args], "final: the model to publish")
    assert not (out / "final").exists()


def test_an_alias_bomb_is_quoted_in_a_line(tmp_path, capsys):
    nested = ["&l0 [lol, lol, lol, lol, lol, lol, lol, lol, lol]"]
    nested += [f"&l{i} [{', '.join([f'*l{i - 1}'] * 9)}]" for i in range(1, 9)]
    config = tmp_path / "bomb.yaml"
    config.write_text(f"model: [{', '.join(nested)}]\n")  # 9**9 leaves in under 500 bytes
    assert len(config.read_bytes()) < 500
    err = _fails(capsys, ["run", str(config)], "'model' must be str; got [[")
    assert len(err) < 400


def _task_file(file, **keys):
    import yaml

    file.write_text(yaml.safe_dump({"question_field": "question", "answer_field": "final", **keys}))
    return file


def test_names_that_would_escape_or_nest_the_output_are_refused(tmp_path, capsys, tiny_model_dir, train_file):
    out = tmp_path / "deep" / "out"
    task = _task_file(tmp_path / "t.yaml", name="../../x", path=str(train_file))
    eval_ = ["eval", "eval.max_new_tokens=2", "--output", str(out)]
    _fails(capsys, [*eval_, "--model", f"m={tiny_model_dir}", "--task", str(task)],
           f"task file {task}: name '../../x' cannot be used")  # fmt: skip
    ok = _task_file(tmp_path / "ok.yaml", name="ok", path=str(train_file))
    for name in ("../../y", "a/b", "..", ""):
        _fails(capsys, [*eval_, "--model", f"{name}={tiny_model_dir}", "--task", str(ok)],
               f"--model name '{name}' cannot be used")  # fmt: skip
    same = _task_file(tmp_path / "same.yaml", name="ok", path=str(train_file))
    _fails(capsys, [*eval_, "--model", f"m={tiny_model_dir}", "--task", str(ok), "--task", str(same)],
           f"two tasks are named 'ok' ({ok} and {same})")  # fmt: skip
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ok.yaml", "same.yaml", "t.yaml", "train.jsonl"]


@pytest.mark.parametrize(
    "text,message",
    [
        ("name: t\nmax_new_tokens: lots\n", "max_new_tokens must be a whole number >= 1; got 'lots'"),
        ("name: t\nmax_new_tokens: 0\n", "max_new_tokens must be a whole number >= 1; got 0"),
        ("name: t\nanswer_field: a\nanswer_field: b\n", "line 3 is not valid YAML: the key 'answer_field' is "
         "given twice (lines 2 and 3)"),
        ("name: t\nquestion_template: '{question'\n", "question_template is not a valid format string"),
        ("name: [t]\n", "name must be text; got ['t']"),
        ("- name\n", "the top level must be a mapping"),
    ],
)  # fmt: skip
def test_a_bad_task_file_fails_before_any_model_is_loaded(tmp_path, capsys, tiny_model_dir, text, message):
    task = tmp_path / "t.yaml"
    task.write_text(text)
    out = tmp_path / "out"
    _fails(
        capsys, ["eval", "--model", f"m={tiny_model_dir}", "--task", str(task), "--output", str(out)], message
    )
    assert not out.exists()


def _parquet(path, rows):
    import pyarrow as pa
    import pyarrow.parquet as pq

    pq.write_table(pa.table({"question": [r[0] for r in rows], "answer": [r[1] for r in rows]}), path)
    return path


TRAINING_ROW_CASES = [
    ('{"question": "q", "answer": "1", "uid": 1}\n{"question": "q", "answer": "2"}\n', ["data.id_field=uid"],
     "row 2: data.id_field 'uid' is not a column of this row"),
    ('{"question": "q", "answer": "1", "uid": [1, 2]}\n', ["data.id_field=uid"],
     "row 1: data.id_field 'uid' must be a whole number or a text; got list [1, 2]"),
    ('{"question": "q", "answer": "1", "uid": 1}\n{"question": "q", "answer": "2", "uid": "b"}\n',
     ["data.id_field=uid"], "data.id_field 'uid' mixes whole numbers and texts"),
    ('{"question": "q\\ud800", "answer": "1"}\n', [], "row 1: the prompt holds a lone surrogate"),
    ('{"question": "q", "answer": "x\\udc00y"}\n', [], "row 1: the completion holds a lone surrogate"),
]  # fmt: skip


@pytest.mark.parametrize("text,extra,message", TRAINING_ROW_CASES)
def test_bad_ids_and_text_stop_before_any_work(tmp_path, capsys, tiny_model_dir, text, extra, message):
    data = tmp_path / "train.jsonl"
    data.write_text(text)
    out = tmp_path / "out"
    _fails(capsys, ["run", *_base(tiny_model_dir, data, out), *extra], message)
    assert not out.exists()


def test_an_empty_or_damaged_parquet_file(tmp_path, capsys, tiny_model_dir):
    out = tmp_path / "out"
    empty = _parquet(tmp_path / "empty.parquet", [])
    _fails(capsys, ["run", *_base(tiny_model_dir, empty, out)], f"{empty} has no rows")
    damaged = tmp_path / "damaged.parquet"
    damaged.write_bytes(_parquet(tmp_path / "good.parquet", [("q", "a")] * 50).read_bytes()[:300])
    _fails(
        capsys, ["run", *_base(tiny_model_dir, damaged, out)], f"{damaged} cannot be read as a Parquet file"
    )
    assert not out.exists()


def test_models_that_do_not_fit_the_tokenizer_or_each_other_fail_at_startup(
    tmp_path, capsys, tokenizer, tiny_model_dir, train_file
):
    from tests.conftest import build_model

    out = tmp_path / "out"
    small = tmp_path / "small"
    build_model(40).save_pretrained(small)
    tokenizer.save_pretrained(small)
    _fails(
        capsys,
        ["run", *_base(small, train_file, out)],
        "but the model " + str(small) + " has only 40 embeddings",
    )
    other = tmp_path / "other-vocab"
    build_model(len(tokenizer) + 16).save_pretrained(other)
    tokenizer.save_pretrained(other)
    _fails(capsys, ["run", *_base(tiny_model_dir, train_file, out), f"wmss.weak={other}"],
           f"the weak model ({other}) has a vocabulary of {len(tokenizer) + 16} logits")  # fmt: skip
    assert not out.exists()


def _one_epoch(model, data, out):
    return [*_base(model, data, out), "wmss.iterations=0", "sft.epochs=1"]


def test_a_deleted_final_is_published_again_and_evaluated_again(
    tmp_path, capsys, caplog, tiny_model_dir, train_file
):
    out = tmp_path / "out"
    task = _mawps_file(tmp_path / "test.json", [1, 2])
    args = [*_one_epoch(tiny_model_dir, train_file, out), "eval.task=mawps", f"eval.path={task}",
            "eval.max_new_tokens=2"]  # fmt: skip
    assert main(["run", *args]) == 0
    before = (out / "final" / "model.safetensors").read_bytes()
    shutil.rmtree(out / "final")
    assert main(["run", *args]) == 0
    assert "phase final: was done, but its output final is missing" in caplog.text
    assert (out / "final" / "model.safetensors").read_bytes() == before
    phases = json.loads((out / "manifest.json").read_text())["phases"]
    assert (
        phases["final"]["attempts"] == 2
        and phases["eval"]["attempts"] == 2
        and phases["sft"]["attempts"] == 1
    )


def test_a_model_deleted_between_phases_is_said_and_recomputed(
    tmp_path, capsys, caplog, tiny_model_dir, train_file, monkeypatch
):
    import wmss.pipeline

    out = tmp_path / "out"
    args = [*_base(tiny_model_dir, train_file, out), "sft.epochs=1", "wmss.selection=all", "data.limit=8"]

    def killed(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(wmss.pipeline, "phase_joint_training", killed)
    assert main(["run", *args]) == 130
    monkeypatch.undo()
    m1 = (out / "models" / "M1" / "model.safetensors").read_bytes()
    shutil.rmtree(out / "models" / "M1")
    assert main(["run", *args]) == 0
    assert "phase sft: was done, but its output models/M1 is missing" in caplog.text
    assert (out / "models" / "M1" / "model.safetensors").read_bytes() == m1  # the same M1, recomputed
    assert (out / "final" / "model.safetensors").is_file()


def test_a_model_that_failed_to_load_can_be_repaired_and_the_run_resumed(
    tmp_path, capsys, tiny_model_dir, train_file
):
    model = tmp_path / "model"
    shutil.copytree(tiny_model_dir, model)
    weights = (model / "model.safetensors").read_bytes()
    (model / "model.safetensors").write_bytes(weights[:500])
    out = tmp_path / "out"
    _fails(capsys, ["run", *_one_epoch(model, train_file, out)], f"could not load the model '{model}'")
    (model / "model.safetensors").write_bytes(weights)
    assert main(["run", *_one_epoch(model, train_file, out)]) == 0
    assert (out / "final" / "model.safetensors").is_file()


def test_a_lock_whose_pid_another_process_now_has_is_taken_over(tmp_path, capsys, tiny_model_dir, train_file):
    out = tmp_path / "out"
    out.mkdir()
    (out / ".wmss-run").write_text("{}")
    (out / ".wmss-lock").write_text(
        json.dumps({"pid": 1, "host": os.uname().nodename, "since": "x", "started": -1})
    )  # pid 1 is alive, but it started at another time than the lock's holder
    assert main(["run", *_one_epoch(tiny_model_dir, train_file, out)]) == 0
    assert not (out / ".wmss-lock").exists()


def test_a_dangling_symlink_as_output_dir(tmp_path, capsys, tiny_model_dir, train_file):
    link = tmp_path / "link"
    link.symlink_to(tmp_path / "gone")
    _fails(capsys, ["run", *_one_epoch(tiny_model_dir, train_file, link)],
           f"output_dir {link} is a symbolic link to {tmp_path / 'gone'}, which does not exist")  # fmt: skip
    assert not (tmp_path / "gone").exists()


def test_litter_of_interrupted_writes_is_cleaned(tmp_path, capsys, tiny_model_dir, train_file):
    out = tmp_path / "out"
    args = _one_epoch(tiny_model_dir, train_file, out)
    assert main(["run", *args]) == 0
    (out / ".final.tmp-3999999").mkdir()
    (out / ".final.tmp-3999999" / "model.safetensors").write_bytes(b"half")
    (out / "models" / ".M1.tmp-3999998").mkdir()
    (out / ".manifest.json.tmp-3999997").write_text("{")
    (out / "logs" / ".sft.json.tmp-3999996").write_text("[")
    assert main(["run", *args]) == 0
    assert not list(out.rglob("*.tmp-*"))
    evaluated = tmp_path / "evaluated"
    (evaluated / "m" / "mawps").mkdir(parents=True)
    (evaluated / ".summary.json.tmp-3999999").write_text("{")
    (evaluated / "m" / "mawps" / ".predictions.jsonl.tmp-3999998").write_text("{")
    (evaluated / f".summary.md.tmp-{os.getppid()}").write_text("|")  # its process is alive: kept
    task = _mawps_file(tmp_path / "test.json", [1])
    assert main(["eval", "eval.max_new_tokens=2", "--model", f"m={tiny_model_dir}", "--task", f"mawps={task}",
                 "--output", str(evaluated)]) == 0  # fmt: skip
    assert [p.name for p in evaluated.rglob("*.tmp-*")] == [f".summary.md.tmp-{os.getppid()}"]


def test_unwritable_places_and_a_full_disk_inside_a_library(
    tmp_path, capsys, tiny_model_dir, train_file, monkeypatch
):
    from safetensors import SafetensorError
    from transformers import PreTrainedModel

    import wmss.rundir

    out = tmp_path / "out"

    def denied(path, *args, **kwargs):
        raise PermissionError(errno.EACCES, "Permission denied", str(path))

    monkeypatch.setattr(wmss.rundir, "atomic_write_text", denied)
    err = _fails(capsys, ["run", *_one_epoch(tiny_model_dir, train_file, out)],
                 f"Permission denied ({out / 'config.yaml'}). Make that path readable")  # fmt: skip
    assert "the output directory writable" in err and not (out / ".wmss-lock").exists()
    monkeypatch.undo()

    def full(self, *args, **kwargs):
        raise SafetensorError(
            'Error while serializing: IoError(Os { code: 28, kind: StorageFull, message: "No space left" })'
        )

    monkeypatch.setattr(PreTrainedModel, "save_pretrained", full)
    err = _fails(capsys, ["run", *_one_epoch(tiny_model_dir, train_file, out)], "no space left on the device")
    assert "re-run the same command to resume" in err and not list(out.rglob("*.tmp-*"))


def test_tampered_manifest_values_and_model_names_are_escaped(tmp_path):
    from wmss.evaluation.report import compare, markdown
    from wmss.run_report import _evaluation

    attack = "<script>alert(1)</script>"
    tampered = {"status": "done", "accuracy": attack, "num_correct": attack, "num_problems": "<b>3</b>",
                "task": "t", "pass_at_k": {"1": attack}}  # fmt: skip
    manifest = {"phases": {"eval": tampered}}
    page = _evaluation(tmp_path, manifest)
    assert (
        "<script>" not in page and "<b>3</b>" not in page and "&lt;script&gt;alert(1)&lt;/script&gt;" in page
    )
    summary = {"accuracy": 0.5, "num_problems": 2, "pass_at_k": None, "per_problem": [1.0, 0.0]}
    name = "<img src=x onerror=alert(1)>"
    text = markdown(compare({name: {"t<i>": summary}, "base": {"t<i>": summary}}, baseline="base"))
    assert "<img" not in text and "<i>" not in text and "&lt;img src=x onerror=alert(1)&gt;" in text


def test_an_interrupted_eval_keeps_the_evaluations_that_had_finished(tmp_path, tokenizer, monkeypatch):
    from tests.conftest import build_model
    from wmss.evaluation import evaluate as evaluate_module

    for name, seed in (("a", 1), ("b", 2)):
        build_model(len(tokenizer), seed=seed).save_pretrained(tmp_path / name)
        tokenizer.save_pretrained(tmp_path / name)
    task = _mawps_file(tmp_path / "test.json", [1, 2, 3, 4])
    models = ["--model", f"a={tmp_path / 'a'}", "--model", f"b={tmp_path / 'b'}"]
    args = ["eval", "eval.max_new_tokens=3", "eval.batch_size=2", "--task", f"mawps={task}", *models,
            "--output", str(tmp_path / "out")]  # fmt: skip
    real, calls = evaluate_module.generate, []

    def counted(*args, **kwargs):
        calls.append(len(args[2]))  # the prompts still to generate
        if len(calls) == 2:  # model b: interrupted
            raise KeyboardInterrupt
        return real(*args, **kwargs)

    monkeypatch.setattr(evaluate_module, "generate", counted)
    assert main(args) == 130
    first = (tmp_path / "out" / "a" / "mawps" / "predictions.jsonl").read_text()
    calls.clear()
    assert main(args) == 0
    assert calls == [4]  # only model b generates; a's finished evaluation is read back
    assert (tmp_path / "out" / "a" / "mawps" / "predictions.jsonl").read_text() == first
    summary = json.loads((tmp_path / "out" / "summary.json").read_text())
    assert summary["results"]["a"]["mawps"]["num_problems"] == 4


def test_a_full_disk_that_torch_reports_as_a_failed_write(
    tmp_path, capsys, tiny_model_dir, train_file, monkeypatch
):
    import shutil as shutil_module
    from collections import namedtuple

    from transformers import Trainer

    def failed(self, *args, **kwargs):
        raise RuntimeError(
            "[enforce fail at inline_container.cc:664] . PytorchStreamWriter failed writing file"
        )

    monkeypatch.setattr(Trainer, "train", failed)
    out = tmp_path / "out"
    with pytest.raises(RuntimeError, match="PytorchStreamWriter"):  # a bug, unless the disk is full
        main(["run", *_one_epoch(tiny_model_dir, train_file, out)])
    usage = namedtuple("usage", "total used free")
    monkeypatch.setattr(shutil_module, "disk_usage", lambda path: usage(1 << 30, 1 << 30, 4096))
    err = _fails(capsys, ["run", *_one_epoch(tiny_model_dir, train_file, out)], "no space left on the device")
    assert f"while writing {out / 'checkpoints' / 'sft'}" in err


def test_evaluation_ids_that_collide_as_text_are_renumbered(tmp_path):
    from wmss.evaluation.tasks import generic_task, load_task

    rows = [{"id": 1, "question": "a", "answer": "1"}, {"id": "1", "question": "b", "answer": "2"},
            {"id": [3], "question": "c", "answer": "3"}]  # fmt: skip
    data = load_task(generic_task(), str(write_rows(tmp_path / "t.jsonl", rows)))
    assert [p["id"] for p in data.problems] == [0, 1, 2]  # "1" and 1 would share one prediction

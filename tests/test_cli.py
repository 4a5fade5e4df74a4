"""The command line: help texts, the whole pipeline through `wmss run`, errors without tracebacks."""

import json
import subprocess
import sys

import pytest
import torch

from wmss.cli import main


def test_help_lists_every_phase():
    out = subprocess.run([sys.executable, "-m", "wmss", "--help"], capture_output=True, text=True, check=True)
    for command in (
        "run",
        "sft",
        "entropy",
        "select",
        "joint",
        "eval",
        "demo",
        "config",
        "diagnose",
        "pick-weak",
    ):
        assert command in out.stdout
    for command in (
        "run",
        "sft",
        "entropy",
        "select",
        "joint",
        "eval",
        "demo",
        "diagnose",
        "pick-weak",
        "report",
    ):
        with pytest.raises(SystemExit) as exit_info:
            main([command, "--help"])
        assert exit_info.value.code == 0


def _common(model_dir, train_file, *extra):
    """Overrides shared by the phase-command tests: a tiny model on the arithmetic rows."""
    return [
        f"model={model_dir}",
        f"data.path={train_file}",
        "data.prompt_template={question}",
        "data.completion_template={answer}",
        "train.max_length=96",
        "train.learning_rate=3e-3",
        "train.save_steps=100",
        *extra,
    ]


def test_phase_commands_chain_like_run(tmp_path, tiny_model_dir, train_file, capsys):
    common = _common(tiny_model_dir, train_file)
    assert main(["sft", *common, "--output", str(tmp_path / "sft")]) == 0
    m1 = str(tmp_path / "sft" / "model")
    assert main(["entropy", *common, "--output", str(tmp_path / "h0.jsonl")]) == 0
    assert main(["entropy", *common, "--model", m1, "--output", str(tmp_path / "h1.jsonl")]) == 0
    assert (
        main(
            [
                "select",
                *common,
                "--weak",
                str(tmp_path / "h0.jsonl"),
                "--strong",
                str(tmp_path / "h1.jsonl"),
                "--output",
                str(tmp_path / "sel.jsonl"),
            ]
        )
        == 0
    )
    assert (
        main(
            [
                "joint",
                *common,
                "wmss.mix_lambda=auto",
                "--weak",
                str(tiny_model_dir),
                "--strong",
                m1,
                "--selection",
                str(tmp_path / "sel.jsonl"),
                "--output",
                str(tmp_path / "m2"),
            ]
        )
        == 0
    )
    assert (tmp_path / "m2" / "model" / "config.json").is_file()
    eval_file = tmp_path / "test.jsonl"
    eval_file.write_text(train_file.read_text())
    assert (
        main(
            [
                "eval",
                *common,
                f"eval.path={eval_file}",
                "eval.answer_field=final",
                "eval.max_new_tokens=8",
                "--model",
                str(tiny_model_dir),
                "--model",
                str(tmp_path / "m2" / "model"),
                "--output",
                str(tmp_path / "eval"),
            ]
        )
        == 0
    )
    printed = capsys.readouterr().out
    assert "active set:" in printed and "mix_lambda auto: centred logit norms" in printed
    assert (tmp_path / "eval" / "summary.json").is_file() and (tmp_path / "eval" / "summary.png").is_file()


@pytest.mark.parametrize(
    "args,message",
    [
        (["run", "wmss.mix_lambda=2"], "mix_lambda must lie in [0, 1]"),
        (["run", "wmss.mixlambda=0.5"], "Did you mean 'wmss.mix_lambda'"),
        (["run", "data.path=/no/such.jsonl", "model=/no/such/model"], "does not exist"),
        (["run", "missing.yaml"], "config file missing.yaml does not exist"),
    ],
)
def test_bad_input_is_one_clear_message(args, message, capsys):
    assert main(args) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err


def _weights(path):
    from safetensors.torch import load_file

    return load_file(str(path / "model.safetensors"))


def _same_weights(a, b):
    wa, wb = _weights(a), _weights(b)
    return wa.keys() == wb.keys() and all(torch.equal(wa[k], wb[k]) for k in wa)


@pytest.mark.parametrize("mix_lambda", ["0.5", "1.0"])
def test_phase_commands_and_run_share_one_code_path(tmp_path, tiny_model_dir, train_file, capsys, mix_lambda):
    """`wmss sft` and `wmss joint` on the inputs `wmss run` used give its M1 and M2, bit for bit (λ = 1
    included: both train the strong model alone, without the weak one)."""
    common = _common(
        tiny_model_dir, train_file, "train.per_device_batch_size=4", f"wmss.mix_lambda={mix_lambda}"
    )
    run = tmp_path / "run"
    assert main(["run", *common, f"output_dir={run}"]) == 0
    assert main(["sft", *common, "--output", str(tmp_path / "sft")]) == 0
    assert _same_weights(tmp_path / "sft" / "model", run / "models" / "M1")
    joint = ["joint", *common, "--weak", str(tiny_model_dir), "--strong", str(run / "models" / "M1")]
    selection = ["--selection", str(run / "selection-1.jsonl")]
    assert main([*joint, *selection, "--output", str(tmp_path / "joint")]) == 0
    assert _same_weights(tmp_path / "joint" / "model", run / "models" / "M2")
    record = json.loads((tmp_path / "joint" / "manifest.json").read_text())["phases"]["wdjt-1"]
    in_run = json.loads((run / "manifest.json").read_text())["phases"]["wdjt-1"]
    assert record["examples"] == in_run["examples"]
    assert (record.get("trained_as") == "sft (lambda = 1)") == (mix_lambda == "1.0")
    capsys.readouterr()
    # the same output directory with another strong model: refused, not a silent reuse
    other = ["joint", *common, "--weak", str(tiny_model_dir), "--strong", str(tmp_path / "sft" / "model")]
    assert main([*other, *selection, "--output", str(tmp_path / "joint")]) == 2
    err = capsys.readouterr().err
    assert (
        "made from other inputs (" in err
        and f"strong: {run / 'models' / 'M1'} -> {tmp_path / 'sft' / 'model'}" in err
    )


def test_joint_refuses_a_selection_made_for_other_data(tmp_path, tiny_model_dir, train_file, capsys):
    selection = tmp_path / "sel.jsonl"
    selection.write_text("".join(json.dumps({"idx": i + 100, "draws": 1}) + "\n" for i in range(24)))
    model = str(tiny_model_dir)
    args = ["joint", f"data.path={train_file}", "data.prompt_template={question}",
            "data.completion_template={answer}", "--weak", model, "--strong", model,
            "--selection", str(selection), "--output", str(tmp_path / "out")]  # fmt: skip
    assert main(args) == 2
    err = capsys.readouterr().err
    assert f"{selection} was made for other examples than this data: 24 of its 24" in err
    assert "Traceback" not in err


def test_overrides_may_follow_the_options(tmp_path):
    from wmss.cli import parse_arguments

    args = parse_arguments(
        ["eval", "cfg.yaml", "--model", "m=path", "--task", "t", "eval.limit=20", "--output", "d"]
    )
    assert args.config == ["cfg.yaml", "eval.limit=20"] and args.model == ["m=path"] and args.output == "d"
    args = parse_arguments(["study", "run", "s.yaml", "--arm", "A", "train_size=8"])
    assert args.overrides == ["train_size=8"] and args.arm == ["A"]
    with pytest.raises(SystemExit):
        parse_arguments(["eval", "cfg.yaml", "--model", "m", "--output", "d", "stray"])

"""The command line: help texts, the whole pipeline through `wmss run`, errors without tracebacks."""

import subprocess
import sys

import pytest

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


def test_phase_commands_chain_like_run(tmp_path, tiny_model_dir, train_file, capsys):
    common = [
        f"model={tiny_model_dir}",
        f"data.path={train_file}",
        "data.prompt_template={question}",
        "data.completion_template={answer}",
        "train.max_length=96",
        "train.learning_rate=3e-3",
        "train.save_steps=100",
    ]
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

"""Config loading, overrides and validation errors."""

import pytest

from wmss.config import (
    DataConfig,
    DPOConfig,
    EvalConfig,
    NEFTuneConfig,
    SFTConfig,
    TrainConfig,
    UndialConfig,
    WMSSConfig,
    load_config,
    parse_override,
)
from wmss.errors import ConfigError


def test_defaults_are_the_papers():
    cfg = load_config()
    assert (cfg.wmss.alpha, cfg.wmss.beta, cfg.wmss.gamma, cfg.wmss.mix_lambda) == (0.1, 0.8, 0.1, 0.5)
    assert cfg.wmss.selection == "paper" and cfg.dedup and not cfg.wmss.freeze_weak


def test_file_then_overrides(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("seed: 3\nwmss:\n  mix_lambda: 0.3\ntrain:\n  learning_rate: 2e-5\n")
    cfg = load_config(
        path,
        [
            "wmss.mix_lambda=0.42",
            "data.prompt_template={question}",
            "data.completion_template={answer}",
            "wmss.dedup=false",
        ],
    )
    assert cfg.seed == 3 and cfg.wmss.mix_lambda == 0.42 and cfg.train.learning_rate == 2e-5
    assert cfg.data.prompt_template == "{question}" and cfg.wmss.dedup is False


@pytest.mark.parametrize(
    "override,match",
    [
        ("wmss.mix_lamda=0.3", "Did you mean 'wmss.mix_lambda'"),
        ("wmss.mix_lambda=1.5", r"mix_lambda must lie in \[0, 1\]"),
        ("wmss.mix_lambda=-0.1", r"mix_lambda must lie in \[0, 1\]"),
        ("wmss.mix_lambda=Auto", r"mix_lambda must be a number in \[0, 1\] or 'auto'.*got 'Auto'"),
        ("wmss.mix_lambda=true", "'wmss.mix_lambda' must be float or str"),
        ("wmss.diagnostic_examples=0", "wmss.diagnostic_examples must be >= 1"),
        ("wmss.min_entropy_gap=-1", "wmss.min_entropy_gap must be >= 0"),
        ("wmss.alpha=-1", "wmss.alpha must be >= 0"),
        ("wmss.selection=magic", "wmss.selection must be one of"),
        ("train.per_device_batch_size=two", "must be int"),
        ("seed", "key=value"),
    ],
)
def test_bad_overrides(override, match):
    with pytest.raises(ConfigError, match=match):
        load_config(None, [override])


@pytest.mark.parametrize(
    "section,match",
    [
        (WMSSConfig(mix_lambda=2.0), r"wmss\.mix_lambda must lie in \[0, 1\]"),
        (WMSSConfig(epochs=0.0), r"wmss\.epochs"),
        (DataConfig(overlong="keep"), r"data\.overlong"),
        (TrainConfig(max_length=0), r"train\.max_length must be >= 1"),
        (SFTConfig(epochs=0.0), r"sft\.epochs"),
        (NEFTuneConfig(alpha=0.0), r"neftune\.alpha must be > 0"),
        (UndialConfig(strength=-1.0), r"undial\.strength must be >= 0"),
        (DPOConfig(beta=0.0), r"dpo\.beta"),
        (EvalConfig(backend="tgi"), r"eval\.backend"),
    ],
)
def test_each_section_checks_its_own_keys(section, match):
    with pytest.raises(ConfigError, match=match):
        section.check()
    type(section)().check()  # the defaults pass


def test_method_dependent_keys_are_checked_by_the_run_config():
    DPOConfig(num_samples=1, temperature=0.0).check()  # fine on its own: only method dpo samples
    with pytest.raises(ConfigError, match="num_samples >= 2"):
        load_config(None, ["method=dpo", "data.answer_field=final", "dpo.num_samples=1"])


def test_mix_lambda_auto_or_a_number():
    assert load_config(None, ["wmss.mix_lambda=auto"]).wmss.mix_lambda == "auto"
    assert load_config(None, ["wmss.mix_lambda=0.42"]).wmss.mix_lambda == 0.42
    assert load_config(None, ["wmss.mix_lambda=1"]).wmss.mix_lambda == 1.0


def test_all_coefficients_zero():
    with pytest.raises(ConfigError, match="all 0"):
        load_config(None, ["wmss.alpha=0", "wmss.beta=0", "wmss.gamma=0"])


def test_unknown_key_in_file_names_the_file(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("train:\n  lerning_rate: 1e-5\n")
    with pytest.raises(ConfigError, match=r"c\.yaml: 'train\.lerning_rate' .*'train\.learning_rate'"):
        load_config(path)


def test_missing_and_malformed_files(tmp_path):
    with pytest.raises(ConfigError, match="does not exist"):
        load_config(tmp_path / "nope.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("wmss: [unclosed\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(bad)


def test_parse_override_types():
    assert parse_override("a.b=0.5") == ("a.b", 0.5)
    assert parse_override("a.b=null") == ("a.b", None)
    assert parse_override("a.b={x} and {y}") == ("a.b", "{x} and {y}")

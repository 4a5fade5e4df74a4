"""The baselines (method: sft, neftune, undial, dpo, spin): their losses against hand computations and
the naive oracles, the preference-pair rules on scripted answers, NEFTune's noise measured through the
hook in a real run, and every method end to end through run_pipeline on a tiny model."""

import copy
import json
import math

import pytest
import torch
from torch import nn
from transformers import AutoModelForCausalLM, TrainerCallback

from tests.conftest import arithmetic_rows, build_model, write_jsonl
from wmss.baselines import (
    PreferenceCollator,
    dpo_loss,
    fused_sequence_log_probs,
    fused_undial_loss,
    sequence_log_probs,
    train_undial,
    undial_loss,
    undial_targets,
)
from wmss.config import DataConfig, TrainConfig, load_config
from wmss.data import IGNORE_INDEX, CompletionCollator, tokenize_examples
from wmss.errors import ConfigError
from wmss.io import read_jsonl
from wmss.losses import completion_cross_entropy
from wmss.pipeline import run_pipeline
from wmss.preference import dpo_pairs, pair_dataset, spin_pairs
from wmss.rundir import RunDir
from wmss.trainers import PhaseTraining, train_sft

# ---------------------------------------------------------------- UNDIAL


def test_undial_targets_lower_the_target_logit_before_the_softmax():
    logits = torch.tensor([[2.0, 1.0, 0.0], [1.0, 3.0, 0.0], [1.0, 3.0, 0.0]])
    targets = torch.tensor([0, 1, 1])
    one = undial_targets(logits[:1], targets[:1], 1.0)  # [2,1,0] -> [1,1,0]: (e, e, 1) / (2e + 1)
    torch.testing.assert_close(one[0], torch.tensor([0.4223188, 0.4223188, 0.1553624]))
    half = undial_targets(logits[1:2], targets[1:2], 0.5)  # [1,3,0] -> [1,2.5,0]
    torch.testing.assert_close(half[0], torch.tensor([0.1709528, 0.7661572, 0.0628900]))
    plain = undial_targets(logits[2:], targets[2:], 0.0)  # strength 0: the teacher's own softmax
    torch.testing.assert_close(plain[0], torch.softmax(logits[2], -1))


def test_undial_loss_is_the_cross_entropy_against_the_adjusted_teacher():
    teacher = torch.tensor([[[2.0, 1.0, 0.0], [7.0, 0.0, 0.0], [5.0, 5.0, 5.0]]])
    labels = torch.tensor([[IGNORE_INDEX, 0, IGNORE_INDEX]])  # one completion token, predicted at position 0
    # a uniform student: −Σ q log(1/3) = log 3 whatever q is
    assert undial_loss(torch.zeros(1, 3, 3), teacher, labels, 1.0).item() == pytest.approx(math.log(3))
    # a student equal to the adjusted teacher: the entropy of q = (e, e, 1) / (2e + 1)
    student = torch.tensor([[[1.0, 1.0, 0.0], [9.0, 9.0, 9.0], [9.0, 9.0, 9.0]]])
    assert undial_loss(student, teacher, labels, 1.0).item() == pytest.approx(1.0173572, abs=1e-6)


def _rows_and_head(seed: int, vocab: int = 11, hidden: int = 8):
    torch.manual_seed(seed)
    head = nn.Linear(hidden, vocab, bias=True)
    labels = torch.randint(0, vocab, (2, 6))
    labels[0, :2] = IGNORE_INDEX
    labels[1, 4:] = IGNORE_INDEX
    return torch.randn(2, 6, hidden), head, labels


def test_fused_undial_matches_the_naive_loss_and_gradients():
    student_hidden, student_head, labels = _rows_and_head(0)
    teacher_hidden, teacher_head, _ = _rows_and_head(1)
    student_hidden.requires_grad_(True)
    naive = undial_loss(student_head(student_hidden), teacher_head(teacher_hidden), labels, 1.5, 7)
    naive.backward()
    expected = (student_hidden.grad.clone(), student_head.weight.grad.clone(), student_head.bias.grad.clone())
    student_hidden.grad = student_head.weight.grad = student_head.bias.grad = None
    fused = fused_undial_loss(
        student_hidden, student_head, teacher_hidden, teacher_head, labels, 1.5, 7, chunk_size=3
    )
    fused.backward()
    torch.testing.assert_close(fused, naive)
    grads = (student_hidden.grad, student_head.weight.grad, student_head.bias.grad)
    for got, want in zip(grads, expected, strict=True):
        torch.testing.assert_close(got, want)
    assert teacher_head.weight.grad is None


@pytest.mark.parametrize("fused", [True, False])
def test_undial_trainer_first_step_loss_is_undial_of_the_start_model(tmp_path, tokenizer, fused):
    cfg = DataConfig(prompt_template="{question}", completion_template="{answer}")
    dataset, _ = tokenize_examples(arithmetic_rows(8), tokenizer, cfg, 96)
    model = build_model(len(tokenizer), seed=3)
    train = TrainConfig(learning_rate=1e-2, per_device_batch_size=8, save_steps=100, logging_steps=1)
    train_sft(
        model, tokenizer, dataset, train, 10, PhaseTraining(tmp_path / "sft", 0)
    )  # so that targets carry mass
    teacher = copy.deepcopy(model)
    batch = CompletionCollator(tokenizer.pad_token_id)(list(dataset))
    with torch.no_grad():  # student = teacher at the first step: one batch of all 8 rows
        logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
        expected = undial_loss(logits, logits, batch["labels"], 1.5).item()
        others = (  # what a mis-wired trainer would give: SFT's loss, or no adjustment
            completion_cross_entropy(logits, batch["labels"]).item(),
            undial_loss(logits, logits, batch["labels"], 0.0).item(),
        )
    train.fused_loss = fused
    result = train_undial(
        model, teacher, tokenizer, dataset, train, 1.0, 1.5, PhaseTraining(tmp_path / "ckpt", 0)
    )
    first = result["log_history"][0]["loss"]
    assert first == pytest.approx(expected, abs=1e-5)
    assert all(abs(first - other) > 1e-3 for other in others), (first, others)
    assert not teacher.training and all(not p.requires_grad for p in teacher.parameters())


# ---------------------------------------------------------------- DPO


def test_dpo_loss_against_a_hand_computation():
    policy_chosen = torch.tensor([-1.0, -2.0, -4.0])
    policy_rejected = torch.tensor([-3.0, -2.5, -1.0])
    reference_chosen = torch.tensor([-2.0, -2.0, -3.0])
    reference_rejected = torch.tensor([-2.5, -2.5, -2.0])
    got = dpo_loss(policy_chosen, policy_rejected, reference_chosen, reference_rejected, beta=0.1)
    # margins: (1 − (−0.5)) = 1.5, 0 (policy = reference), (−1 − 1) = −2; loss = log(1 + exp(−β·margin))
    torch.testing.assert_close(got, torch.tensor([0.6209570, math.log(2), 0.7981389]))


def test_sequence_log_probs_sum_the_completion_tokens_and_fused_matches_naive():
    logits = torch.log(torch.tensor([[[0.1, 0.8, 0.1], [0.2, 0.2, 0.6], [0.5, 0.25, 0.25]]]))
    labels = torch.tensor([[IGNORE_INDEX, 1, 2]])
    # position 0 predicts token 1 (p 0.8), position 1 token 2 (p 0.6); the last position predicts nothing
    assert sequence_log_probs(logits, labels).item() == pytest.approx(math.log(0.8) + math.log(0.6))
    hidden, head, labels = _rows_and_head(2)
    hidden.requires_grad_(True)
    naive = sequence_log_probs(head(hidden), labels)
    (naive * torch.tensor([1.0, -2.0])).sum().backward()
    expected = (hidden.grad.clone(), head.weight.grad.clone())
    hidden.grad = head.weight.grad = head.bias.grad = None
    fused = fused_sequence_log_probs(hidden, head, labels, chunk_size=2)
    (fused * torch.tensor([1.0, -2.0])).sum().backward()
    torch.testing.assert_close(fused, naive)
    torch.testing.assert_close(hidden.grad, expected[0])
    torch.testing.assert_close(head.weight.grad, expected[1])


# ---------------------------------------------------------------- preference pairs


def test_dpo_pairs_first_correct_is_chosen_first_wrong_rejected():
    samples = [
        ["The answer is 7.", "The answer is 8.", "I think 8", "The answer is 9."],
        ["8", "The answer is 8."],
        ["no idea", "The answer is 5."],
        ["The answer is 12.", "The answer is 1/2."],
        ["The answer is 8.", "The answer is 3."],
    ]
    golds = ["8", "8", "8", "0.5", "???"]
    records, stats = dpo_pairs(samples, golds)
    assert [r["pair"] for r in records] == [True, False, False, True, False]
    assert (records[0]["chosen"], records[0]["rejected"]) == ("The answer is 8.", "The answer is 7.")
    assert (records[3]["chosen"], records[3]["rejected"]) == ("The answer is 1/2.", "The answer is 12.")
    assert [r["skipped"] for r in records] == [None, "all_correct", "all_wrong", None, "unparsable_gold"]
    assert [s["correct"] for s in records[0]["samples"]] == [False, True, True, False]
    assert stats == {
        "prompts": 5,
        "pairs": 2,
        "skipped": 3,
        "skipped_all_correct": 1,
        "skipped_all_wrong": 1,
        "skipped_unparsable_gold": 1,
        "sample_accuracy": round(5 / 12, 4),  # 2 + 2 + 0 + 1 + 0 of 12
    }


def test_spin_pairs_reject_the_models_answer_and_skip_identical_ones():
    records, stats = spin_pairs(
        ["The answer is 9.", " 3 + 5 = 8. The answer is 8.\n"], ["3 + 5 = 8. The answer is 8."] * 2
    )
    assert records[0] == {
        "pair": True,
        "chosen": "3 + 5 = 8. The answer is 8.",
        "rejected": "The answer is 9.",
        "skipped": None,
    }
    assert records[1]["skipped"] == "identical" and not records[1]["pair"]
    assert stats == {"prompts": 2, "pairs": 1, "skipped": 1, "skipped_identical": 1}


def test_pair_dataset_shares_the_prompt_and_cuts_like_the_training_data(tokenizer):
    cfg = DataConfig(prompt_template="{question}", completion_template="{answer}")
    rows = [{"question": "What is 3 + 5?", "answer": "3 + 5 = 8. The answer is 8."}]
    dataset, _ = tokenize_examples(rows, tokenizer, cfg, 64)
    prompt_len = dataset[0]["labels"].count(IGNORE_INDEX)
    record = {"idx": 0, "pair": True, "chosen": "The answer is 8.", "rejected": "7 " * 80}
    pairs = pair_dataset(dataset, [record], tokenizer, 64, spin=False)
    chosen, rejected = pairs[0]["chosen_input_ids"], pairs[0]["rejected_input_ids"]
    assert chosen[:prompt_len] == rejected[:prompt_len] == dataset[0]["input_ids"][:prompt_len]
    assert pairs[0]["chosen_labels"][:prompt_len] == [IGNORE_INDEX] * prompt_len
    assert chosen[-1] == tokenizer.eos_token_id and len(rejected) == 64  # cut to max_length
    assert tokenizer.decode(chosen[prompt_len:-1]) == "The answer is 8."
    spin = pair_dataset(dataset, [record], tokenizer, 64, spin=True)
    assert spin[0]["chosen_input_ids"] == dataset[0]["input_ids"]  # SPIN's chosen: the example itself
    batch = PreferenceCollator(tokenizer.pad_token_id)([spin[0]])
    assert batch["input_ids"].shape == (2, 64)  # chosen then rejected, padded to one width
    assert batch["attention_mask"][0].sum() == len(dataset[0]["input_ids"])


# ---------------------------------------------------------------- end to end


def _config(model_dir, train_file, out, *extra):
    return load_config(
        None,
        [
            f"model={model_dir}",
            f"data.path={train_file}",
            f"output_dir={out}",
            "data.prompt_template={question}",
            "data.completion_template={answer}",
            "train.learning_rate=3e-3",
            "train.per_device_batch_size=4",
            "train.max_length=96",
            "train.save_steps=2",
            "train.logging_steps=1",
            "dpo.max_new_tokens=16",
            *extra,
        ],
    )


def _weights(path):
    return AutoModelForCausalLM.from_pretrained(path).state_dict()


def _changed(a, b) -> bool:
    return any(not torch.equal(x, y) for x, y in zip(_weights(a).values(), _weights(b).values(), strict=True))


def _first_loss(out, phase):
    return json.loads((out / "logs" / f"{phase}.json").read_text())[0]["loss"]


class MeasureEmbeddingNoise(TrainerCallback):
    """After the first forward/backward (the model is in train mode), runs its input embedding on L tokens
    in train mode (through whatever hook is on it) and in eval mode, and keeps both differences to the
    plain embedding rows."""

    length = 64

    def __init__(self):
        self.train_noise = self.eval_noise = None

    def on_pre_optimizer_step(self, args, state, control, model=None, **kwargs):
        if self.train_noise is not None:
            return
        embedding = model.get_input_embeddings()
        assert embedding.training
        ids = torch.arange(self.length)[None] % embedding.weight.shape[0]
        with torch.no_grad():
            clean = embedding.weight[ids]
            self.train_noise = embedding(ids) - clean
            embedding.eval()
            self.eval_noise = embedding(ids) - clean
            embedding.train()


def test_sft_and_neftune_spend_two_epochs_from_m0(tmp_path, tiny_model_dir, train_file):
    sft = run_pipeline(_config(tiny_model_dir, train_file, tmp_path / "sft", "method=sft"))
    assert list(sft["phases"]) == ["M0", "sft", "final"]
    assert sft["phases"]["sft"]["epochs"] == 2.0 and sft["phases"]["sft"]["steps"] == 12  # 24 rows / 4 × 2
    assert sft["budget"]["optimizer_steps"] == 12 and sft["budget"]["passes_over_data"] == 2.0

    probe = MeasureEmbeddingNoise()
    out = tmp_path / "neftune"
    manifest = run_pipeline(_config(tiny_model_dir, train_file, out, "method=neftune"), callbacks=[probe])
    assert list(manifest["phases"]) == ["M0", "neftune", "final"]
    phase = manifest["phases"]["neftune"]
    assert (
        phase["neftune_alpha"] == 5.0
        and phase["steps"] == 12
        and manifest["budget"]["passes_over_data"] == 2.0
    )
    # uniform noise in ±α/√(L·d): its largest value reaches the bound, its std is bound/√3
    bound = 5.0 / math.sqrt(MeasureEmbeddingNoise.length * 32)
    noise = probe.train_noise
    assert noise.abs().max() <= bound * (1 + 1e-5) and noise.abs().max() > 0.95 * bound
    assert noise.std().item() == pytest.approx(bound / math.sqrt(3), rel=0.05)
    assert torch.equal(probe.eval_noise, torch.zeros_like(probe.eval_noise))  # no noise in eval mode
    assert _changed(out / "final", tmp_path / "sft" / "final")  # same seed and data: the noise did it


def test_undial_trains_from_m1_against_the_frozen_m1(tmp_path, tiny_model_dir, train_file):
    out = tmp_path / "undial"
    manifest = run_pipeline(_config(tiny_model_dir, train_file, out, "method=undial", "undial.strength=2.0"))
    phases = manifest["phases"]
    assert list(phases) == ["M0", "sft", "undial", "final"]
    assert phases["sft"]["epochs"] == 1.0 and phases["undial"]["teacher"].endswith("models/M1")
    assert phases["undial"]["strength"] == 2.0 and phases["undial"]["steps"] == 6
    assert manifest["budget"]["optimizer_steps"] == 12 and manifest["budget"]["passes_over_data"] == 2.0
    assert _changed(out / "final", out / "models" / "M1")
    again = run_pipeline(_config(tiny_model_dir, train_file, out, "method=undial", "undial.strength=2.0"))
    assert all(p["attempts"] == 1 for p in again["phases"].values())  # finished phases are skipped


@pytest.fixture(scope="module")
def coin_m1(tmp_path_factory, tokenizer):
    """A trained M1 that answers "The answer is 8." or "… 9." about half the time each, and its data
    (the gold answer, in column ``final``, alternates between 8 and 9 on identical questions)."""
    root = tmp_path_factory.mktemp("coin")
    rows = [
        {"question": "Pick a number.", "answer": f"The answer is {8 + i % 2}.", "final": 8 + i % 2}
        for i in range(24)
    ]
    data = write_jsonl(root / "train.jsonl", rows)
    cfg = DataConfig(prompt_template="{question}", completion_template="{answer}")
    dataset, _ = tokenize_examples(rows, tokenizer, cfg, 96)
    model = build_model(len(tokenizer))
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    train = TrainConfig(learning_rate=1e-2, per_device_batch_size=8, save_steps=1000, logging_steps=100)
    train_sft(model, tokenizer, dataset, train, 20, PhaseTraining(root / "ckpt", 0))
    model.save_pretrained(root / "m1")
    tokenizer.save_pretrained(root / "m1")
    return root / "m1", data


def test_dpo_from_a_given_m1_on_its_graded_samples(tmp_path, tiny_model_dir, coin_m1):
    m1, data = coin_m1
    out = tmp_path / "dpo"
    extra = ("method=dpo", f"sft.checkpoint={m1}", "data.answer_field=final")
    manifest = run_pipeline(_config(tiny_model_dir, data, out, *extra))
    phases = manifest["phases"]
    assert list(phases) == ["M0", "sft", "pairs", "dpo", "final"]
    pairs = phases["pairs"]
    assert pairs["num_samples"] == 4 and pairs["temperature"] == 0.8
    assert pairs["pairs"] + pairs["skipped"] == 24 and pairs["pairs"] >= 12
    assert pairs["skipped"] == pairs["skipped_all_correct"] + pairs["skipped_all_wrong"]
    records = read_jsonl(out / "pairs.jsonl")
    assert sum(r["pair"] for r in records) == pairs["pairs"]
    for r in records:
        correct = [s["correct"] for s in r["samples"]]
        assert r["pair"] == (any(correct) and not all(correct))
        if r["pair"]:
            assert r["chosen"] == r["samples"][correct.index(True)]["text"]
            assert r["rejected"] == r["samples"][correct.index(False)]["text"]
            assert r["chosen"].rstrip(".").endswith(r["gold"])
    dpo = phases["dpo"]
    assert dpo["steps"] == math.ceil(pairs["pairs"] / 4) and dpo["examples"] == pairs["pairs"]
    assert dpo["learning_rate"] == pytest.approx(3e-3 / 20) and dpo["reference"] == str(m1)
    assert _first_loss(out, "dpo") == pytest.approx(math.log(2), abs=1e-4)  # policy = reference at step 0
    assert manifest["budget"]["optimizer_steps"] == dpo["steps"]  # the given M1 is not counted
    assert manifest["budget"]["m1_given"] == str(m1)
    assert _changed(out / "final", m1)


class InterruptAfterSave(TrainerCallback):
    def __init__(self, phase, step):
        self.phase, self.step = phase, step

    def on_save(self, args, state, control, **kwargs):
        if args.output_dir.endswith(self.phase) and state.global_step == self.step:
            raise KeyboardInterrupt


def test_spin_resumes_to_the_same_weights(tmp_path, tiny_model_dir, train_file):
    reference = tmp_path / "reference"
    manifest = run_pipeline(_config(tiny_model_dir, train_file, reference, "method=spin"))
    phases = manifest["phases"]
    assert list(phases) == ["M0", "sft", "pairs", "spin", "final"]
    assert phases["pairs"]["num_samples"] == 1 and phases["pairs"]["temperature"] == 0.0
    assert phases["pairs"]["pairs"] == 24  # the 1-epoch tiny M1 never reproduces a completion greedily
    assert phases["spin"]["steps"] == 6 and _first_loss(reference, "spin") == pytest.approx(
        math.log(2), abs=1e-4
    )
    records = read_jsonl(reference / "pairs.jsonl")
    assert records[0]["chosen"] == "2 + 3 = 5. The answer is 5."  # the training completion
    out = tmp_path / "interrupted"
    cfg = _config(tiny_model_dir, train_file, out, "method=spin")
    with pytest.raises(KeyboardInterrupt):
        run_pipeline(cfg, callbacks=[InterruptAfterSave("spin", 2)])
    resumed = run_pipeline(cfg)
    assert resumed["phases"]["pairs"]["attempts"] == 1 and resumed["phases"]["spin"]["attempts"] == 2
    for (name, a), b in zip(
        _weights(reference / "final").items(), _weights(out / "final").values(), strict=True
    ):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6, msg=name)


def test_neftune_from_a_given_m1_trains_the_rest_of_its_budget(tmp_path, tiny_model_dir, train_file, coin_m1):
    m1, _ = coin_m1
    out = tmp_path / "run"
    manifest = run_pipeline(
        _config(tiny_model_dir, train_file, out, "method=neftune", f"sft.checkpoint={m1}")
    )
    assert list(manifest["phases"]) == ["M0", "sft", "neftune-continued", "final"]
    assert manifest["phases"]["sft"]["reused"] and manifest["phases"]["neftune-continued"]["epochs"] == 1.0
    assert manifest["budget"]["optimizer_steps"] == 6 and manifest["budget"]["passes_over_data"] == 1.0
    # a one-epoch SFT arm from the shared M1 trains nothing: M1 is its result
    one = run_pipeline(
        _config(
            tiny_model_dir, train_file, tmp_path / "one", "method=sft", "sft.epochs=1", f"sft.checkpoint={m1}"
        )
    )
    assert list(one["phases"]) == ["M0", "sft", "final"] and one["budget"]["optimizer_steps"] == 0
    assert not _changed(tmp_path / "one" / "final", m1)


@pytest.mark.parametrize(
    "overrides,match",
    [
        (["method=ppo"], "method must be one of"),
        (["method=dpo"], "data.answer_field"),
        (["method=dpo", "data.answer_field=final", "dpo.num_samples=1"], "num_samples >= 2"),
        (["neftune.alpha=0"], "neftune.alpha must be > 0"),
        (["dpo.beta=0"], "dpo.beta"),
    ],
)
def test_method_config_errors(overrides, match):
    with pytest.raises(ConfigError, match=match):
        load_config(None, overrides)


def test_method_defaults():
    cfg = load_config()
    assert cfg.method == "wmss" and cfg.sft_epochs == 1.0 and cfg.dpo_learning_rate == pytest.approx(5e-7)
    assert load_config(None, ["method=neftune"]).sft_epochs == 2.0
    assert load_config(None, ["method=sft", "sft.epochs=3"]).sft_epochs == 3.0
    assert (cfg.neftune.alpha, cfg.undial.strength, cfg.dpo.beta, cfg.dpo.num_samples) == (5.0, 1.0, 0.1, 4)


def test_a_run_made_before_the_method_keys_existed_still_resumes(tmp_path, train_file):
    cfg = load_config(None, [f"output_dir={tmp_path / 'run'}", f"data.path={train_file}"])
    run = RunDir(cfg)
    old = {k: v for k, v in run.manifest["result_config"].items() if k.split(".")[0] not in NEW_SECTIONS}
    old["sft.epochs"] = 1.0  # what such a run recorded for the then-default
    old.pop("data.answer_field")
    run.manifest["result_config"] = old
    run.save()
    RunDir(cfg)  # the keys added since are at their defaults: the same run
    with pytest.raises(ConfigError, match=r"method: 'wmss' -> 'undial'"):
        RunDir(
            load_config(None, [f"output_dir={tmp_path / 'run'}", f"data.path={train_file}", "method=undial"])
        )


NEW_SECTIONS = ("method", "neftune", "undial", "dpo")

"""Batched greedy generation and model evaluation (the path of ``wmss eval`` and ``wmss run``), on a tiny
random Llama and a tiny trained BPE tokenizer."""

import json
import re

import pytest
import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import AutoModelForCausalLM, LlamaConfig, PreTrainedTokenizerFast

from tests.conftest import write_jsonl
from wmss.config import load_config
from wmss.evaluation import extract_answer
from wmss.evaluation.evaluate import score
from wmss.evaluation.generation import generate
from wmss.evaluation.harness import evaluate_one, load_problems, parse_task_spec

CORPUS = [
    "Tom has 3 apples and buys 5 more: 3 + 5 = 8.",
    "How many apples does Tom have now? The answer is 8.",
    "Anna shares 12 cookies among 4 friends: 12 / 4 = 3.",
    "A shelf has 4 rows of 6 books: 4 * 6 = 24.",
]
PROMPTS = [
    "Tom has",
    "How many apples does Anna have now?",
    "A shelf",
    "Anna shares 12 cookies among 4 friends. How many",
    "3 + 5 =",
]
MAX_NEW_TOKENS = 12
RECORD_KEYS = {"id", "prompt", "gold", "generation", "finish", "num_tokens", "extracted", "correct", "error"}
"""Keys of a predictions record (plus ``unparsable_gold`` when the gold cannot be read)."""


def make_tokenizer(with_pad: bool = True) -> PreTrainedTokenizerFast:
    """A byte-level BPE with a few hundred tokens, trained on CORPUS."""
    backend = Tokenizer(models.BPE())
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    backend.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=320,
        special_tokens=["<pad>", "<eos>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
    )
    backend.train_from_iterator(CORPUS, trainer)
    if with_pad:
        return PreTrainedTokenizerFast(tokenizer_object=backend, pad_token="<pad>", eos_token="<eos>")
    return PreTrainedTokenizerFast(tokenizer_object=backend, eos_token="<eos>")


@pytest.fixture(scope="module")
def tokenizer() -> PreTrainedTokenizerFast:
    return make_tokenizer()


@pytest.fixture()
def model(tokenizer: PreTrainedTokenizerFast) -> torch.nn.Module:
    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        pad_token_id=tokenizer.pad_token_id,
        bos_token_id=tokenizer.eos_token_id,
        eos_token_id=tokenizer.eos_token_id,
    )
    return AutoModelForCausalLM.from_config(config).float()


def reference_tokens(model, tokenizer, prompt: str, stop_ids: set[int]) -> list[int]:
    """Greedy continuation of one unpadded prompt, recomputing the whole sequence each step (no KV cache)."""
    ids = tokenizer(prompt, add_special_tokens=False)["input_ids"]
    new: list[int] = []
    with torch.no_grad():
        for _ in range(MAX_NEW_TOKENS):
            token = int(model(torch.tensor([ids + new])).logits[0, -1].argmax())
            if token in stop_ids:
                break
            new.append(token)
    return new


def reference_text(model, tokenizer, prompt: str, stop_ids: set[int]) -> str:
    return tokenizer.decode(reference_tokens(model, tokenizer, prompt, stop_ids), skip_special_tokens=True)


def texts(model, tokenizer, prompts: list[str], **kwargs) -> list[str]:
    """The one greedy answer per prompt that evaluation generates (same defaults as ``evaluate_one``)."""
    return [
        g.text for [g] in generate(model, tokenizer, prompts, MAX_NEW_TOKENS, show_progress=False, **kwargs)
    ]


def test_batched_generation_matches_one_at_a_time(model, tokenizer) -> None:
    expected = [reference_text(model, tokenizer, prompt, {tokenizer.eos_token_id}) for prompt in PROMPTS]
    assert len(set(expected)) > 1 and all(expected), "the tiny model should produce varied, non-empty text"
    model.train()
    assert texts(model, tokenizer, PROMPTS, batch_size=2) == expected
    assert model.training, "the model's training mode must be restored"
    assert tokenizer.padding_side == "right", "the tokenizer must be left as it was"


def test_generation_stops_at_the_model_generation_config_eos(model, tokenizer) -> None:
    full = reference_tokens(model, tokenizer, PROMPTS[0], {tokenizer.eos_token_id})
    extra_eos = full[3]
    model.generation_config.eos_token_id = [tokenizer.eos_token_id, extra_eos]
    expected = reference_text(model, tokenizer, PROMPTS[0], {tokenizer.eos_token_id, extra_eos})
    [[generation]] = generate(model, tokenizer, [PROMPTS[0]], MAX_NEW_TOKENS, show_progress=False)
    assert generation.text == expected and (generation.finish, generation.num_tokens) == ("eos", 3)
    assert len(generation.text) < len(tokenizer.decode(full))


def test_generation_stops_once_the_new_text_matches_the_stop_pattern(model, tokenizer) -> None:
    full = reference_text(model, tokenizer, PROMPTS[1], {tokenizer.eos_token_id})
    stop = full[len(full) // 2 : len(full) // 2 + 2]
    generations = generate(
        model, tokenizer, PROMPTS[1:3], MAX_NEW_TOKENS, stop_pattern=re.escape(stop), show_progress=False
    )
    assert generations[0][0].text == full[: full.index(stop) + len(stop)].rstrip()
    assert generations[0][0].finish == "pattern"


def test_tokenizer_without_pad_token_pads_with_eos(model) -> None:
    tokenizer = make_tokenizer(with_pad=False)
    assert tokenizer.pad_token_id is None
    expected = [reference_text(model, tokenizer, prompt, {tokenizer.eos_token_id}) for prompt in PROMPTS]
    assert texts(model, tokenizer, PROMPTS) == expected


def test_empty_question_is_never_generated_for(tmp_path) -> None:
    path = write_jsonl(
        tmp_path / "q.jsonl", [{"question": "Tom has", "answer": "3"}, {"question": " ", "answer": "4"}]
    )
    cfg = load_config()
    task, task_path = parse_task_spec(f"generic={path}", cfg.eval)
    data = load_problems(task, task_path, cfg.eval)
    assert [problem["question"] for problem in data.problems] == ["Tom has"]
    assert len(data.malformed) == 1 and "row 2: ValueError: empty question" in data.malformed[0]


def test_evaluation_writes_one_graded_record_per_problem(model, tokenizer, tmp_path) -> None:
    first = reference_tokens(model, tokenizer, PROMPTS[1], {tokenizer.eos_token_id})[0]
    model.generation_config.eos_token_id = [tokenizer.eos_token_id, first]  # PROMPTS[1]: an empty answer
    generations = texts(model, tokenizer, PROMPTS)
    assert generations[1] == "" and sum(not text.strip() for text in generations) == 1
    # Gold answers: what the model says where it says a number (correct), else a number it did not say.
    golds = [extract_answer(text) or "987654" for text in generations]
    golds[-1] = "?"  # unparsable: counted as wrong, and counted on its own
    expected_correct = sum(extract_answer(text) is not None for text in generations[:-1])
    assert expected_correct > 0, "the tiny model should state a number somewhere"
    path = write_jsonl(
        tmp_path / "problems.jsonl",
        [{"question": prompt, "answer": gold} for prompt, gold in zip(PROMPTS, golds, strict=True)],
    )
    cfg = load_config(None, ["data.chat_template=false", f"eval.max_new_tokens={MAX_NEW_TOKENS}"])
    task, task_path = parse_task_spec(f"generic={path}", cfg.eval)
    out = tmp_path / "run"
    summary = evaluate_one(model, tokenizer, task, load_problems(task, task_path, cfg.eval), cfg, out)

    records = [
        json.loads(line) for line in (out / "predictions.jsonl").read_text(encoding="utf-8").splitlines()
    ]
    assert [record["id"] for record in records] == list(range(len(PROMPTS)))
    for record, prompt, generation, gold in zip(records, PROMPTS, generations, golds, strict=True):
        assert set(record) - {"unparsable_gold"} == RECORD_KEYS
        assert record["prompt"] == prompt and record["generation"] == generation and record["gold"] == gold
        assert record["extracted"] == extract_answer(generation)
    assert summary["num_problems"] == len(PROMPTS) and summary["num_correct"] == expected_correct
    assert summary["accuracy"] == expected_correct / len(PROMPTS)
    assert summary["accuracy"] == sum(record["correct"] for record in records) / len(records)
    assert summary["num_unparsable_gold"] == 1 and summary["num_empty_generation"] == 1
    assert not records[-1]["correct"] and "?" in records[-1]["error"] and records[-1]["unparsable_gold"]
    assert summary["predictions_path"] == str(out / "predictions.jsonl")
    # no temporary file left; the stamp records the finished evaluation (kept when it is run again)
    assert sorted(item.name for item in out.iterdir()) == [".predictions.done.json", "predictions.jsonl"]


@pytest.mark.parametrize(
    "generation,gold,correct",
    [
        ("3 + 4 = 7. The answer is 7.", "7", True),
        ("So \\boxed{0.5}", "1/2", True),
        ("The answer is 9.", "8", False),
        ("   ", "3", False),
        ("It is 2.", "?", False),
    ],
)
def test_grading_of_math_answers(generation, gold, correct) -> None:
    verdict = score(generation, gold, "math")
    assert verdict["correct"] is correct
    assert verdict["extracted"] == extract_answer(generation)
    assert verdict.get("unparsable_gold", False) is (gold == "?")
    assert (verdict["extracted"] is None) is (not generation.strip())

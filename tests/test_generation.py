"""Batched greedy generation and model evaluation, on a tiny random Llama and a tiny trained BPE tokenizer."""

import json

import pytest
import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import AutoModelForCausalLM, LlamaConfig, PreTrainedTokenizerFast

from wmss.evaluation import EvalResult, evaluate_generations, evaluate_model, extract_answer, generate_greedy

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


def test_batched_generation_matches_one_at_a_time(model, tokenizer) -> None:
    expected = [reference_text(model, tokenizer, prompt, {tokenizer.eos_token_id}) for prompt in PROMPTS]
    assert len(set(expected)) > 1 and all(expected), "the tiny model should produce varied, non-empty text"
    model.train()
    texts = generate_greedy(model, tokenizer, PROMPTS, MAX_NEW_TOKENS, batch_size=2, show_progress=False)
    assert texts == expected
    assert model.training, "the model's training mode must be restored"
    assert tokenizer.padding_side == "right", "the tokenizer must be left as it was"


def test_generation_stops_at_the_model_generation_config_eos(model, tokenizer) -> None:
    full = reference_tokens(model, tokenizer, PROMPTS[0], {tokenizer.eos_token_id})
    extra_eos = full[3]
    model.generation_config.eos_token_id = [tokenizer.eos_token_id, extra_eos]
    expected = reference_text(model, tokenizer, PROMPTS[0], {tokenizer.eos_token_id, extra_eos})
    [text] = generate_greedy(model, tokenizer, [PROMPTS[0]], MAX_NEW_TOKENS, show_progress=False)
    assert text == expected
    assert len(text) < len(tokenizer.decode(full))


def test_text_is_cut_before_the_first_stop_string(model, tokenizer) -> None:
    full = reference_text(model, tokenizer, PROMPTS[1], {tokenizer.eos_token_id})
    stop = full[len(full) // 2 : len(full) // 2 + 2]
    texts = generate_greedy(
        model, tokenizer, PROMPTS[1:3], MAX_NEW_TOKENS, stop_strings=[stop], show_progress=False
    )
    assert texts[0] == full[: full.index(stop)]


def test_tokenizer_without_pad_token_pads_with_eos(model) -> None:
    tokenizer = make_tokenizer(with_pad=False)
    assert tokenizer.pad_token_id is None
    expected = [reference_text(model, tokenizer, prompt, {tokenizer.eos_token_id}) for prompt in PROMPTS]
    assert generate_greedy(model, tokenizer, PROMPTS, MAX_NEW_TOKENS, show_progress=False) == expected


def test_empty_prompt_is_refused(model, tokenizer) -> None:
    with pytest.raises(ValueError, match="prompt 1 is empty"):
        generate_greedy(model, tokenizer, ["Tom has", ""], MAX_NEW_TOKENS, show_progress=False)


def test_evaluate_model_writes_one_record_per_problem(model, tokenizer, tmp_path) -> None:
    generations = generate_greedy(model, tokenizer, PROMPTS, MAX_NEW_TOKENS, show_progress=False)
    # Gold answers: what the model says where it says a number (correct), else a number it did not say.
    golds = [extract_answer(text) or "987654" for text in generations]
    golds[-1] = "?"  # unparsable: counted as wrong, and counted on its own
    problems = [
        {"id": f"p{index}", "prompt": prompt, "answer": gold}
        for index, (prompt, gold) in enumerate(zip(PROMPTS, golds, strict=True))
    ]
    path = tmp_path / "run" / "predictions.jsonl"
    result = evaluate_model(
        model, tokenizer, problems, max_new_tokens=MAX_NEW_TOKENS, predictions_path=path, show_progress=False
    )

    records = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]
    assert [record["id"] for record in records] == [problem["id"] for problem in problems]
    for record, generation, gold in zip(records, generations, golds, strict=True):
        assert set(record) == {"id", "prompt", "generation", "extracted", "gold", "correct", "error"}
        assert record["generation"] == generation and record["gold"] == gold
        assert record["extracted"] == extract_answer(generation)
    assert result.accuracy == sum(record["correct"] for record in records) / len(records)
    assert result.num_problems == len(PROMPTS)
    assert result.num_unparsable_gold == 1
    assert not records[-1]["correct"] and "?" in records[-1]["error"]
    assert result.predictions_path == str(path)
    assert [item.name for item in path.parent.iterdir()] == ["predictions.jsonl"], "no temporary file left"


def test_evaluate_generations_counts() -> None:
    result = evaluate_generations(
        ids=["a", "b", "c", "d", "e"],
        prompts=["q1", "q2", "q3", "q4", "q5"],
        generations=["3 + 4 = 7. The answer is 7.", "So \\boxed{0.5}", "The answer is 9.", "   ", "It is 2."],
        golds=["7", "1/2", "8", "3", "?"],
    )
    assert result == EvalResult(
        accuracy=0.4,
        num_problems=5,
        num_correct=2,
        num_unparsable_gold=1,
        num_empty_generation=1,
        predictions_path=None,
    )
    assert result.to_dict()["accuracy"] == 0.4


def test_evaluate_generations_refuses_mismatched_lengths() -> None:
    with pytest.raises(ValueError, match="same length"):
        evaluate_generations(["a"], ["q"], ["g", "h"], ["1"])

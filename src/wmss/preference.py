"""Preference pairs for the DPO and SPIN baselines, made from M1's own answers to the training prompts.

- DPO: ``dpo.num_samples`` answers per prompt sampled from M1 at ``dpo.temperature`` and graded against the
  row's gold answer (``data.answer_field``) by the evaluation harness's grader; the first correct answer
  is chosen, the first wrong one rejected, and a prompt without both is skipped (``dpo_pairs``).
- SPIN (one iteration): M1's greedy answer is rejected, the training completion chosen; a prompt whose
  greedy answer equals its completion is skipped, since the pair would carry no signal (``spin_pairs``).

Answers come from the evaluation harness's batched generator (``wmss.evaluation.generation.generate``), so
they are decoded, cut and seeded exactly like evaluation answers. A pair becomes two tokenised
completions of the same prompt, cut to ``train.max_length`` like the training data (``pair_dataset``).
"""

from __future__ import annotations

from typing import Any

from datasets import Dataset
from transformers import PreTrainedModel

from wmss.config import RunConfig
from wmss.data import IGNORE_INDEX, special_ids
from wmss.evaluation.evaluate import score
from wmss.evaluation.generation import generate
from wmss.evaluation.tasks import gold_answer


def dpo_pairs(samples: list[list[str]], golds: list[str]) -> tuple[list[dict], dict[str, Any]]:
    """One record per prompt from its sampled answers: each answer's verdict and the pair, if any.

    A record holds ``pair`` (bool), ``chosen`` and ``rejected`` (texts, or None), ``skipped`` (None, or
    why: ``all_correct``, ``all_wrong``, ``unparsable_gold``) and ``samples`` (text, extracted answer,
    verdict). The statistics count pairs and skipped prompts by reason, and the accuracy of all samples.
    """
    records = []
    for texts, gold in zip(samples, golds, strict=True):
        verdicts = [score(text, gold, "math") for text in texts]
        correct = [v["correct"] for v in verdicts]
        chosen = next((i for i, ok in enumerate(correct) if ok), None)
        rejected = next((i for i, ok in enumerate(correct) if not ok), None)
        if any(v.get("unparsable_gold") for v in verdicts):
            skipped = "unparsable_gold"
        elif chosen is None:
            skipped = "all_wrong"
        elif rejected is None:
            skipped = "all_correct"
        else:
            skipped = None
        records.append(
            {
                "gold": gold,
                "pair": skipped is None,
                "chosen": texts[chosen] if skipped is None else None,
                "rejected": texts[rejected] if skipped is None else None,
                "skipped": skipped,
                "samples": [
                    {"text": t, "extracted": v["extracted"], "correct": v["correct"]}
                    for t, v in zip(texts, verdicts, strict=True)
                ],
            }
        )
    num_samples = sum(len(texts) for texts in samples)
    stats = {
        **_counts(records, ("all_correct", "all_wrong", "unparsable_gold")),
        "sample_accuracy": round(sum(s["correct"] for r in records for s in r["samples"]) / num_samples, 4)
        if num_samples
        else None,
    }
    return records, stats


def spin_pairs(generations: list[str], completions: list[str]) -> tuple[list[dict], dict[str, Any]]:
    """One record per prompt: M1's greedy answer is ``rejected``, the training completion ``chosen``;
    ``skipped: identical`` when the two are the same text (up to surrounding white space)."""
    records = []
    for generated, completion in zip(generations, completions, strict=True):
        same = generated.strip() == completion.strip()
        records.append(
            {
                "pair": not same,
                "chosen": completion,
                "rejected": generated,
                "skipped": "identical" if same else None,
            }
        )
    return records, _counts(records, ("identical",))


def _counts(records: list[dict], reasons: tuple[str, ...]) -> dict[str, int]:
    pairs = sum(r["pair"] for r in records)
    counts = {"prompts": len(records), "pairs": pairs, "skipped": len(records) - pairs}
    counts.update({f"skipped_{reason}": sum(r["skipped"] == reason for r in records) for reason in reasons})
    return counts


def prompt_length(labels: list[int]) -> int:
    """Tokens before the completion: the labels are -100 over the prompt (``wmss.data``)."""
    return next(i for i, label in enumerate(labels) if label != IGNORE_INDEX)


def completion_text(example: dict, tokenizer: Any) -> str:
    """The training completion of a tokenised example, as text (without its EOS)."""
    tokens = example["input_ids"][prompt_length(example["labels"]) :]
    if tokens and tokens[-1] == tokenizer.eos_token_id:
        tokens = tokens[:-1]
    return tokenizer.decode(tokens, skip_special_tokens=True)


def make_pairs(
    model: PreTrainedModel, tokenizer: Any, dataset: Dataset, cfg: RunConfig
) -> tuple[list[dict], dict[str, Any]]:
    """Generate M1's answers to every training prompt and pair them (``cfg.method``: ``dpo`` or ``spin``).

    Records carry the example's ``idx`` and each generation's ``finish``; the statistics add the sampling
    settings, the number of generated tokens and of answers that hit ``dpo.max_new_tokens``.
    """
    d = cfg.dpo
    spin = cfg.method == "spin"
    sampling = (
        {"num_samples": 1, "temperature": 0.0, "top_p": 1.0}  # SPIN: M1's greedy answer
        if spin
        else {"num_samples": d.num_samples, "temperature": d.temperature, "top_p": d.top_p}
    )
    generations = generate(
        model,
        tokenizer,
        list(dataset["prompt"]),
        d.max_new_tokens,
        batch_size=d.generation_batch_size,
        seed=cfg.seed,
        show_progress=True,  # a phase that can take hours on a large D
        **sampling,
    )
    if spin:
        completions = [completion_text(example, tokenizer) for example in dataset]
        records, stats = spin_pairs([g[0].text for g in generations], completions)
    else:
        records, stats = dpo_pairs([[g.text for g in samples] for samples in generations], _golds(dataset))
    for record, idx, samples in zip(records, dataset["idx"], generations, strict=True):
        record["idx"] = idx
        record["finish"] = [g.finish for g in samples]
    flat = [g for samples in generations for g in samples]
    stats.update(sampling, max_new_tokens=d.max_new_tokens)
    stats["generated_tokens"] = sum(g.num_tokens for g in flat)
    stats["hit_length_limit"] = sum(g.finish == "length" for g in flat)
    return records, stats


def _golds(dataset: Dataset) -> list[str]:
    golds = []
    for raw in dataset["gold"]:
        try:
            golds.append(gold_answer(raw))
        except ValueError:
            golds.append(raw)  # graded as unparsable: the prompt is skipped and counted
    return golds


def _completion(
    prompt_ids: list[int], text: str, tokenizer: Any, max_length: int, end: int
) -> dict[str, list[int]]:
    tokens = tokenizer(text, add_special_tokens=False).input_ids + [end]
    tokens = tokens[: max_length - len(prompt_ids)]  # the prompt fits: data loading checked it
    return {"input_ids": prompt_ids + tokens, "labels": [IGNORE_INDEX] * len(prompt_ids) + tokens}


def pair_dataset(
    dataset: Dataset, records: list[dict], tokenizer: Any, max_length: int, spin: bool
) -> Dataset:
    """Tokenised pairs (``idx``, ``chosen_*``/``rejected_*`` ``input_ids`` and ``labels``) of the records
    with a pair. SPIN's chosen side is the training example itself, token for token."""
    row_of = {idx: row for row, idx in enumerate(dataset["idx"])}
    special = special_ids(tokenizer)
    out: dict[str, list] = {
        k: [] for k in ("idx", "chosen_input_ids", "chosen_labels", "rejected_input_ids", "rejected_labels")
    }
    for record in records:
        if not record["pair"]:
            continue
        example = dataset[row_of[record["idx"]]]
        prompt_ids = example["input_ids"][: prompt_length(example["labels"])]
        # a generated answer ends its turn as the training completion does (``wmss.data.assistant_turn``)
        last = example["input_ids"][-1]
        end = last if last in special else tokenizer.eos_token_id
        chosen = (
            {"input_ids": example["input_ids"], "labels": example["labels"]}
            if spin
            else _completion(prompt_ids, record["chosen"], tokenizer, max_length, end)
        )
        rejected = _completion(prompt_ids, record["rejected"], tokenizer, max_length, end)
        out["idx"].append(record["idx"])
        for side, seq in (("chosen", chosen), ("rejected", rejected)):
            out[f"{side}_input_ids"].append(seq["input_ids"])
            out[f"{side}_labels"].append(seq["labels"])
    return Dataset.from_dict(out)

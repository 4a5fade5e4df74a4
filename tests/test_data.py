"""Data loading: the three layouts, completion-only labels, stable ids, over-long policy, bad input."""

import json
import os
from pathlib import Path

import pytest
import torch

from tests.conftest import arithmetic_rows, write_jsonl
from wmss.config import DataConfig
from wmss.data import IGNORE_INDEX, CompletionCollator, load_training_data, read_rows, tokenize_examples
from wmss.errors import DataError

SHARED_DATA = Path(os.environ.get("WMSS_DATA_DIR", Path(__file__).resolve().parents[2] / "shared" / "data"))


def test_prompt_completion_layout_masks_the_prompt(tokenizer):
    rows = [{"prompt": "What is 3 + 5?", "completion": "3 + 5 = 8. The answer is 8."}]
    dataset, report = tokenize_examples(rows, tokenizer, DataConfig(chat_template=False), max_length=128)
    ex = dataset[0]
    prompt_ids = tokenizer("What is 3 + 5?", add_special_tokens=False).input_ids
    completion_ids = tokenizer("3 + 5 = 8. The answer is 8.", add_special_tokens=False).input_ids
    assert ex["input_ids"] == prompt_ids + completion_ids + [tokenizer.eos_token_id]
    assert ex["labels"] == [IGNORE_INDEX] * len(prompt_ids) + completion_ids + [tokenizer.eos_token_id]
    assert report.num_examples == 1 and report.num_truncated == report.num_dropped == 0


def test_chat_template_and_messages_layout_agree(tokenizer):
    chat = {
        "messages": [
            {"role": "user", "content": "What is 3 + 5?"},
            {"role": "assistant", "content": "The answer is 8."},
        ]
    }
    flat = {"prompt": "What is 3 + 5?", "completion": "The answer is 8."}
    a, _ = tokenize_examples([chat], tokenizer, DataConfig(), 128)
    b, _ = tokenize_examples([flat], tokenizer, DataConfig(chat_template=True), 128)
    assert a[0]["input_ids"] == b[0]["input_ids"] and a[0]["labels"] == b[0]["labels"]
    text = tokenizer.decode(a[0]["input_ids"])
    assert text.startswith("<|im_start|>user\nWhat is 3 + 5?<|im_end|>\n<|im_start|>assistant\n")
    completion = [t for t in a[0]["labels"] if t != IGNORE_INDEX]
    assert tokenizer.decode(completion) == "The answer is 8.<|im_end|>"


def test_field_mapping_on_real_gsm8k_rows(tokenizer):
    path = SHARED_DATA / "gsm8k" / "train.jsonl"
    if not path.is_file():
        pytest.skip(f"{path} not present")
    cfg = DataConfig(
        path=str(path),
        prompt_template="Question: {question}",
        completion_template="{answer}",
        chat_template=False,
        limit=5,
    )
    dataset, report = load_training_data(cfg, tokenizer, max_length=1024)
    assert report.num_examples == 5 and dataset["idx"] == [0, 1, 2, 3, 4]
    first = json.loads(path.read_text().splitlines()[0])
    completion = [t for t in dataset[0]["labels"] if t != IGNORE_INDEX]
    assert tokenizer.decode(completion[:-1]) == first["answer"]


def test_overlong_truncate_and_drop(tokenizer):
    rows = arithmetic_rows(4)
    rows[1]["answer"] = "3 + 5 = 8. " * 30
    cfg = DataConfig(prompt_template="{question}", completion_template="{answer}", chat_template=False)
    kept, report = tokenize_examples(rows, tokenizer, cfg, max_length=48)
    assert report.num_truncated == 1 and report.num_dropped == 0 and len(kept) == 4
    assert max(len(x) for x in kept["input_ids"]) == 48
    cfg.overlong = "drop"
    dropped, report = tokenize_examples(rows, tokenizer, cfg, max_length=48)
    assert report.num_dropped == 1 and dropped["idx"] == [0, 2, 3]  # ids stay those of the source rows


def test_prompt_longer_than_max_length(tokenizer):
    cfg = DataConfig(prompt_template="{question}", completion_template="{answer}", chat_template=False)
    with pytest.raises(DataError, match=r"row 1: the prompt alone is \d+ tokens.*max_length=8"):
        tokenize_examples(arithmetic_rows(2), tokenizer, cfg, max_length=8)


def test_malformed_line_is_reported(tmp_path, tokenizer):
    path = tmp_path / "d.jsonl"
    path.write_text(
        '{"prompt": "a", "completion": "b"}\n{"prompt": "a", "completion": "b"}\n{"prompt": "a",\n'
    )
    with pytest.raises(DataError, match=r"d\.jsonl, line 3: not valid JSON"):
        load_training_data(DataConfig(path=str(path)), tokenizer, 64)


def test_missing_file_and_columns_and_empty_completion(tmp_path, tokenizer):
    with pytest.raises(DataError, match="does not exist"):
        load_training_data(DataConfig(path=str(tmp_path / "none.jsonl")), tokenizer, 64)
    path = write_jsonl(tmp_path / "q.jsonl", [{"question": "q", "answer": "a"}])
    with pytest.raises(DataError, match="columns answer, question; expected 'prompt' and 'completion'"):
        load_training_data(DataConfig(path=str(path)), tokenizer, 64)
    cfg = DataConfig(path=str(path), prompt_template="{question}", completion_template="{solution}")
    with pytest.raises(DataError, match=r"column 'solution', which this row does not have"):
        load_training_data(cfg, tokenizer, 64)
    path = write_jsonl(
        tmp_path / "e.jsonl", [{"prompt": "q", "completion": "a"}, {"prompt": "q", "completion": " "}]
    )
    with pytest.raises(DataError, match=r"row 2: the completion is empty"):
        load_training_data(DataConfig(path=str(path)), tokenizer, 64)


def test_json_and_parquet_files(tmp_path, tokenizer):
    from datasets import Dataset

    rows = [{"prompt": f"q{i}", "completion": f"a{i}"} for i in range(3)]
    (tmp_path / "d.json").write_text(json.dumps(rows))
    Dataset.from_list(rows).to_parquet(str(tmp_path / "d.parquet"))
    for name in ("d.json", "d.parquet"):
        assert read_rows(str(tmp_path / name)) == rows


def test_real_mawps_json_reads(tokenizer):
    path = SHARED_DATA / "mawps" / "validset.json"
    if not path.is_file():
        pytest.skip(f"{path} not present")
    cfg = DataConfig(
        path=str(path), prompt_template="{original_text}", completion_template="The answer is {ans}."
    )
    dataset, report = load_training_data(cfg, tokenizer, 1024)
    assert report.num_rows == 237 and len(dataset) == 237


def test_collator_pads_right_with_ignored_labels():
    batch = CompletionCollator(pad_token_id=0)(
        [{"input_ids": [5, 6, 7], "labels": [-100, 6, 7]}, {"input_ids": [8], "labels": [8]}]
    )
    assert batch["input_ids"].tolist() == [[5, 6, 7], [8, 0, 0]]
    assert batch["labels"].tolist() == [[-100, 6, 7], [8, -100, -100]]
    assert batch["attention_mask"].tolist() == [[1, 1, 1], [1, 0, 0]]
    assert batch["input_ids"].dtype == torch.long

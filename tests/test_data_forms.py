"""TRL's dataset forms (messages, prompt/completion as text and as chat turns, text) and the ways to hand
them over (a Dataset object, a save_to_disk folder, csv, compressed files, globs)."""

import gzip
import json

import pytest
from datasets import Dataset, DatasetDict

import wmss
from tests.conftest import arithmetic_rows, write_jsonl
from wmss.config import DataConfig
from wmss.data import IGNORE_INDEX, load_training_data, read_rows, tokenize_examples
from wmss.errors import DataError


def trl_rows(form: str, n: int = 8) -> list[dict]:
    """``n`` arithmetic examples in one of TRL's dataset forms."""
    out = []
    for r in arithmetic_rows(n):
        user = {"role": "user", "content": r["question"]}
        assistant = {"role": "assistant", "content": r["answer"]}
        out.append(
            {
                "messages": {"messages": [user, assistant]},
                "prompt_completion": {"prompt": r["question"], "completion": r["answer"]},
                "conversational_prompt_completion": {"prompt": [user], "completion": [assistant]},
                "text": {"text": r["question"] + " " + r["answer"]},
            }[form]
        )
    return out


FORMS = ("messages", "prompt_completion", "conversational_prompt_completion", "text")


def learnt(tokenizer, example) -> str:
    return tokenizer.decode([t for t in example["labels"] if t != IGNORE_INDEX])


@pytest.mark.parametrize("form", FORMS)
def test_each_trl_form_learns_what_trl_learns(tokenizer, form):
    data, report = tokenize_examples(trl_rows(form, 2), tokenizer, DataConfig(), 256)
    first = arithmetic_rows(1)[0]
    if form == "text":  # language modelling: all of the text, then EOS
        assert learnt(tokenizer, data[0]) == first["question"] + " " + first["answer"] + tokenizer.eos_token
        assert data[0]["labels"] == data[0]["input_ids"]
    else:  # the answer and the end of its turn, prompt masked
        assert learnt(tokenizer, data[0]) == first["answer"] + "<|im_end|>"
        assert tokenizer.decode(data[0]["input_ids"]).startswith("<|im_start|>user\n" + first["question"])
    assert report.num_examples == 2


def test_text_rows_get_bos_when_the_tokenizer_adds_one():
    from tokenizers import processors

    from tests.test_chat_turns import family_tokenizer

    tok = family_tokenizer("llama3-base")
    bos = tok.convert_tokens_to_ids("<|begin_of_text|>")
    tok._tokenizer.post_processor = processors.TemplateProcessing(
        single="<|begin_of_text|> $A", special_tokens=[("<|begin_of_text|>", bos)]
    )
    assert tok("1").input_ids[0] == bos
    data, _ = tokenize_examples([{"text": "1 + 1 = 2."}], tok, DataConfig(), 64)
    assert tok.decode(data[0]["input_ids"]) == "<|begin_of_text|>1 + 1 = 2.<|end_of_text|>"
    assert data[0]["labels"][0] == IGNORE_INDEX and learnt(tok, data[0]) == "1 + 1 = 2.<|end_of_text|>"


def test_save_to_disk_csv_gzip_and_glob(tmp_path, tokenizer):
    rows = trl_rows("prompt_completion", 4)
    Dataset.from_list(rows).save_to_disk(tmp_path / "saved")
    DatasetDict({"train": Dataset.from_list(rows), "test": Dataset.from_list(rows[:1])}).save_to_disk(
        tmp_path / "saved_dict"
    )
    Dataset.from_list(rows).to_csv(tmp_path / "d.csv", index=False)
    with gzip.open(tmp_path / "d.jsonl.gz", "wt") as f:
        f.writelines(json.dumps(r) + "\n" for r in rows)
    (tmp_path / "shards").mkdir()
    write_jsonl(tmp_path / "shards" / "a.jsonl", rows[:2])
    write_jsonl(tmp_path / "shards" / "b.jsonl", rows[2:])
    for path in ("saved", "saved_dict", "d.csv", "d.jsonl.gz", "shards/*.jsonl"):
        assert read_rows(str(tmp_path / path)) == rows, path
    assert read_rows(str(tmp_path / "saved_dict"), split="test") == rows[:1]
    with pytest.raises(DataError, match="splits train, test, not 'validation'"):
        read_rows(str(tmp_path / "saved_dict"), split="validation")
    with pytest.raises(DataError, match="glob must match at least one file"):
        read_rows(str(tmp_path / "shards" / "*.csv"))
    dataset, _ = load_training_data(DataConfig(path=str(tmp_path / "saved")), tokenizer, 256)
    assert len(dataset) == 4


def test_dataset_object_and_path_together_are_refused(tokenizer):
    with pytest.raises(DataError, match="given twice"):
        load_training_data(DataConfig(path="x.jsonl"), tokenizer, 64, Dataset.from_list(trl_rows("text")))


def run_config(model_dir, out, **data):
    return {
        "model": str(model_dir),
        "output_dir": str(out),
        "method": "sft",
        "sft": {"epochs": 1},
        "data": data,
        "train": {"learning_rate": 3e-3, "per_device_batch_size": 4, "max_length": 96, "save_steps": 100},
    }


@pytest.mark.parametrize("form", FORMS)
def test_run_takes_a_dataset_object_in_each_form(tmp_path, tiny_model_dir, form):
    manifest = wmss.run(
        run_config(tiny_model_dir, tmp_path / "run"), train_dataset=Dataset.from_list(trl_rows(form))
    )
    assert manifest["phases"]["final"]["status"] == "done"
    assert manifest["data"]["num_examples"] == 8


def test_run_takes_a_save_to_disk_folder(tmp_path, tiny_model_dir):
    DatasetDict({"train": Dataset.from_list(trl_rows("messages"))}).save_to_disk(tmp_path / "saved")
    manifest = wmss.run(run_config(tiny_model_dir, tmp_path / "run", path=str(tmp_path / "saved")))
    assert manifest["phases"]["final"]["status"] == "done"
    assert manifest["data"]["num_examples"] == 8

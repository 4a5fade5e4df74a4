"""Training data: files or hub datasets -> tokenised prompt/completion examples with a stable ``idx``.

Accepted layouts, per row:
- ``prompt`` and ``completion`` columns (strings);
- a chat ``messages`` column (list of ``{"role", "content"}``), whose last turn is the assistant's
  completion and whose earlier turns form the prompt;
- any columns, mapped by ``data.prompt_template`` / ``data.completion_template`` (Python format
  strings such as ``"{question}"``).

Loss is taken on completion tokens only: ``labels`` is -100 on prompt and padding positions.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
from datasets import Dataset

from wmss.config import DataConfig, quote
from wmss.errors import DataError
from wmss.io import read_jsonl, read_text

IGNORE_INDEX = -100
LOCAL_SUFFIXES = (".jsonl", ".json", ".parquet")


# ---------------------------------------------------------------- reading rows


def _read_json(path: Path) -> list[dict]:
    try:
        obj = json.loads(read_text(path))
    except json.JSONDecodeError as err:
        raise DataError(f"{path}, line {err.lineno}: not valid JSON ({err.msg}).") from None
    if isinstance(obj, dict) and isinstance(obj.get("data"), list):
        obj = obj["data"]
    if not isinstance(obj, list) or not all(isinstance(r, dict) for r in obj):
        raise DataError(f'{path}: expected a JSON list of objects (or {{"data": [...]}}).')
    return obj


def read_rows(
    path: str, split: str = "train", subset: str | None = None, bad_lines: list[int] | None = None
) -> list[dict]:
    """Rows of a local file, or of a Hugging Face dataset when ``path`` is not a local file.

    With ``bad_lines`` (a list), malformed ``.jsonl`` lines are skipped and their numbers appended to it
    instead of raising (evaluation counts them; training refuses them).
    """
    local = Path(path).expanduser()
    if local.is_file():
        if local.suffix == ".jsonl" or local.name.endswith(".jsonl.gz"):
            return read_jsonl(local, bad_lines)
        if local.suffix == ".json":
            return _read_json(local)
        if local.suffix == ".parquet":
            import pyarrow.parquet as pq

            try:  # no rows: datasets' reader would fail (a batch size of 0); the caller says "no rows"
                return Dataset.from_parquet(str(local)).to_list() if pq.read_metadata(local).num_rows else []
            except Exception as err:  # pyarrow and datasets raise many types for a damaged file
                raise DataError(
                    f"{local} cannot be read as a Parquet file ({type(err).__name__}: {quote(str(err))}); "
                    "check that it was written completely, or convert it to .jsonl."
                ) from None
        raise DataError(
            f"{local}: unsupported file type '{local.suffix}'; use .jsonl, .jsonl.gz, .json or .parquet."
        )
    if local.suffix in LOCAL_SUFFIXES or path.startswith((".", "/", "~")) or local.exists():
        raise DataError(
            f"data file {local} does not exist (or is not a file). Check the path (data.path, eval.path)."
        )
    from datasets import load_dataset

    try:
        return load_dataset(path, subset, split=split).to_list()
    except Exception as err:  # the hub client raises many types; the user needs one message
        raise DataError(
            f"could not load the dataset '{path}' (split '{split}') from the Hugging Face Hub: "
            f"{type(err).__name__}: {err}. If you are offline, give data.path as a local "
            ".jsonl/.json/.parquet file."
        ) from None


# ---------------------------------------------------------------- rendering text


def render_prompt(
    tokenizer: Any, prompt: str | list[dict], chat: bool, system_prompt: str | None = None
) -> str:
    """The exact text the model sees before its completion (training and evaluation alike).

    With ``chat`` and a tokenizer that has a chat template, the prompt becomes a user turn followed by
    the assistant header; otherwise it is the plain text, preceded by the BOS token when the
    tokenizer normally adds one. The result is tokenised with ``add_special_tokens=False``.
    """
    if isinstance(prompt, list):
        messages = list(prompt)
    else:
        messages = [{"role": "user", "content": prompt}]
    if system_prompt and messages[0].get("role") != "system":
        messages.insert(0, {"role": "system", "content": system_prompt})
    if (chat or isinstance(prompt, list)) and getattr(tokenizer, "chat_template", None):
        return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    if isinstance(prompt, list):
        raise DataError(
            "a chat 'messages' row needs a tokenizer with a chat template; this tokenizer has "
            "none. Use prompt/completion columns or data.prompt_template instead."
        )
    text = "\n\n".join(m["content"] for m in messages)
    bos = tokenizer.bos_token
    if bos and tokenizer("a").input_ids[:1] == [tokenizer.bos_token_id] and not text.startswith(bos):
        text = bos + text
    return text


def format_row(template: str, row: dict, where: str, key: str) -> str:
    try:
        return template.format_map(row)
    except KeyError as err:
        raise DataError(
            f"{where}: {key} refers to the column {err}, which this row does not have "
            f"(columns: {', '.join(sorted(row))})."
        ) from None
    except (IndexError, ValueError) as err:
        raise DataError(f"{key} {template!r} is not a valid format string: {err}.") from None


def row_to_text(row: dict, cfg: DataConfig, where: str) -> tuple[str | list[dict], str]:
    """(prompt, completion) of one row; the prompt may still be a list of chat messages."""
    if cfg.prompt_template is not None:
        prompt = format_row(cfg.prompt_template, row, where, "data.prompt_template")
        completion = format_row(cfg.completion_template or "", row, where, "data.completion_template")
    elif "prompt" in row and "completion" in row:
        prompt, completion = row["prompt"], row["completion"]
        if isinstance(completion, list):  # conversational prompt/completion
            completion = completion[-1].get("content", "") if completion else ""
    elif "messages" in row:
        messages = row["messages"]
        if not isinstance(messages, list) or not messages or not all(isinstance(m, dict) for m in messages):
            raise DataError(f"{where}: 'messages' must be a non-empty list of {{role, content}} objects.")
        if messages[-1].get("role") != "assistant":
            raise DataError(
                f"{where}: the last message must be the assistant's (it is the completion to learn)."
            )
        prompt, completion = messages[:-1], messages[-1].get("content", "")
        if not prompt:
            raise DataError(f"{where}: 'messages' has no turn before the assistant's answer.")
    else:
        raise DataError(
            f"{where}: cannot tell prompt from completion. The row has columns "
            f"{', '.join(sorted(row))}; expected 'prompt' and 'completion', or 'messages', or set "
            "data.prompt_template and data.completion_template (e.g. '{question}' and '{answer}')."
        )
    if not isinstance(prompt, (str, list)):
        raise DataError(
            f"{where}: the prompt must be text (or a list of chat messages); got {type(prompt).__name__} "
            f"{prompt!r}. Quote it in the data file, or build it with data.prompt_template."
        )
    if completion is not None and not isinstance(completion, str):
        raise DataError(
            f"{where}: the completion must be text; got {type(completion).__name__} {completion!r}. Quote it "
            "in the data file, or build it with data.completion_template (e.g. '{answer}')."
        )
    if not isinstance(completion, str) or not completion.strip():
        raise DataError(
            f"{where}: the completion is empty. Every example needs a target to learn; remove the row "
            "or fix its completion."
        )
    if isinstance(prompt, str) and not prompt.strip():
        raise DataError(f"{where}: the prompt is empty.")
    texts = [prompt] if isinstance(prompt, str) else [str(m.get("content", "")) for m in prompt]
    for what, text in [*(("prompt", t) for t in texts), ("completion", completion)]:
        check_unicode(text, f"{where}: the {what}")
    return prompt, completion


def check_unicode(text: str, what: str) -> None:
    """Raise DataError when ``text`` cannot be written as UTF-8 (it holds a lone surrogate, e.g. from a
    JSON ``"\\ud800"`` escape): it would fail later, when predictions or logs are written."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as err:
        raise DataError(
            f"{what} holds a lone surrogate ({text[err.start]!r} at character {err.start + 1}), which is not "
            "valid Unicode text; fix or remove that row (a JSON \\udXXX escape must come in a pair)."
        ) from None


def example_id(row: dict, field: str, where: str) -> int | str:
    """The ``data.id_field`` value of a row: present, and a whole number or a text."""
    if field not in row:
        raise DataError(
            f"{where}: data.id_field '{field}' is not a column of this row (columns: "
            f"{', '.join(sorted(row))}); every row needs its id, or unset data.id_field to number the rows."
        )
    value = row[field]
    if isinstance(value, bool) or not isinstance(value, (int, str)):
        raise DataError(
            f"{where}: data.id_field '{field}' must be a whole number or a text; got "
            f"{type(value).__name__} {quote(value)}."
        )
    if isinstance(value, str):
        check_unicode(value, f"{where}: the id")
    return value


# ---------------------------------------------------------------- tokenising


@dataclass
class DataReport:
    source: str
    num_rows: int
    num_examples: int
    num_truncated: int
    num_dropped: int
    max_length: int
    overlong: str
    mean_prompt_tokens: float
    mean_completion_tokens: float

    def to_dict(self) -> dict:
        return asdict(self)

    def summary(self) -> str:
        return (
            f"{self.num_examples} examples from {self.source} ({self.num_rows} rows; "
            f"{self.num_truncated} truncated, {self.num_dropped} dropped at max_length={self.max_length}; "
            f"mean tokens: prompt {self.mean_prompt_tokens:.0f}, "
            f"completion {self.mean_completion_tokens:.0f})"
        )


def tokenize_examples(
    rows: list[dict], tokenizer: Any, cfg: DataConfig, max_length: int, source: str = "data"
) -> tuple[Dataset, DataReport]:
    """Tokenise rows into ``idx``/``input_ids``/``labels`` (labels -100 outside the completion).

    Each example also keeps its rendered ``prompt`` text (what generation continues) and, with
    ``data.answer_field``, its ``gold`` answer as text.
    """
    if cfg.limit is not None:
        rows = rows[: cfg.limit]
    if not rows:
        raise DataError(f"{source} has no rows.")
    if tokenizer.eos_token_id is None:
        raise DataError(
            "the tokenizer has no EOS token, so a completion cannot end; set one on the tokenizer."
        )
    prompts, completions, ids, golds = [], [], [], []
    for i, row in enumerate(rows):
        where = f"{source}, row {i + 1}"
        prompt, completion = row_to_text(row, cfg, where)
        prompts.append(render_prompt(tokenizer, prompt, cfg.chat_template, cfg.system_prompt))
        completions.append(completion)
        ids.append(example_id(row, cfg.id_field, where) if cfg.id_field else i)
        if cfg.answer_field:
            if row.get(cfg.answer_field) is None:
                raise DataError(
                    f"{where}: data.answer_field '{cfg.answer_field}' is missing or null in this row "
                    f"(columns: {', '.join(sorted(row))})."
                )
            golds.append(str(row[cfg.answer_field]))
    prompt_ids = tokenizer(prompts, add_special_tokens=False).input_ids
    completion_ids = tokenizer(completions, add_special_tokens=False).input_ids
    out: dict[str, list] = {"idx": [], "input_ids": [], "labels": [], "prompt": []}
    if cfg.answer_field:
        out["gold"] = []
    truncated = dropped = 0
    p_tokens = c_tokens = 0
    for i, (p, c) in enumerate(zip(prompt_ids, completion_ids, strict=True)):
        c = c + [tokenizer.eos_token_id]
        if len(p) + len(c) > max_length:
            if cfg.overlong == "drop":
                dropped += 1
                continue
            room = max_length - len(p)
            if room < 1:
                raise DataError(
                    f"{source}, row {i + 1}: the prompt alone is {len(p)} tokens, longer than "
                    f"train.max_length={max_length}, so no completion token fits. Raise "
                    "train.max_length, shorten the prompt, or set data.overlong=drop to skip such rows."
                )
            c = c[:room]
            truncated += 1
        out["idx"].append(ids[i])
        out["input_ids"].append(p + c)
        out["labels"].append([IGNORE_INDEX] * len(p) + c)
        out["prompt"].append(prompts[i])
        if cfg.answer_field:
            out["gold"].append(golds[i])
        p_tokens += len(p)
        c_tokens += len(c)
    n = len(out["idx"])
    if len({type(i) for i in out["idx"]}) > 1:
        raise DataError(
            f"{source}: data.id_field '{cfg.id_field}' mixes whole numbers and texts; give every row an id "
            "of one type (e.g. all texts)."
        )
    if n == 0:
        raise DataError(
            f"{source}: every one of the {len(rows)} examples is longer than train.max_length="
            f"{max_length} and data.overlong=drop removed them all. Raise train.max_length."
        )
    if len(set(out["idx"])) != n:
        raise DataError(f"{source}: data.id_field '{cfg.id_field}' has duplicate values; ids must be unique.")
    report = DataReport(
        source, len(rows), n, truncated, dropped, max_length, cfg.overlong, p_tokens / n, c_tokens / n
    )
    return Dataset.from_dict(out), report


def load_training_data(cfg: DataConfig, tokenizer: Any, max_length: int) -> tuple[Dataset, DataReport]:
    if not cfg.path:
        raise DataError(
            "data.path is not set: give a .jsonl/.json/.parquet file or a Hugging Face dataset name."
        )
    rows = read_rows(cfg.path, cfg.split, cfg.subset)
    return tokenize_examples(rows, tokenizer, cfg, max_length, source=cfg.path)


# ---------------------------------------------------------------- batching


class CompletionCollator:
    """Right-pads ``input_ids`` (pad id), ``labels`` (-100) and builds the attention mask; passes each
    row's ``weak_entropy`` on when the rows have one."""

    def __init__(self, pad_token_id: int):
        self.pad_token_id = pad_token_id

    def __call__(self, features: list[dict]) -> dict[str, torch.Tensor]:
        width = max(len(f["input_ids"]) for f in features)
        input_ids = torch.full((len(features), width), self.pad_token_id, dtype=torch.long)
        labels = torch.full((len(features), width), IGNORE_INDEX, dtype=torch.long)
        attention_mask = torch.zeros((len(features), width), dtype=torch.long)
        for row, f in enumerate(features):
            n = len(f["input_ids"])
            input_ids[row, :n] = torch.as_tensor(f["input_ids"])
            labels[row, :n] = torch.as_tensor(f["labels"])
            attention_mask[row, :n] = 1
        batch = {"input_ids": input_ids, "attention_mask": attention_mask, "labels": labels}
        if "weak_entropy" in features[0]:  # WD-JT's entropy_matched control (wmss.weak_logits)
            batch["weak_entropy"] = torch.tensor([f["weak_entropy"] for f in features], dtype=torch.float32)
        return batch


def padding_free_collator() -> Any:
    """TRL's ``padding_free``: a batch's examples concatenated into one ``(1, total)`` row, no padding.

    transformers' ``DataCollatorWithFlattening``: ``input_ids`` and ``labels`` concatenated,
    ``position_ids`` restarting at 0 for every example, no attention mask, and each example's first
    label set to -100 so that no example's last token predicts the next one's first (``wmss.packing``).
    Our labels are already -100 there (the prompt), so the completion tokens are the padded batch's.
    """
    from transformers import DataCollatorWithFlattening

    return DataCollatorWithFlattening(return_position_ids=True, separator_id=IGNORE_INDEX)


def completion_collator(pad_token_id: int, padding_free: bool = False) -> Any:
    """The collator of completion examples: ``padding_free_collator()`` or ``CompletionCollator``."""
    return padding_free_collator() if padding_free else CompletionCollator(pad_token_id)

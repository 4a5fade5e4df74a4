"""Training data: files, folders, hub datasets or Dataset objects -> tokenised prompt/completion
examples with a stable ``idx``.

Accepted layouts, per row (TRL's dataset forms, and templates over any columns):
- ``prompt`` and ``completion`` columns, as strings or as lists of chat turns;
- a chat ``messages`` column (list of ``{"role", "content"}``), whose last turn is the assistant's
  completion and whose earlier turns form the prompt (``data.assistant_turns: all``: every
  assistant turn is learnt);
- a ``text`` column (language modelling: all of the text is learnt, then EOS);
- any columns, mapped by ``data.prompt_template`` / ``data.completion_template`` (Python format
  strings such as ``"{question}"``).

With a chat template the completion ends its turn as the template ends it (``assistant_turn``).
Loss is taken on completion tokens only: ``labels`` is -100 on prompt and padding positions.
"""

from __future__ import annotations

import json
import logging
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
from datasets import Dataset

from wmss.config import DataConfig, quote
from wmss.errors import DataError
from wmss.io import read_jsonl, read_text

log = logging.getLogger("wmss")

IGNORE_INDEX = -100
LOCAL_SUFFIXES = (".jsonl", ".json", ".parquet")
COMPRESSED = (".gz", ".bz2", ".xz", ".zst")
LOADERS = {".jsonl": "json", ".json": "json", ".csv": "csv", ".parquet": "parquet"}
"""``datasets`` builder of each file type that ``_read_with_datasets`` reads."""


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
    """Rows of a local file, a ``save_to_disk`` folder, files matched by a glob, or of a Hugging Face
    dataset when ``path`` is none of these.

    ``.jsonl``, ``.json`` and ``.parquet`` files are read here; ``.csv`` files, compressed files
    (``.gz``, ``.bz2``, ``.xz``, ``.zst``) and globs (``data/*.jsonl``) through ``datasets``' own
    loaders. With ``bad_lines`` (a list), malformed ``.jsonl`` lines are skipped and their numbers
    appended to it instead of raising (evaluation counts them; training refuses them).
    """
    if not isinstance(path, str):
        raise DataError(
            f"data.path must be a file, folder or dataset name (text); got a {type(path).__name__}. Pass "
            "a datasets.Dataset as wmss.run(..., train_dataset=...) instead."
        )
    if any(c in path for c in "*?[") or Path(path).suffix in COMPRESSED or Path(path).suffix == ".csv":
        return _read_with_datasets(path)
    if (Path(path).expanduser() / "dataset_info.json").is_file() or (
        Path(path).expanduser() / "dataset_dict.json"
    ).is_file():
        return dataset_rows(_load_from_disk(Path(path).expanduser()), split, path)
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
            f"{local}: unsupported file type '{local.suffix}'; use .jsonl, .json, .parquet or .csv (or one "
            "of these compressed: .gz, .bz2, .xz, .zst)."
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


def _read_with_datasets(path: str) -> list[dict]:
    """Rows of a ``.csv`` file, a compressed file, or every file a glob matches, read by ``datasets``."""
    import glob

    from datasets import load_dataset

    expanded = str(Path(path).expanduser())
    files = sorted(glob.glob(expanded)) if any(c in path for c in "*?[") else [expanded]
    if not files or not all(Path(f).is_file() for f in files):
        raise DataError(
            f"data file {path} does not exist (a glob must match at least one file). Check the path "
            "(data.path, eval.path)."
        )
    suffixes = {
        Path(f.removesuffix(Path(f).suffix) if Path(f).suffix in COMPRESSED else f).suffix for f in files
    }
    if len(suffixes) != 1 or next(iter(suffixes)) not in LOADERS:
        raise DataError(
            f"{path}: the files must be all of one type among {', '.join(LOADERS)} (optionally compressed); "
            f"found {', '.join(sorted(s or '(none)' for s in suffixes))}."
        )
    try:
        return load_dataset(LOADERS[suffixes.pop()], data_files=files, split="train").to_list()
    except Exception as err:  # datasets raises many types for a bad file; the user needs one message
        raise DataError(f"{path}: could not be read by datasets: {type(err).__name__}: {err}") from None


def _load_from_disk(path: Path) -> Any:
    from datasets import load_from_disk

    try:
        return load_from_disk(str(path))
    except Exception as err:  # a damaged or foreign folder
        raise DataError(f"{path}: not a readable save_to_disk folder: {type(err).__name__}: {err}") from None


def dataset_rows(dataset: Any, split: str = "train", source: str = "the dataset") -> list[dict]:
    """Rows of a ``datasets.Dataset``, of a ``DatasetDict``'s ``split``, or of a list of mappings."""
    from datasets import DatasetDict, IterableDataset, IterableDatasetDict

    if isinstance(dataset, (DatasetDict, IterableDatasetDict)):
        if split not in dataset:
            raise DataError(
                f"{source} has the splits {', '.join(dataset)}, not '{split}': set data.split to one of them."
            )
        dataset = dataset[split]
    if isinstance(dataset, Dataset):
        return dataset.to_list()
    if isinstance(dataset, IterableDataset):
        return list(dataset)
    if isinstance(dataset, (list, tuple)) and all(isinstance(r, dict) for r in dataset):
        return [dict(r) for r in dataset]
    raise DataError(
        f"{source}: expected a datasets.Dataset, a DatasetDict or a list of row mappings; got "
        f"{type(dataset).__name__}."
    )


# ---------------------------------------------------------------- rendering text


def chat_messages(prompt: str | list[dict], system_prompt: str | None = None) -> list[dict]:
    """The chat turns before the completion: a plain prompt becomes one user turn."""
    messages = list(prompt) if isinstance(prompt, list) else [{"role": "user", "content": prompt}]
    if system_prompt and messages[0].get("role") != "system":
        messages.insert(0, {"role": "system", "content": system_prompt})
    return messages


def uses_chat_template(tokenizer: Any, prompt: str | list[dict], chat: bool) -> bool:
    """Whether ``prompt`` is rendered with the tokenizer's chat template (else as plain text)."""
    return bool((chat or isinstance(prompt, list)) and getattr(tokenizer, "chat_template", None))


def render_prompt(
    tokenizer: Any, prompt: str | list[dict], chat: bool, system_prompt: str | None = None
) -> str:
    """The exact text the model sees before its completion (training and evaluation alike).

    With ``chat`` and a tokenizer that has a chat template, the prompt becomes a user turn followed by
    the assistant header; otherwise it is the plain text, preceded by the BOS token when the
    tokenizer normally adds one. The result is tokenised with ``add_special_tokens=False``.
    """
    messages = chat_messages(prompt, system_prompt)
    if uses_chat_template(tokenizer, prompt, chat):
        return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    if isinstance(prompt, list):
        raise DataError(
            "a chat 'messages' row needs a tokenizer with a chat template; this tokenizer has "
            "none. Use prompt/completion columns or data.prompt_template instead."
        )
    text = "\n\n".join(m["content"] for m in messages)
    return _with_bos(tokenizer, text)


def _with_bos(tokenizer: Any, text: str) -> str:
    bos = tokenizer.bos_token
    if bos and tokenizer("a").input_ids[:1] == [tokenizer.bos_token_id] and not text.startswith(bos):
        text = bos + text
    return text


def special_ids(tokenizer: Any) -> set[int]:
    """Ids of the tokenizer's special tokens, including added ones marked special (``<|eot_id|>``)."""
    added = getattr(tokenizer, "added_tokens_decoder", {}) or {}
    return set(tokenizer.all_special_ids) | {i for i, token in added.items() if token.special}


def assistant_turn(
    tokenizer: Any, messages: list[dict], prompt_text: str, completion: str
) -> tuple[str, str]:
    """The assistant's turn after ``prompt_text`` as the chat template renders it: (content, turn end).

    The turn end is the text the template writes after the content (ChatML ``<|im_end|>``, Llama 3
    ``<|eot_id|>``, Gemma ``<end_of_turn>``), without the whitespace that follows it: generation
    stops at the end-of-turn token, so what comes after it (ChatML's and Gemma's ``\n``) is never
    generated and is not learnt. Where the template rewrites the content (e.g. trims it), the whole
    rendered turn is the content and the turn end is empty. A template whose turn does not start
    where its generation prompt ends gives ``(completion, "")``: the caller ends it with EOS.
    """
    full = tokenizer.apply_chat_template(
        [*messages, {"role": "assistant", "content": completion}], tokenize=False
    )
    if not full.startswith(prompt_text):
        return completion, ""
    turn = full[len(prompt_text) :].rstrip()
    if turn.startswith(completion):
        return completion, turn[len(completion) :]
    return turn, ""


def finish_completion(tokenizer: Any, content_ids: list[int], turn_end_ids: list[int]) -> list[int]:
    """The completion's tokens: content, then the template's turn end, or EOS where the turn end has
    no special token to stop generation at (plain text, or a template that ends turns with text)."""
    ids = content_ids + turn_end_ids
    if not turn_end_ids or ids[-1] not in special_ids(tokenizer):
        ids = ids + [tokenizer.eos_token_id]
    return ids


def turn_end_id(tokenizer: Any) -> int | None:
    """The special token that ends an assistant turn in the chat template, when it is not the EOS token
    (Llama 3 ``<|eot_id|>``, Gemma ``<end_of_turn>``, ChatML ``<|im_end|>`` with a separate EOS such as
    Qwen2.5's base tokenizer); None without a template or when the turn ends with EOS."""
    if not getattr(tokenizer, "chat_template", None):
        return None
    messages = [{"role": "user", "content": "1 + 1?"}]
    try:
        prompt = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
        _, end = assistant_turn(tokenizer, messages, prompt, "2")
    except Exception:  # a template that cannot render this probe has no turn end to report
        return None
    ids = tokenizer(end, add_special_tokens=False).input_ids if end else []
    if ids and ids[-1] in special_ids(tokenizer) and ids[-1] != tokenizer.eos_token_id:
        return ids[-1]
    return None


def template_system_turn(tokenizer: Any) -> bool:
    """Whether the chat template adds a system turn of its own when the messages have none (SmolLM2's
    and Qwen2.5's do: "You are a helpful AI assistant named SmolLM …"). TRL renders plain-text
    prompt/completion rows without a template, so without that system turn."""
    probe_system, probe_user = "wmss-probe-system", "wmss-probe-user"
    try:
        with_system = tokenizer.apply_chat_template(
            [{"role": "system", "content": probe_system}, {"role": "user", "content": probe_user}],
            tokenize=False,
            add_generation_prompt=True,
        )
        plain = tokenizer.apply_chat_template(
            [{"role": "user", "content": probe_user}], tokenize=False, add_generation_prompt=True
        )
    except Exception:  # templates that refuse a system turn (Gemma) cannot add one
        return False
    if probe_system not in with_system:
        return False
    header = with_system[: with_system.index(probe_system)].removeprefix(tokenizer.bos_token or "")
    return bool(header) and header in plain[: plain.index(probe_user)]


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


def is_text_row(row: dict, cfg: DataConfig) -> bool:
    """A row of TRL's language-modelling form: a ``text`` column and none of the other forms' columns."""
    return (
        cfg.prompt_template is None
        and "text" in row
        and not ("prompt" in row and "completion" in row)
        and "messages" not in row
    )


def row_to_text(row: dict, cfg: DataConfig, where: str) -> tuple[str | list[dict], str]:
    """(prompt, completion) of one row; the prompt may still be a list of chat messages. A ``text`` row
    (language modelling) has the empty prompt: all of its text is learnt."""
    text_row = False
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
    elif is_text_row(row, cfg):
        prompt, completion, text_row = "", row["text"], True
    else:
        raise DataError(
            f"{where}: cannot tell prompt from completion. The row has columns "
            f"{', '.join(sorted(row))}; expected 'prompt' and 'completion', or 'messages', or 'text', or set "
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
    if isinstance(prompt, str) and not prompt.strip() and not text_row:
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

    A completion ends its turn as the chat template ends it (``assistant_turn``), or with EOS when
    it is rendered as plain text. Each example also keeps its rendered ``prompt`` text (what
    generation continues) and, with ``data.answer_field``, its ``gold`` answer as text.
    """
    if cfg.limit is not None:
        rows = rows[: cfg.limit]
    if not rows:
        raise DataError(f"{source} has no rows.")
    if tokenizer.eos_token_id is None:
        raise DataError(
            "the tokenizer has no EOS token, so a completion cannot end; set one on the tokenizer."
        )
    prompts, contents, turn_ends, chats, ids, golds = [], [], [], [], [], []
    segmented: dict[int, list[tuple[str, bool]]] = {}  # rows learnt in several pieces (text, all turns)
    plain_chat_rows = 0
    for i, row in enumerate(rows):
        where = f"{source}, row {i + 1}"
        prompt, completion = row_to_text(row, cfg, where)
        chat = uses_chat_template(tokenizer, prompt, cfg.chat_template)
        if is_text_row(row, cfg):
            prompts.append(_with_bos(tokenizer, ""))
            eos = tokenizer.eos_token
            segmented[i] = [
                (prompts[-1], False),
                (completion if completion.endswith(eos) else completion + eos, True),
            ]
        elif cfg.assistant_turns == "all" and isinstance(prompt, list) and "messages" in row:
            prompts.append(render_prompt(tokenizer, prompt, True, cfg.system_prompt))
            segmented[i] = conversation_segments(tokenizer, row["messages"], cfg.system_prompt, where)
        else:
            prompts.append(render_prompt(tokenizer, prompt, cfg.chat_template, cfg.system_prompt))
            plain_chat_rows += chat and isinstance(prompt, str)
        content, end = completion, ""
        if chat and i not in segmented:
            content, end = assistant_turn(
                tokenizer, chat_messages(prompt, cfg.system_prompt), prompts[-1], completion
            )
        contents.append(content)
        turn_ends.append(end)
        chats.append(chat)
        ids.append(example_id(row, cfg.id_field, where) if cfg.id_field else i)
        if cfg.answer_field:
            if row.get(cfg.answer_field) is None:
                raise DataError(
                    f"{where}: data.answer_field '{cfg.answer_field}' is missing or null in this row "
                    f"(columns: {', '.join(sorted(row))})."
                )
            golds.append(str(row[cfg.answer_field]))
    if plain_chat_rows and not cfg.system_prompt and template_system_turn(tokenizer):
        log.warning(
            "%s: %d plain-text prompts are rendered with the chat template, which adds a system turn of its "
            "own (the prompt starts %r). TRL renders such rows without a template. Set "
            "data.chat_template=false for plain text as TRL does, or data.system_prompt to choose the "
            "system turn.",
            source,
            plain_chat_rows,
            prompts[0][:80],
        )
    prompt_ids = tokenizer(prompts, add_special_tokens=False).input_ids
    content_ids = tokenizer(contents, add_special_tokens=False).input_ids
    end_ids = tokenizer(turn_ends, add_special_tokens=False).input_ids
    out: dict[str, list] = {"idx": [], "input_ids": [], "labels": [], "prompt": []}
    if cfg.answer_field:
        out["gold"] = []
    truncated = dropped = 0
    p_tokens = c_tokens = 0
    for i, p in enumerate(prompt_ids):
        if i in segmented:
            p, c, labels = _segment_ids(tokenizer, segmented[i])
        else:
            c = (
                finish_completion(tokenizer, content_ids[i], end_ids[i])
                if chats[i]
                else content_ids[i] + [tokenizer.eos_token_id]
            )
            labels = c
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
            c, labels = c[:room], labels[:room]
            truncated += 1
        out["idx"].append(ids[i])
        out["input_ids"].append(p + c)
        out["labels"].append([IGNORE_INDEX] * len(p) + labels)
        out["prompt"].append(prompts[i])
        if cfg.answer_field:
            out["gold"].append(golds[i])
        p_tokens += len(p)
        c_tokens += sum(label != IGNORE_INDEX for label in labels)
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


def conversation_segments(
    tokenizer: Any, messages: list[dict], system_prompt: str | None, where: str
) -> list[tuple[str, bool]]:
    """``(text, learnt)`` pieces of a whole conversation for ``data.assistant_turns: all``: every
    assistant turn (content and turn end, as in ``assistant_turn``) is learnt, the rest is not."""
    messages = chat_messages(messages, system_prompt)
    segments: list[tuple[str, bool]] = []
    done = ""
    for i, message in enumerate(messages):
        if message.get("role") != "assistant":
            continue
        content = message.get("content")
        if not isinstance(content, str) or not content.strip():
            raise DataError(f"{where}: message {i + 1} (assistant) has no text content to learn.")
        if i == 0:
            raise DataError(f"{where}: 'messages' starts with the assistant's turn; nothing comes before it.")
        prompt_text = tokenizer.apply_chat_template(messages[:i], tokenize=False, add_generation_prompt=True)
        if not prompt_text.startswith(done):
            raise DataError(
                f"{where}: the chat template renders the earlier turns differently once the conversation "
                "goes on (some templates drop earlier reasoning), so the assistant turns cannot be cut "
                "out one by one. Use data.assistant_turns=last."
            )
        content, end = assistant_turn(tokenizer, messages[:i], prompt_text, content)
        segments += [(prompt_text[len(done) :], False), (content, True), (end, True)]
        done = prompt_text + content + end
    return segments


def _segment_ids(tokenizer: Any, segments: list[tuple[str, bool]]) -> tuple[list[int], list[int], list[int]]:
    """(prompt ids, the rest, its labels) of ``conversation_segments``-style pieces: learnt pieces come
    as (content, turn end) pairs and end as ``finish_completion`` ends them; the prompt is the first
    piece."""
    first, rest = segments[0], segments[1:]
    prompt = tokenizer(first[0], add_special_tokens=False).input_ids
    ids: list[int] = []
    labels: list[int] = []
    pending: list[int] | None = None
    for text, learnt in rest:
        piece = tokenizer(text, add_special_tokens=False).input_ids if text else []
        if not learnt:
            ids += piece
            labels += [IGNORE_INDEX] * len(piece)
        elif pending is None:
            pending = piece
        else:
            done = finish_completion(tokenizer, pending, piece)
            ids += done
            labels += done
            pending = None
    if pending is not None:  # a text row: one learnt piece, its EOS already in the text
        ids += pending
        labels += pending
    return prompt, ids, labels


def load_training_data(
    cfg: DataConfig, tokenizer: Any, max_length: int, dataset: Any = None
) -> tuple[Dataset, DataReport]:
    """The tokenised training data: ``data.path``'s rows, or those of ``dataset`` (a ``datasets.Dataset``,
    a ``DatasetDict`` whose ``data.split`` is taken, or a list of rows) when it is given."""
    if dataset is not None:
        if cfg.path:
            raise DataError(
                f"the training data is given twice: as a dataset object and as data.path={cfg.path}. "
                "Leave data.path unset when passing train_dataset."
            )
        rows = dataset_rows(dataset, cfg.split, "train_dataset")
        return tokenize_examples(rows, tokenizer, cfg, max_length, source="train_dataset")
    if not cfg.path:
        raise DataError(
            "data.path is not set: give a .jsonl/.json/.parquet/.csv file, a save_to_disk folder, a glob "
            "or a Hugging Face dataset name."
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

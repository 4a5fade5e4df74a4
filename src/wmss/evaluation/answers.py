"""Find the final answer in a model's output, and the gold answer in a GSM8K solution."""

from __future__ import annotations

import re

_BOXED = re.compile(r"\\boxed\s*\{")
_ANSWER_IS = re.compile(r"\b(?:final\s+)?answer\s+is\b\s*:?\s*(.+?)(?:\.(?=\s|$)|\n|$)", re.IGNORECASE)
_HASHES = re.compile(r"####\s*([^\n]*)")
_NUMBER = re.compile(r"(?:(?<![\w.)])-)?(?:\d{1,3}(?:,\d{3})+|\d+)(?:\.\d+)?(?:\s*/\s*\d+)?")
_THOUSANDS = re.compile(r"-?\d{1,3}(?:,\d{3})+(?:\.\d+)?")


def extract_answer(text: str) -> str | None:
    """Return the final answer stated in ``text``, or None when it states none.

    Looks, in order, for: the last ``\\boxed{...}`` (nested braces allowed), the last
    "the answer is X" / "the final answer is X", the last ``#### X``, and the last number.
    Dollar signs, a trailing period and ``\\( \\)`` wrappers are removed; unit words are kept
    (the grader ignores them). Thousands separators in a plain number are dropped ("1,234" -> "1234").
    """
    for candidate in (_last_boxed(text), _last_match(_ANSWER_IS, text), _last_match(_HASHES, text)):
        if candidate is not None:
            cleaned = _clean(candidate)
            if cleaned:
                return cleaned
    numbers = _NUMBER.findall(text)
    return _clean(numbers[-1]) if numbers else None


def gold_from_gsm8k(answer: str) -> str:
    """The final answer of a GSM8K ``answer`` field: the text after the last ``####``, commas removed."""
    if "####" not in answer:
        raise ValueError(f"GSM8K answer has no '####' final-answer marker: {answer[-200:]!r}")
    gold = answer.rsplit("####", 1)[1].strip().replace(",", "")
    if not gold:
        raise ValueError(f"GSM8K answer has nothing after its '####' marker: {answer[-200:]!r}")
    return gold


def _last_boxed(text: str) -> str | None:
    """Content of the last ``\\boxed{...}`` whose braces are balanced, or None."""
    for match in reversed(list(_BOXED.finditer(text))):
        depth = 1
        for position in range(match.end(), len(text)):
            if text[position] == "{":
                depth += 1
            elif text[position] == "}":
                depth -= 1
                if depth == 0:
                    return text[match.end() : position]
    return None


def _last_match(pattern: re.Pattern[str], text: str) -> str | None:
    """First group of the last match of ``pattern`` in ``text``, or None."""
    matches = pattern.findall(text)
    return matches[-1] if matches else None


def _clean(answer: str) -> str:
    """Strip wrappers that are not part of the answer itself."""
    answer = answer.strip()
    if answer.startswith("\\(") and answer.endswith("\\)"):
        answer = answer[2:-2]
    answer = answer.replace("\\$", "").replace("$", "").strip(" *").rstrip(".").strip()
    if _THOUSANDS.fullmatch(answer):
        answer = answer.replace(",", "")
    return answer


_CHOICE_PATTERNS = (
    re.compile(r"\\boxed\s*\{\s*\(?([A-E])\)?\s*\}"),
    re.compile(r"answer\s+is\s*:?\s*\(?([A-E])\b\)?", re.IGNORECASE),
    re.compile(r"(?:^|[\s(])\(?([A-E])\)(?=\s|$|[.,])"),
    re.compile(r"(?:^|\s)([A-E])(?=[.\s]*$)"),
)


def extract_choice(text: str) -> str | None:
    """The option letter (A-E) a multiple-choice answer states: ``\\boxed{B}`` first, then "the answer
    is (B)", then the last "(B)" / "B)", then a letter standing alone at the very end."""
    for pattern in _CHOICE_PATTERNS:
        matches = pattern.findall(text)
        if matches:
            return matches[-1].upper()
    return None

"""Decide whether a predicted answer equals the gold answer, with ``math_verify``.

``math_verify`` enforces its time limits with ``signal.alarm``, which Python allows only in the main
thread. Called from any other thread, grading runs without a time limit instead of failing.
"""

from __future__ import annotations

import re
import threading
from dataclasses import dataclass
from itertools import product

from math_verify import parse, verify
from math_verify.errors import TimeoutException
from sympy import Basic, MatrixBase

_TIMEOUT_SECONDS = 5
_NUMBER_WITH_UNITS = re.compile(r"(-?[\d,]*\.?\d+(?:\s*/\s*\d+)?)\s+[A-Za-z][A-Za-z .]*")


@dataclass(frozen=True)
class Grade:
    """Outcome of grading one prediction; ``error`` says why math_verify could not decide, if it could not."""

    correct: bool
    error: str | None = None


def is_correct(prediction: str | None, gold: str) -> bool:
    """True when ``prediction`` is mathematically equal to ``gold`` ("0.5" == "1/2" == "\\frac{1}{2}").

    A None or empty prediction is wrong. Raises ValueError when ``gold`` cannot be parsed.
    """
    return grade(prediction, gold).correct


def grade(prediction: str | None, gold: str) -> Grade:
    """Grade ``prediction`` against ``gold``; a math_verify failure gives a wrong Grade with ``error`` set.

    Raises ValueError when ``gold`` cannot be parsed as a mathematical answer.
    """
    try:
        gold_parsed = _parse(gold)
    except (Exception, TimeoutException) as error:
        raise ValueError(f"cannot parse gold answer {gold!r}: {_describe(error)}") from error
    if not any(isinstance(item, (Basic, MatrixBase)) for item in gold_parsed):
        raise ValueError(
            f"cannot parse gold answer {gold!r}: math_verify finds no mathematical expression in it"
        )
    if prediction is None or not prediction.strip():
        return Grade(correct=False)
    try:
        predicted = _parse(prediction)
    except (Exception, TimeoutException) as error:
        return Grade(
            correct=False, error=f"math_verify failed on prediction {prediction!r}: {_describe(error)}"
        )
    error = None
    for gold_item, predicted_item in product(gold_parsed, predicted):
        try:
            if verify(gold_item, predicted_item, timeout_seconds=_timeout(), raise_on_error=True):
                return Grade(correct=True)
        except (Exception, TimeoutException) as failure:
            if error is None:
                error = f"math_verify failed comparing {prediction!r} with {gold!r}: {_describe(failure)}"
    return Grade(correct=False, error=error)


def _parse(answer: str) -> list:
    """Parse a bare answer with math_verify, read as LaTeX inside ``\\boxed{}``.

    Unit words after a number ("72 dollars") are dropped first; LaTeX would read them as a product of symbols.
    """
    number_with_units = _NUMBER_WITH_UNITS.fullmatch(answer.strip())
    if number_with_units:
        answer = number_with_units.group(1)
    return parse(f"\\boxed{{{answer}}}", parsing_timeout=_timeout(), raise_on_error=True)


def _timeout() -> int | None:
    """math_verify's time limit: on in the main thread, off elsewhere (signal.alarm works only there)."""
    return _TIMEOUT_SECONDS if threading.current_thread() is threading.main_thread() else None


def _describe(error: BaseException) -> str:
    """Short text for an exception, for the predictions file."""
    return f"{type(error).__name__}: {error}" if str(error) else type(error).__name__

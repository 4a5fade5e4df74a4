"""Answer extraction and math-aware grading, on real-looking model outputs and the real math_verify."""

import threading

import pytest

from wmss.evaluation import extract_answer, is_correct
from wmss.evaluation.answers import gold_from_gsm8k
from wmss.evaluation.grading import grade


@pytest.mark.parametrize(
    ("output", "expected"),
    [
        ("So the total is \\boxed{42}.", "42"),
        ("First \\boxed{3}, but wait, it is \\boxed{\\frac{3}{4}}.", "\\frac{3}{4}"),
        ("Thus $x = \\boxed{\\frac{1}{\\sqrt{2}}}$ and we are done.", "\\frac{1}{\\sqrt{2}}"),
        ("The answer is \\boxed{1,234}.", "1234"),
        ("She has 5 + 3 = 8 apples left. The answer is 42.", "42"),
        ("The answer is 7. Let me check: the final answer is 9.\nYes.", "9"),
        ("The final answer is: \\(7\\)", "7"),
        ("The answer is $12.", "12"),
        ("The answer is 3.5 apples.", "3.5 apples"),
        ("Natalia sold 48/2 = 24 clips in May.\n#### 1,234", "1234"),
        ("The temperature dropped by 10 degrees to -5", "-5"),
        ("10-5 = 5", "5"),
        ("Each costs 0.25 dollars, so she pays 2.75.", "2.75"),
        ("She ate 3/4 of the pie", "3/4"),
        ("It costs $12", "12"),
        ("He has 12 apples", "12"),
        ("In total there are 1,234,567 people", "1234567"),
        ("I do not know how to solve this.", None),
        ("", None),
    ],
)
def test_extract_answer(output: str, expected: str | None) -> None:
    assert extract_answer(output) == expected


def test_boxed_with_unbalanced_braces_falls_back() -> None:
    assert extract_answer("so 3 + 4 = 7 \\boxed{7") == "7"


def test_gold_from_gsm8k() -> None:
    assert gold_from_gsm8k("She earns 12 * 100 = <<12*100=1200>>1200.\n#### 1,200") == "1200"
    with pytest.raises(ValueError, match="####"):
        gold_from_gsm8k("no marker here")


@pytest.mark.parametrize(
    ("prediction", "gold"),
    [
        ("0.5", "1/2"),
        ("\\frac{1}{2}", "0.5"),
        ("\\frac{3}{4}", "0.75"),
        ("\\dfrac{3}{4}", "3/4"),
        ("12.0", "12"),
        ("1,234", "1234"),
        ("1234", "1,234"),
        ("-3", "-3"),
        ("12 apples", "12"),
        ("72 dollars", "72"),
        ("$12", "12"),
        ("x + 1", "1 + x"),
    ],
)
def test_equivalent_answers_are_correct(prediction: str, gold: str) -> None:
    assert is_correct(prediction, gold)


@pytest.mark.parametrize(
    ("prediction", "gold"),
    [("7", "8"), ("3", "-3"), ("12", "12.5"), ("3\\frac{1}{2}", "\\frac{1}{2}"), (None, "8"), ("", "8")],
)
def test_different_answers_are_wrong(prediction: str | None, gold: str) -> None:
    assert not is_correct(prediction, gold)


@pytest.mark.parametrize("gold", ["", "   ", "?"])
def test_unparsable_gold_raises(gold: str) -> None:
    with pytest.raises(ValueError, match="cannot parse gold answer"):
        is_correct("1", gold)


def test_math_verify_failure_is_wrong_and_reported() -> None:
    outcome = grade("1", "\\frac{1}{0}")
    assert not outcome.correct
    assert outcome.error is not None and "math_verify failed" in outcome.error


def test_grading_works_outside_the_main_thread() -> None:
    results = []
    worker = threading.Thread(target=lambda: results.append(is_correct("0.5", "\\frac{1}{2}")))
    worker.start()
    worker.join()
    assert results == [True]

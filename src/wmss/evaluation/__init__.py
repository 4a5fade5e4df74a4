"""Evaluation: greedy generation, answer extraction and math-aware grading."""

from wmss.evaluation.answers import extract_answer
from wmss.evaluation.evaluate import EvalResult, evaluate_generations, evaluate_model
from wmss.evaluation.generation import generate_greedy
from wmss.evaluation.grading import is_correct

__all__ = [
    "EvalResult",
    "evaluate_generations",
    "evaluate_model",
    "extract_answer",
    "generate_greedy",
    "is_correct",
]

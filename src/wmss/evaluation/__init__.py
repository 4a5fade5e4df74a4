"""Evaluation: greedy generation, answer extraction and math-aware grading."""

from wmss.evaluation.answers import extract_answer
from wmss.evaluation.grading import is_correct

__all__ = ["extract_answer", "is_correct"]

"""MAWPS rows as training examples: the question and a short solution derived from ``equation``.

MAWPS gives each problem an equation such as ``x=(2.0*6.0)+3`` and its value ``ans``, but no worked
solution. Two derived formats (the study picks one on the validation split):

``worked`` (one operation per line, innermost first, then the answer line)::

    2 * 6 = 12
    12 + 3 = 15
    The answer is 15.

``equation`` (the whole expression at once)::

    x = (2 * 6) + 3 = 15
    The answer is 15.

Numbers are written as integers when whole, else rounded to 6 decimals (what math-verify compares).
The answer line always states ``ans``, the value the test set is graded against. A row whose
equation is not ``x = <expression>``, or whose expression does not evaluate to ``ans``, gets the
answer line alone; ``prepare`` counts those rows.
"""

from __future__ import annotations

import ast
import json
import operator
import random
import re
from pathlib import Path

from wmss.errors import DataError
from wmss.io import atomic_write_json, atomic_write_jsonl

FORMATS = ("worked", "equation")
_OPS = {ast.Add: ("+", operator.add), ast.Sub: ("-", operator.sub), ast.Mult: ("*", operator.mul),
        ast.Div: ("/", operator.truediv)}  # fmt: skip
_ASSIGNMENT = re.compile(r"^\s*([A-Za-z_]\w*)\s*=(.*)$")


def number(value: float) -> str:
    """``12.0`` -> ``12``, ``1.8333333333333335`` -> ``1.833333``, ``-0.5`` -> ``-0.5``."""
    rounded = round(float(value), 6)
    if rounded == int(rounded):
        return str(int(rounded))
    return f"{rounded:.6f}".rstrip("0").rstrip(".")


class _Unsupported(ValueError):
    pass


def _expression(equation: str) -> ast.expr | None:
    """The right-hand side of ``x = <expression without x>``, parsed, or None."""
    match = _ASSIGNMENT.match(equation)
    if not match:
        return None
    variable, rhs = match.groups()
    if re.search(r"[A-Za-z_]", rhs):  # the unknown (or anything else) on the right: not a plain expression
        return None
    try:
        return ast.parse(rhs.strip(), mode="eval").body
    except SyntaxError:
        return None


def _evaluate(node: ast.expr, steps: list[str]) -> tuple[float, str]:
    """Value of ``node`` and its text; appends ``a op b = c`` to ``steps`` for each operation."""
    if isinstance(node, ast.Constant) and isinstance(node.value, (int, float)):
        return float(node.value), number(node.value)
    if isinstance(node, ast.UnaryOp) and isinstance(node.op, (ast.USub, ast.UAdd)):
        value, _ = _evaluate(node.operand, steps)
        value = -value if isinstance(node.op, ast.USub) else value
        return value, number(value)
    if isinstance(node, ast.BinOp) and type(node.op) in _OPS:
        left, left_text = _evaluate(node.left, steps)
        right, right_text = _evaluate(node.right, steps)
        symbol, func = _OPS[type(node.op)]
        if symbol == "/" and right == 0:
            raise _Unsupported("division by zero")
        value = func(left, right)
        steps.append(f"{left_text} {symbol} {right_text} = {number(value)}")
        return value, number(value)
    raise _Unsupported(ast.dump(node))


def _infix(node: ast.expr, top: bool = True) -> str:
    """The expression with numbers written by ``number`` and brackets around inner operations."""
    if isinstance(node, ast.Constant):
        return number(node.value)
    if isinstance(node, ast.UnaryOp):
        return (
            number(-node.operand.value)
            if isinstance(node.operand, ast.Constant)
            else "-" + _infix(node.operand, False)
        )
    text = f"{_infix(node.left, False)} {_OPS[type(node.op)][0]} {_infix(node.right, False)}"
    return text if top else f"({text})"


def solution(equation: str, answer: float, fmt: str = "worked") -> tuple[str, bool]:
    """The completion for one MAWPS row and whether it shows working (False: answer line only)."""
    if fmt not in FORMATS:
        raise ValueError(f"unknown solution format {fmt!r}; use one of {', '.join(FORMATS)}")
    final = f"The answer is {number(answer)}."
    tree = _expression(equation)
    if tree is None:
        return final, False
    steps: list[str] = []
    try:
        value, _ = _evaluate(tree, steps)
    except _Unsupported:
        return final, False
    if abs(value - float(answer)) > 1e-4 * max(1.0, abs(float(answer))):
        return final, False
    if fmt == "equation":
        steps = [f"x = {_infix(tree)} = {number(value)}"] if steps else []
    return "\n".join([*steps, final]), True


def load_rows(path: str | Path) -> list[dict]:
    path = Path(path)
    if not path.is_file():
        raise DataError(
            f"{path} does not exist. The MAWPS study reads trainset.json, validset.json and testset.json "
            "from the study's data_dir (set data_dir in the study config, or WMSS_DATA_DIR to the folder "
            "that holds mawps/)."
        )
    try:
        rows = json.loads(path.read_text())
    except json.JSONDecodeError as error:
        raise DataError(f"{path}: not valid JSON ({error.msg} at line {error.lineno}).") from error
    if not isinstance(rows, list):
        raise DataError(f"{path}: expected a JSON list of MAWPS rows, found {type(rows).__name__}.")
    for i, row in enumerate(rows):
        missing = [k for k in ("original_text", "equation", "ans") if k not in row]
        if missing:
            raise DataError(f"{path}: row {i} lacks {', '.join(missing)}; is this a MAWPS file?")
    return rows


def convert(rows: list[dict], fmt: str) -> tuple[list[dict], int]:
    """Training rows ``{id, question, solution, answer}`` and how many show no working."""
    out, bare = [], 0
    for row in rows:
        text, worked = solution(str(row["equation"]), float(row["ans"]), fmt)
        bare += not worked
        out.append(
            {
                "id": row.get("id"),
                "question": row["original_text"],
                "solution": text,
                "answer": number(row["ans"]),
            }
        )
    return out, bare


def subset_indices(n: int, train_size: int | None, seed: int) -> list[int]:
    """The rows of trainset.json a study trains on: ``train_size`` of ``n`` drawn with ``seed``, in file
    order (all of them when ``train_size`` is None or not smaller than ``n``)."""
    if train_size is None or train_size >= n:
        return list(range(n))
    return sorted(random.Random(seed).sample(range(n), train_size))


def prepare(data_dir: str | Path, out_dir: str | Path, fmt: str, train_size: int | None, seed: int) -> dict:
    """Write ``train.jsonl`` (a seeded subset of ``train_size`` rows, in file order) under ``out_dir``.

    Returns (and writes as ``data.json``) what was taken: sizes, the subset's ids, rows without working.
    """
    data_dir, out_dir = Path(data_dir), Path(out_dir)
    rows = load_rows(data_dir / "trainset.json")
    rows = [rows[i] for i in subset_indices(len(rows), train_size, seed)]
    train, bare = convert(rows, fmt)
    atomic_write_jsonl(out_dir / "train.jsonl", train)
    info = {
        "source": str(data_dir / "trainset.json"),
        "format": fmt,
        "train_size": len(train),
        "subset_seed": seed,
        "rows_without_working": bare,
        "ids": [r["id"] for r in train],
    }
    atomic_write_json(out_dir / "data.json", info)
    return info

"""Deterministic arithmetic word problems with short worked solutions, for the CPU demo.

Each problem is a dict with ``id``, ``question``, ``solution`` (one operation per line, then
"The answer is N.") and ``answer`` (the final number as a string). Only ``random.Random(seed)``
is used, so a seed gives the same problems on every machine.
"""

from __future__ import annotations

import random
from collections.abc import Callable

NAMES = [
    "Tom",
    "Anna",
    "Ben",
    "Lily",
    "Sam",
    "Mia",
    "Leo",
    "Emma",
    "Max",
    "Zoe",
    "Noah",
    "Ella",
    "Omar",
    "Priya",
]
OBJECTS = [
    "apples",
    "pencils",
    "stickers",
    "marbles",
    "cookies",
    "books",
    "cards",
    "shells",
    "coins",
    "stamps",
]
ITEMS = ["notebooks", "tickets", "sandwiches", "toys", "pens"]

# A template draws its numbers and returns (question, worked steps, answer).
Template = Callable[[random.Random], tuple[str, list[str], int]]


def _buy_more(rng: random.Random) -> tuple[str, list[str], int]:
    name, obj, a, b = rng.choice(NAMES), rng.choice(OBJECTS), rng.randint(2, 50), rng.randint(2, 50)
    question = f"{name} has {a} {obj} and buys {b} more. How many {obj} does {name} have now?"
    return question, [f"{name} has {a} {obj} and buys {b} more: {a} + {b} = {a + b}."], a + b


def _together(rng: random.Random) -> tuple[str, list[str], int]:
    (name, other), obj, a, b = (
        rng.sample(NAMES, 2),
        rng.choice(OBJECTS),
        rng.randint(2, 50),
        rng.randint(2, 50),
    )
    question = f"{name} has {a} {obj} and {other} has {b} {obj}. How many {obj} do they have together?"
    return question, [f"Together they have {a} + {b} = {a + b} {obj}."], a + b


def _give_away(rng: random.Random) -> tuple[str, list[str], int]:
    (name, other), obj = rng.sample(NAMES, 2), rng.choice(OBJECTS)
    a = rng.randint(10, 50)
    b = rng.randint(2, a - 2)
    question = f"{name} has {a} {obj} and gives {b} to {other}. How many {obj} does {name} have left?"
    return question, [f"{name} gives away {b} of {a} {obj}: {a} - {b} = {a - b}."], a - b


def _how_many_more(rng: random.Random) -> tuple[str, list[str], int]:
    (name, other), obj = rng.sample(NAMES, 2), rng.choice(OBJECTS)
    a = rng.randint(10, 50)
    b = rng.randint(2, a - 2)
    question = (
        f"{name} has {a} {obj} and {other} has {b} {obj}. How many more {obj} does {name} have than {other}?"
    )
    return question, [f"{name} has {a} - {b} = {a - b} more {obj}."], a - b


def _boxes(rng: random.Random) -> tuple[str, list[str], int]:
    name, obj, a, b = rng.choice(NAMES), rng.choice(OBJECTS), rng.randint(2, 10), rng.randint(2, 12)
    question = f"{name} has {a} boxes with {b} {obj} in each box. How many {obj} does {name} have?"
    return question, [f"{a} boxes of {b} {obj}: {a} * {b} = {a * b}."], a * b


def _price(rng: random.Random) -> tuple[str, list[str], int]:
    name, item, a, price = rng.choice(NAMES), rng.choice(ITEMS), rng.randint(2, 10), rng.randint(2, 12)
    question = f"{name} buys {a} {item} for {price} dollars each. How many dollars does {name} spend?"
    return question, [f"{a} {item} at {price} dollars each: {a} * {price} = {a * price}."], a * price


def _share(rng: random.Random) -> tuple[str, list[str], int]:
    name, obj, friends = rng.choice(NAMES), rng.choice(OBJECTS), rng.randint(2, 10)
    each = rng.randint(2, 50 // friends)
    total = friends * each
    question = (
        f"{name} shares {total} {obj} equally among {friends} friends. How many {obj} does each friend get?"
    )
    return question, [f"{total} {obj} shared by {friends}: {total} / {friends} = {each}."], each


def _buy_then_give(rng: random.Random) -> tuple[str, list[str], int]:
    (name, other), obj, a, b = (
        rng.sample(NAMES, 2),
        rng.choice(OBJECTS),
        rng.randint(2, 30),
        rng.randint(2, 20),
    )
    c = rng.randint(2, a + b - 1)
    question = f"{name} has {a} {obj}, buys {b} more, then gives {c} to {other}. How many {obj} are left?"
    steps = [f"After buying: {a} + {b} = {a + b}.", f"After giving {c} away: {a + b} - {c} = {a + b - c}."]
    return question, steps, a + b - c


def _packs_plus(rng: random.Random) -> tuple[str, list[str], int]:
    name, obj, packs, size, extra = (
        rng.choice(NAMES),
        rng.choice(OBJECTS),
        rng.randint(2, 10),
        rng.randint(2, 12),
        rng.randint(2, 50),
    )
    question = f"{name} buys {packs} packs of {size} {obj} and already has {extra}. How many {obj} in all?"
    steps = [
        f"{packs} packs of {size}: {packs} * {size} = {packs * size}.",
        f"With the {extra} already there: {packs * size} + {extra} = {packs * size + extra}.",
    ]
    return question, steps, packs * size + extra


def _rows_minus(rng: random.Random) -> tuple[str, list[str], int]:
    name, obj, rows, per_row = rng.choice(NAMES), rng.choice(OBJECTS), rng.randint(2, 10), rng.randint(2, 12)
    taken = rng.randint(2, min(50, rows * per_row - 1))
    question = (
        f"A shelf has {rows} rows of {per_row} {obj}. {name} takes {taken} of them. How many {obj} are left?"
    )
    steps = [
        f"{rows} rows of {per_row}: {rows} * {per_row} = {rows * per_row}.",
        f"After {name} takes {taken}: {rows * per_row} - {taken} = {rows * per_row - taken}.",
    ]
    return question, steps, rows * per_row - taken


def _split_then_add(rng: random.Random) -> tuple[str, list[str], int]:
    name, obj, bags = rng.choice(NAMES), rng.choice(OBJECTS), rng.randint(2, 10)
    each = rng.randint(2, 50 // bags)
    total, extra = bags * each, rng.randint(2, 20)
    question = (
        f"{name} splits {total} {obj} equally into {bags} bags, then adds {extra} more to one bag. "
        f"How many {obj} are in that bag?"
    )
    steps = [
        f"Each bag gets {total} / {bags} = {each}.",
        f"That bag then has {each} + {extra} = {each + extra}.",
    ]
    return question, steps, each + extra


TEMPLATES: list[Template] = [
    _buy_more,
    _together,
    _give_away,
    _how_many_more,
    _boxes,
    _price,
    _share,
    _buy_then_give,
    _packs_plus,
    _rows_minus,
    _split_then_add,
]


def draw_distinct(makers: list[Callable], n: int, seed: int, key: Callable[[tuple], str], what: str) -> list:
    """``n`` draws of ``rng.choice(makers)(rng)`` with distinct ``key``, in draw order (one seed's shorter
    list is a prefix of its longer one); ``what`` names them in errors."""
    if n < 0:
        raise ValueError(f"the number of {what} must be at least 0, got {n}")
    rng = random.Random(seed)
    draws: list = []
    seen: set[str] = set()
    for _ in range(100 * n + 1000):
        if len(draws) == n:
            break
        draw = rng.choice(makers)(rng)
        if key(draw) in seen:
            continue
        seen.add(key(draw))
        draws.append(draw)
    if len(draws) < n:
        raise ValueError(f"could only make {len(draws)} distinct {what}, {n} were asked for")
    return draws


def make_demo_problems(n: int, seed: int) -> list[dict]:
    """``n`` problems with distinct questions; for one seed, a shorter list is a prefix of a longer one."""
    return [
        {
            "id": f"demo-{seed}-{i}",
            "question": question,
            "solution": "\n".join([*steps, f"The answer is {answer}."]),
            "answer": str(answer),
        }
        for i, (question, steps, answer) in enumerate(
            draw_distinct(TEMPLATES, n, seed, lambda draw: draw[0], "demo problems")
        )
    ]


def demo_splits(n_train: int, n_test: int, seed: int = 0) -> tuple[list[dict], list[dict]]:
    """Disjoint (train, test) problem lists; the test set depends only on ``n_test`` and ``seed``."""
    if n_train < 0 or n_test < 0:
        raise ValueError(f"split sizes must be at least 0, got n_train={n_train} and n_test={n_test}")
    problems = make_demo_problems(n_test + n_train, seed)
    return problems[n_test:], problems[:n_test]

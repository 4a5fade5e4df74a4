"""Deterministic Python function-writing problems with reference solutions and hidden tests.

Offline there is no code training set; this makes one, as ``demo_data`` does for arithmetic. Each
problem comes from a family (strings, lists, dicts, arithmetic) with drawn parameters (a letter, a
threshold, a shift…), so problems differ in what they ask, not only in their names. None is one of
HumanEval's. A problem is a row of the generic code layout (``wmss eval --task code=FILE``)::

    {"id", "prompt": signature and docstring, "entry_point", "tests": [asserts], "canonical_solution"}

The hidden tests are the reference solution's outputs on drawn inputs, edge cases among them (empty
strings and lists, zero, negative numbers). The expected outputs are computed by running the
reference solutions, which are this module's own code, never a model's. ``sft_rows`` turns problems
into training rows in either layout wmss reads: a chat ``messages`` row whose answer is the fenced
function (the prompt a chat model gets in ``wmss eval``), or ``prompt``/``completion`` (the function's
body continuing its signature and docstring, as a base model is evaluated).
"""

from __future__ import annotations

import random
import string
from collections.abc import Callable
from pathlib import Path

from wmss.demo_data import draw_distinct
from wmss.io import atomic_write_jsonl

WORDS = ["apple", "river", "stone", "cloud", "tiger", "lemon", "piano", "orbit", "maple", "delta", "ember"]

# A family draws its parameters and returns (entry point, signature, description, body, inputs): the
# body is the reference solution's body (indented 4 spaces), inputs a list of argument tuples.
Family = Callable[[random.Random], tuple[str, str, str, str, list[tuple]]]


def _text(rng: random.Random, low: int = 0, high: int = 12) -> str:
    return "".join(rng.choice(string.ascii_lowercase + "  AEIO") for _ in range(rng.randint(low, high)))


def _numbers(rng: random.Random, low: int = 0, high: int = 8, span: int = 20) -> list[int]:
    return [rng.randint(-span, span) for _ in range(rng.randint(low, high))]


def _count_letter(rng: random.Random):
    letter = rng.choice("aeiorstn")
    body = f"    return text.lower().count({letter!r})\n"
    inputs = [("",), (letter.upper() * 3,)] + [(_text(rng),) for _ in range(5)]
    return (
        f"count_{letter}",
        "(text: str) -> int",
        f"Count how many times the letter '{letter}' appears in text, in upper or lower case.",
        body,
        inputs,
    )


def _shift_letters(rng: random.Random):
    k = rng.randint(1, 25)
    body = (
        "    out = []\n"
        "    for c in text:\n"
        "        if c.islower():\n"
        f"            out.append(chr((ord(c) - 97 + {k}) % 26 + 97))\n"
        "        else:\n"
        "            out.append(c)\n"
        "    return ''.join(out)\n"
    )
    inputs = [("",), ("xyz",), ("Hello, World",)] + [(_text(rng),) for _ in range(4)]
    return (
        f"shift_by_{k}",
        "(text: str) -> str",
        f"Shift every lowercase letter of text {k} places forward in the alphabet, wrapping from "
        "'z' to 'a'. Other characters stay as they are.",
        body,
        inputs,
    )


def _reverse_words(rng: random.Random):
    sep = rng.choice([" ", ",", "-"])
    body = f"    return {sep!r}.join(reversed(text.split({sep!r})))\n"
    inputs = [("",), ("one",)] + [(sep.join(rng.sample(WORDS, rng.randint(2, 5))),) for _ in range(5)]
    name = {" ": "spaces", ",": "commas", "-": "dashes"}[sep]
    return (
        f"reverse_words_between_{name}",
        "(text: str) -> str",
        f"Split text at every {sep!r}, reverse the order of the parts and join them with {sep!r} again.",
        body,
        inputs,
    )


def _long_words(rng: random.Random):
    n = rng.randint(3, 5)
    body = f"    return [w for w in text.split() if len(w) >= {n}]\n"
    inputs = [("",), ("a bb ccc dddd eeeee",)] + [(" ".join(rng.sample(WORDS + ["a", "to", "sky"], 5)),)
                                                    for _ in range(5)]  # fmt: skip
    return (
        f"words_of_at_least_{n}",
        "(text: str) -> list",
        f"Return the words of text (separated by whitespace) that have at least {n} letters, in order.",
        body,
        inputs,
    )


def _sum_above(rng: random.Random):
    t = rng.randint(-5, 10)
    body = f"    return sum(x for x in numbers if x > {t})\n"
    inputs = [([],), ([t, t],)] + [(_numbers(rng),) for _ in range(5)]
    return (
        f"sum_above_{t}".replace("-", "minus_"),
        "(numbers: list) -> int",
        f"Return the sum of the numbers greater than {t} (0 when there are none).",
        body,
        inputs,
    )


def _rotate(rng: random.Random):
    k = rng.randint(1, 4)
    body = (
        "    if not items:\n"
        "        return []\n"
        f"    k = {k} % len(items)\n"
        "    return items[-k:] + items[:-k] if k else list(items)\n"
    )
    inputs = [([],), ([1],)] + [(_numbers(rng, 1, 7),) for _ in range(5)]
    return (
        f"rotate_right_{k}",
        "(items: list) -> list",
        f"Return a new list: items rotated {k} places to the right (the last {k} move to the front, "
        "cyclically for short lists).",
        body,
        inputs,
    )


def _second_largest(rng: random.Random):
    body = "    distinct = sorted(set(numbers))\n    return distinct[-2] if len(distinct) >= 2 else None\n"
    inputs = [([],), ([5],), ([3, 3, 3],)] + [(_numbers(rng, 1, 8),) for _ in range(4)]
    return (
        "second_largest",
        "(numbers: list)",
        "Return the second largest distinct value of numbers, or None if there are fewer than two "
        "distinct values.",
        body,
        inputs,
    )


def _chunks(rng: random.Random):
    size = rng.randint(2, 4)
    body = f"    return [items[i : i + {size}] for i in range(0, len(items), {size})]\n"
    inputs = [([],)] + [(_numbers(rng, 1, 9),) for _ in range(5)]
    return (
        f"chunks_of_{size}",
        "(items: list) -> list",
        f"Split items into consecutive lists of {size} elements; the last one may be shorter.",
        body,
        inputs,
    )


def _running_extreme(rng: random.Random):
    kind = rng.choice(["max", "min"])
    body = (
        "    out = []\n"
        "    for x in numbers:\n"
        f"        out.append(x if not out else {kind}(out[-1], x))\n"
        "    return out\n"
    )
    inputs = [([],), ([2],)] + [(_numbers(rng, 1, 8),) for _ in range(5)]
    return (
        f"running_{kind}",
        "(numbers: list) -> list",
        f"Return the running {kind}imum: element i is the {kind}imum of numbers[0..i].",
        body,
        inputs,
    )


def _word_counts(rng: random.Random):
    lower = rng.random() < 0.5
    word = "w.lower()" if lower else "w"
    body = (
        f"    counts = {{}}\n"
        "    for w in text.split():\n"
        f"        counts[{word}] = counts.get({word}, 0) + 1\n"
        "    return counts\n"
    )
    inputs = [("",), ("a A a",)] + [
        (" ".join(rng.choices(WORDS[:4] + ["Apple", "RIVER"], k=6)),) for _ in range(4)
    ]
    case = "ignoring case (keys in lower case)" if lower else "case-sensitively"
    return (
        "word_counts" if not lower else "word_counts_ignoring_case",
        "(text: str) -> dict",
        f"Return a dict mapping each whitespace-separated word of text to how many times it occurs, "
        f"counted {case}.",
        body,
        inputs,
    )


def _invert(rng: random.Random):
    body = (
        "    out = {}\n"
        "    for key in sorted(mapping):\n"
        "        out.setdefault(mapping[key], []).append(key)\n"
        "    return out\n"
    )
    inputs = [({},)] + [
        ({w: rng.randint(1, 3) for w in rng.sample(WORDS, rng.randint(1, 5))},) for _ in range(5)
    ]
    return (
        "invert_mapping",
        "(mapping: dict) -> dict",
        "Return a dict from each value of mapping to the sorted list of keys that have it.",
        body,
        inputs,
    )


def _keys_above(rng: random.Random):
    t = rng.randint(0, 5)
    body = f"    return sorted(k for k, v in scores.items() if v > {t})\n"
    inputs = [({},)] + [({w: rng.randint(-2, 9) for w in rng.sample(WORDS, 4)},) for _ in range(5)]
    return (
        f"names_scoring_above_{t}",
        "(scores: dict) -> list",
        f"Return the keys of scores whose value is greater than {t}, sorted.",
        body,
        inputs,
    )


def _merge_sum(rng: random.Random):
    body = (
        "    out = dict(a)\n    for k, v in b.items():\n        out[k] = out.get(k, 0) + v\n    return out\n"
    )

    def draw() -> dict:
        return {w: rng.randint(-3, 9) for w in rng.sample(WORDS[:6], rng.randint(0, 4))}

    inputs = [({}, {})] + [(draw(), draw()) for _ in range(5)]
    return (
        "merge_adding",
        "(a: dict, b: dict) -> dict",
        "Merge two dicts of numbers: a key in both gets the sum of its values.",
        body,
        inputs,
    )


def _digit_sum(rng: random.Random):
    base = rng.choice([10, 10, 2, 8])
    body = (
        "    n = abs(n)\n"
        "    total = 0\n"
        "    while n:\n"
        f"        total += n % {base}\n"
        f"        n //= {base}\n"
        "    return total\n"
    )
    inputs = [(0,), (-base - 1,)] + [(rng.randint(1, 10**6),) for _ in range(5)]
    name = "digit_sum" if base == 10 else f"digit_sum_base_{base}"
    return (
        name,
        "(n: int) -> int",
        f"Return the sum of the digits of abs(n) written in base {base}.",
        body,
        inputs,
    )


def _clamp(rng: random.Random):
    low = rng.randint(-10, 0)
    high = low + rng.randint(1, 20)
    body = f"    return max({low}, min({high}, x))\n"
    inputs = [(low,), (high,), (low - 100,), (high + 1,)] + [
        (rng.randint(low - 5, high + 5),) for _ in range(3)
    ]
    return (
        f"clamp_{low}_{high}".replace("-", "minus_"),
        "(x: int) -> int",
        f"Return x limited to the range [{low}, {high}]: {low} if it is smaller, {high} if larger.",
        body,
        inputs,
    )


def _fizz(rng: random.Random):
    a, b = rng.sample([2, 3, 5, 7], 2)
    wa, wb = rng.sample(["Fizz", "Buzz", "Pop", "Zap"], 2)
    body = (
        f"    if n % {a * b} == 0:\n        return {wa + wb!r}\n"
        f"    if n % {a} == 0:\n        return {wa!r}\n"
        f"    if n % {b} == 0:\n        return {wb!r}\n"
        "    return str(n)\n"
    )
    inputs = [(0,), (a,), (b,), (a * b,), (1,)] + [(rng.randint(1, 100),) for _ in range(3)]
    return (
        f"say_{wa.lower()}_{wb.lower()}",
        "(n: int) -> str",
        f"Return '{wa}{wb}' if n is divisible by {a} and by {b}, '{wa}' if only by {a}, '{wb}' if only "
        f"by {b}, else n as a string.",
        body,
        inputs,
    )


def _count_primes(rng: random.Random):
    body = (
        "    count = 0\n"
        "    for k in range(2, n + 1):\n"
        "        if all(k % d for d in range(2, int(k ** 0.5) + 1)):\n"
        "            count += 1\n"
        "    return count\n"
    )
    inputs = [(0,), (1,), (2,), (-5,)] + [(rng.randint(3, 200),) for _ in range(4)]
    return (
        "count_primes_up_to",
        "(n: int) -> int",
        "Return how many prime numbers are less than or equal to n (0 for n < 2).",
        body,
        inputs,
    )


FAMILIES: list[Family] = [
    _count_letter, _shift_letters, _reverse_words, _long_words,  # strings
    _sum_above, _rotate, _second_largest, _chunks, _running_extreme,  # lists
    _word_counts, _invert, _keys_above, _merge_sum,  # dicts
    _digit_sum, _clamp, _fizz, _count_primes,  # arithmetic
]  # fmt: skip


def make_code_problems(n: int, seed: int) -> list[dict]:
    """``n`` problems with distinct entry points; for one seed, a shorter list is a prefix of a longer one
    (the families allow a few hundred)."""
    problems = []
    for i, (entry, signature, description, body, inputs) in enumerate(
        draw_distinct(FAMILIES, n, seed, lambda draw: draw[0], "code problems")
    ):
        prompt = f'def {entry}{signature}:\n    """{description}"""\n'
        reference = prompt + body
        namespace: dict = {}
        exec(compile(reference, f"<reference {entry}>", "exec"), namespace)  # our own code, not a model's
        tests = [
            f"assert candidate({', '.join(map(repr, args))}) == {namespace[entry](*args)!r}"
            for args in inputs
        ]
        problems.append({"id": f"code-{seed}-{i}", "prompt": prompt, "entry_point": entry,
                         "tests": tests, "canonical_solution": reference})  # fmt: skip
    return problems


def code_splits(n_train: int, n_test: int, seed: int = 0) -> tuple[list[dict], list[dict]]:
    """Disjoint (train, test) problem lists (no entry point in both); the test set depends only on
    ``n_test`` and ``seed``."""
    if n_train < 0 or n_test < 0:
        raise ValueError(f"split sizes must be at least 0, got n_train={n_train} and n_test={n_test}")
    problems = make_code_problems(n_test + n_train, seed)
    return problems[n_test:], problems[:n_test]


def sft_rows(problems: list[dict], layout: str = "messages") -> list[dict]:
    """Training rows: ``messages`` (the chat prompt ``wmss eval`` gives, answered by the fenced reference
    function) or ``prompt_completion`` (signature and docstring, completed by the body)."""
    from wmss.config import EvalConfig
    from wmss.evaluation.code import generic_code_problem
    from wmss.evaluation.prompting import code_prompt_text

    rows = []
    for problem in problems:
        if layout == "messages":
            question = code_prompt_text(generic_code_problem(problem), EvalConfig(), chat=True)
            answer = f"```python\n{problem['canonical_solution'].rstrip()}\n```"
            turns = [{"role": "user", "content": question}, {"role": "assistant", "content": answer}]
            rows.append({"id": problem["id"], "messages": turns})
        elif layout == "prompt_completion":
            body = problem["canonical_solution"][len(problem["prompt"]) :]
            rows.append({"id": problem["id"], "prompt": problem["prompt"], "completion": body})
        else:
            raise ValueError(f"layout must be 'messages' or 'prompt_completion', got {layout!r}")
    return rows


def write_code_data(out_dir: str | Path, n_train: int, n_test: int, seed: int = 0) -> dict[str, Path]:
    """``train_messages.jsonl``, ``train_prompt_completion.jsonl`` and ``test.jsonl`` (the generic code
    layout, for ``wmss eval --task code=test.jsonl``) in ``out_dir``; returns their paths."""
    train, test = code_splits(n_train, n_test, seed)
    out = Path(out_dir)
    paths = {
        "train_messages": out / "train_messages.jsonl",
        "train_prompt_completion": out / "train_prompt_completion.jsonl",
        "test": out / "test.jsonl",
    }
    atomic_write_jsonl(paths["train_messages"], sft_rows(train, "messages"))
    atomic_write_jsonl(paths["train_prompt_completion"], sft_rows(train, "prompt_completion"))
    atomic_write_jsonl(paths["test"], test)
    return paths

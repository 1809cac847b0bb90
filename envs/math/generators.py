"""Procedural problems that need no data, deterministic in (seed, split, index).

Splits never overlap: every candidate problem belongs to exactly one split by a
hash of its question text, and a generator redraws until it hits its own split.
"""

from __future__ import annotations

import hashlib
from fractions import Fraction
from typing import Callable

import numpy as np

from eprl.envs.math.data import Problem

SPLIT_STREAMS = {"train": 0, "test": 1}
TEST_FRACTION_PER_256 = 32  # 1/8 of the problem space belongs to the test split
COUNTDOWN_SUFFIX = "You can use basic arithmetic operations (+, -, *, /) and each number can only be used once."


def split_of(question: str) -> str:
    """The split a question text belongs to (stable across runs and machines)."""
    byte = hashlib.blake2b(question.encode(), digest_size=1).digest()[0]
    return "test" if byte < TEST_FRACTION_PER_256 else "train"


def _draw(make_one: Callable[[np.random.Generator], tuple | None], seed: int, split: str, index: int):
    if split not in SPLIT_STREAMS:
        raise ValueError(f"unknown split {split!r}; choose from {sorted(SPLIT_STREAMS)}")
    rng = np.random.default_rng([seed, SPLIT_STREAMS[split], index])
    for _ in range(10_000):
        drawn = make_one(rng)
        if drawn is not None and split_of(drawn[0]) == split:
            return drawn
    raise RuntimeError("could not draw a problem for this split")


def _arithmetic_expression(rng: np.random.Generator, difficulty: int) -> tuple[str, int] | None:
    ops = ["+", "-", "*"]
    if difficulty == 1:
        a, b, op = int(rng.integers(1, 100)), int(rng.integers(1, 100)), str(rng.choice(ops + ["/"]))
        if op == "/":  # exact division with a dividend below 100
            b = int(rng.integers(2, 10))
            a = b * int(rng.integers(1, 99 // b + 1))
        text = f"{a}{op}{b}"
    elif difficulty == 2:
        a, b, c = (int(x) for x in rng.integers(10, 100, size=3))
        text = f"{a}{rng.choice(ops)}{b}{rng.choice(ops)}{c}"
    elif difficulty == 3:
        a, b, c = (int(x) for x in rng.integers(100, 1000, size=3))
        op1, op2 = rng.choice(ops, size=2)
        text = f"({a}{op1}{b}){op2}{c}" if rng.random() < 0.5 else f"{a}{op1}({b}{op2}{c})"
    else:
        raise ValueError(f"difficulty must be 1, 2 or 3, got {difficulty}")
    value = _evaluate(text)
    return (text, int(value)) if value.denominator == 1 else None


def _evaluate(text: str) -> Fraction:
    from eprl.envs.math.tools import calculate

    return Fraction(calculate(text))


def arithmetic(index: int, split: str = "train", difficulty: int = 1, seed: int = 0) -> Problem:
    """'Compute 37*48+19.' with an integer gold answer."""

    def make_one(rng):
        drawn = _arithmetic_expression(rng, difficulty)
        return None if drawn is None else (f"Compute {drawn[0]}.", drawn)

    question, (text, value) = _draw(make_one, seed, split, index)
    return Problem(
        id=f"arithmetic-d{difficulty}-s{seed}-{split}-{index}",
        question=question,
        answer=str(value),
        source=f"arithmetic/d{difficulty}",
        solution=text,
    )


def _countdown_instance(rng: np.random.Generator, count: int) -> tuple[list[int], str, int] | None:
    numbers = [int(x) for x in rng.integers(1, 100, size=count)]
    terms = [(n, str(n)) for n in numbers]
    while len(terms) > 1:  # combine two random terms with a valid op until one expression remains
        (a, ea), (b, eb) = terms.pop(int(rng.integers(len(terms)))), terms.pop(int(rng.integers(len(terms))))
        if a < b:
            (a, ea), (b, eb) = (b, eb), (a, ea)
        ops = ["+", "*"] + (["-"] if a > b else []) + (["/"] if a % b == 0 and b > 1 else [])
        op = ops[int(rng.integers(len(ops)))]
        value = {"+": a + b, "-": a - b, "*": a * b, "/": a // b}[op]
        if value > 1000:
            return None
        terms.append((value, f"({ea}{op}{eb})"))
    value, expr = terms[0]
    return numbers, expr[1:-1], value


def countdown(index: int, split: str = "train", seed: int = 0, count: int | None = None) -> Problem:
    """'Using the numbers [3, 7, 25], create an equation that equals 46. ...' (3 or 4 numbers)."""

    def make_one(rng):
        drawn = _countdown_instance(rng, count or int(rng.choice([3, 4])))
        if drawn is None:
            return None
        numbers, _, target = drawn
        return f"Using the numbers {numbers}, create an equation that equals {target}. {COUNTDOWN_SUFFIX}", drawn

    question, (numbers, expr, target) = _draw(make_one, seed, split, index)
    return Problem(
        id=f"countdown-s{seed}-{split}-{index}",
        question=question,
        answer=str(target),
        source=f"countdown/gen{len(numbers)}:{','.join(map(str, numbers))}",
        numbers=tuple(numbers),
        solution=expr,
    )


SMALL_OPS = {"+": lambda a, b: a + b, "-": lambda a, b: a - b, "*": lambda a, b: a * b}


def small_arithmetic(
    index: int, split: str = "train", seed: int = 0, ops: str = "+", low: int = 1, high: int = 9
) -> Problem:
    """'What is 7 + 5?': two operands in [low, high] and one of `ops` ("+", "-", "*"); differences are
    never negative. Meets a small pretrained model where it is (one short answer, no format to learn)."""
    unknown = set(ops) - set(SMALL_OPS)
    if not ops or unknown or not 0 <= low <= high:
        raise ValueError(
            f"small_arithmetic: ops must be a non-empty string of {''.join(SMALL_OPS)} (got {ops!r}) "
            f"and 0 <= low <= high (got {low}, {high})"
        )

    def make_one(rng):
        a, b = (int(x) for x in rng.integers(low, high + 1, size=2))
        op = ops[int(rng.integers(len(ops)))]
        if op == "-" and a < b:
            a, b = b, a
        return f"What is {a} {op} {b}?", (f"{a}{op}{b}", SMALL_OPS[op](a, b))

    question, (text, value) = _draw(make_one, seed, split, index)
    return Problem(
        id=f"small-{ops}-{low}-{high}-s{seed}-{split}-{index}",
        question=question,
        answer=str(value),
        source=f"small_arithmetic/{ops}/{low}-{high}",
        solution=text,
    )


GENERATORS: dict[str, Callable[..., Problem]] = {
    "arithmetic": arithmetic,
    "countdown": countdown,
    "small_arithmetic": small_arithmetic,
}

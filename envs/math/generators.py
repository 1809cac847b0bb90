"""Procedural problems that need no data, deterministic in (seed, split, index).

Splits never overlap: every candidate problem belongs to exactly one split by a
hash of its question text, and a generator redraws until it hits its own split.
"""
from __future__ import annotations

import hashlib
from fractions import Fraction
from typing import Callable

import numpy as np

from envs.math.data import Problem

SPLIT_STREAMS = {"train": 0, "test": 1}
TEST_FRACTION_PER_256 = 32  # 1/8 of the problem space belongs to the test split
COUNTDOWN_SUFFIX = ("You can use basic arithmetic operations (+, -, *, /) "
                    "and each number can only be used once.")


def split_of(question: str) -> str:
    """The split a question text belongs to (stable across runs and machines)."""
    byte = hashlib.blake2b(question.encode(), digest_size=1).digest()[0]
    return "test" if byte < TEST_FRACTION_PER_256 else "train"


def _rng(seed: int, split: str, index: int, attempt: int) -> np.random.Generator:
    if split not in SPLIT_STREAMS:
        raise ValueError(f"unknown split {split!r}; choose from {sorted(SPLIT_STREAMS)}")
    return np.random.default_rng([seed, SPLIT_STREAMS[split], index, attempt])


def _draw(make_one: Callable[[np.random.Generator], tuple], seed: int, split: str, index: int):
    for attempt in range(10_000):
        drawn = make_one(_rng(seed, split, index, attempt))
        if drawn is not None and split_of(drawn[0]) == split:
            return drawn
    raise RuntimeError("could not draw a problem for this split")


def _apply(op: str, a: Fraction, b: Fraction) -> Fraction:
    return {"+": a + b, "-": a - b, "*": a * b, "/": a / b if b else Fraction(10**9, 7)}[op]


def _arithmetic_expression(rng: np.random.Generator, difficulty: int) -> tuple[str, int] | None:
    ops = ["+", "-", "*"]
    if difficulty == 1:
        a, b, op = int(rng.integers(1, 100)), int(rng.integers(1, 100)), str(rng.choice(ops + ["/"]))
        if op == "/":
            a = a * b if a * b < 10_000 else a
            if a % b:
                return None
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
    from envs.math.tools import calculate

    return Fraction(calculate(text))


def arithmetic(index: int, split: str = "train", difficulty: int = 1, seed: int = 0) -> Problem:
    """'Compute 37*48+19.' with an integer gold answer."""
    def make_one(rng):
        drawn = _arithmetic_expression(rng, difficulty)
        return None if drawn is None else (f"Compute {drawn[0]}.", drawn)

    question, (text, value) = _draw(make_one, seed, split, index)
    return Problem(id=f"arithmetic-d{difficulty}-s{seed}-{split}-{index}", question=question, answer=str(value),
                   source=f"arithmetic/d{difficulty}", solution=text)


def _countdown_instance(rng: np.random.Generator, count: int) -> tuple[list[int], str, int] | None:
    numbers = [int(x) for x in rng.integers(1, 100, size=count)]
    terms = [(Fraction(n), str(n)) for n in numbers]
    while len(terms) > 1:  # combine two random terms until one expression remains
        i, j = (int(x) for x in rng.choice(len(terms), size=2, replace=False))
        (a, ea), (b, eb) = terms[i], terms[j]
        op = str(rng.choice(["+", "-", "*", "/"]))
        value = _apply(op, a, b)
        if value.denominator != 1 or value <= 0 or value > 1000:
            return None
        terms = [t for k, t in enumerate(terms) if k not in (i, j)] + [(value, f"({ea}{op}{eb})")]
    value, expr = terms[0]
    return numbers, expr[1:-1], int(value)


def countdown(index: int, split: str = "train", seed: int = 0, count: int | None = None) -> Problem:
    """'Using the numbers [3, 7, 25], create an equation that equals 46. ...' (3 or 4 numbers)."""
    def make_one(rng):
        drawn = _countdown_instance(rng, count or int(rng.choice([3, 4])))
        if drawn is None:
            return None
        numbers, _, target = drawn
        return f"Using the numbers {numbers}, create an equation that equals {target}. {COUNTDOWN_SUFFIX}", drawn

    question, (numbers, expr, target) = _draw(make_one, seed, split, index)
    return Problem(id=f"countdown-s{seed}-{split}-{index}", question=question, answer=str(target),
                   source=f"countdown/gen{len(numbers)}:{','.join(map(str, numbers))}",
                   numbers=tuple(numbers), solution=expr)


GENERATORS: dict[str, Callable[..., Problem]] = {"arithmetic": arithmetic, "countdown": countdown}

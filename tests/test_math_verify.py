"""Answer extraction, math-verify decisions on real data, and the countdown checker."""

import itertools
import random
import threading
import time

import pytest

from eprl.envs.math import verify
from eprl.envs.math.data import default_data_dir, load_problems
from eprl.envs.math.verify import check_countdown, check_math, extract_answer, extract_boxed

DATA = default_data_dir()


def rows(name, n):
    path = DATA / name
    if not path.is_file():
        pytest.skip(f"{path} not found (set EPRL_MATH_DATA to the math data folder)")
    return load_problems(str(path), limit=n)


def test_extract_boxed_takes_last_balanced():
    assert extract_boxed("first \\boxed{1} then \\boxed{\\frac{1}{2}} end") == "\\frac{1}{2}"
    assert extract_boxed("\\boxed{ {a}{b} }") == "{a}{b}"
    assert extract_boxed("\\boxed{unclosed") is None
    assert extract_boxed("no answer here") is None


def _quadratic_extract_boxed(text):
    """The former extractor, kept as the reference the linear one must agree with."""
    for match in reversed(list(verify._BOXED.finditer(text))):
        depth, start = 1, match.end()
        for i in range(start, len(text)):
            depth += {"{": 1, "}": -1}.get(text[i], 0)
            if depth == 0:
                return text[start:i].strip()
    return None


def test_extract_boxed_agrees_with_the_reference_on_random_brace_soup():
    rng = random.Random(0)
    pieces = ["\\boxed{", "\\fbox {", "{", "}", "}", "a", " ", "\\boxed"]
    for _ in range(3000):
        text = "".join(rng.choice(pieces) for _ in range(rng.randint(0, 14)))
        assert extract_boxed(text) == _quadratic_extract_boxed(text), text


@pytest.mark.parametrize(
    "text",
    [
        "\\boxed{" * 14_286,
        "\\boxed{" * 14_285 + "1}",
        "{" * 50_000 + "\\boxed{x" + "}" * 50_000,
        "answer" + " " * 100_000 + "x",
        "\n" * 100_000,
        "Answer:" + " x" * 50_000 + "\n" * 50_000,
        "final " * 20_000 + "answer" + " is" * 20_000,
    ],
)
def test_extraction_is_linear_on_pathological_100kb_input(text):
    start = time.perf_counter()
    extract_answer(text)
    assert time.perf_counter() - start < 0.5  # the quadratic extractors took minutes on the first one
    if text.endswith("1}"):
        assert extract_boxed(text) == "1"


def test_answer_checks_have_a_wall_clock_bound():
    start = time.perf_counter()
    assert check_math("\\boxed{\\frac{1}{2}}", "0.5")  # starts the worker (not on the check's clock)
    before, start = verify.timed_out_checks, time.perf_counter()
    assert not check_math("\\boxed{9^{9^{9^{9}}}}", "\\frac{1}{3}", timeout_s=1)  # math-verify's own cut is at 3 s
    assert time.perf_counter() - start < 2.5 and verify.timed_out_checks == before + 1
    assert check_math("\\boxed{\\dfrac{2}{4}}", "0.5") and not check_math("\\boxed{3}", "0.5")  # a fresh worker


def test_extract_answer_falls_back_to_answer_line():
    assert extract_answer("work...\nAnswer: 42.") == "42"
    assert extract_answer("Final answer: $\\frac{3}{4}$") == "\\frac{3}{4}"
    assert extract_answer("answer: 1\n\\boxed{2}") == "2"
    assert extract_answer("The answer is: 5\nanswer = 6  \nmore text") == "6"
    assert extract_answer("my answer: \n") is None and extract_answer("answers: 3") is None
    assert extract_answer("I have no idea.") is None


def test_gold_accepted_and_mutations_rejected_on_math500():
    problems = rows("math500_test.jsonl", 50)
    for p in problems:
        assert check_math(f"So the answer is $\\boxed{{{p.answer}}}$.", p.answer), p.id
    rejected = 0
    for p, other in zip(problems, problems[1:] + problems[:1]):
        if other.answer.replace("x=", "") == p.answer.replace("x=", ""):
            continue
        assert not check_math(f"\\boxed{{{other.answer}}}", p.answer), (p.id, other.answer)
        rejected += 1
    assert rejected >= 45
    integers = [p for p in problems if p.answer.lstrip("-").isdigit()]
    assert len(integers) >= 15
    for p in integers:
        assert not check_math(f"\\boxed{{{int(p.answer) + 1}}}", p.answer), p.id


def test_gsm8k_answers_in_boxed_and_answer_line_forms():
    for p in rows("gsm8k_test.jsonl", 100):
        assert check_math(f"\\boxed{{{p.answer}}}", p.answer)
        assert check_math(f"reasoning...\nAnswer: {p.answer}", p.answer)
        assert not check_math(f"\\boxed{{{int(p.answer) + 1}}}", p.answer)
    assert check_math("\\boxed{\\$18}", "18") and check_math("\\boxed{18.0}", "18")
    assert not check_math("no final answer", "18")


@pytest.mark.parametrize(
    "pred,gold,expected",
    [
        ("\\boxed{0.5}", "\\frac{1}{2}", True),
        ("\\boxed{\\dfrac{1}{2}}", "\\frac{1}{2}", True),
        ("\\boxed{\\tfrac12}", "0.5", True),
        ("\\boxed{1/2}", "\\frac12", True),
        ("\\boxed{\\frac{\\sqrt{2}}{2}}", "\\frac{1}{\\sqrt{2}}", True),
        ("\\boxed{0.51}", "\\frac{1}{2}", False),
        ("\\boxed{(3, \\frac{\\pi}{2})}", "\\left( 3, \\frac{\\pi}{2} \\right)", True),
        ("\\boxed{(3, \\pi)}", "\\left( 3, \\frac{\\pi}{2} \\right)", False),
        ("\\boxed{}", "1", False),
        ("\\boxed{1,000}", "1000", True),
        ("\\boxed{-3}", "3", False),
        ("Answer: 7.50", "7.5", True),
    ],
)
def test_equivalent_forms(pred, gold, expected):
    assert check_math(pred, gold) is expected


def test_check_math_off_the_main_thread_uses_a_process_pool():
    results = {}

    def work():
        results["right"] = check_math("\\boxed{\\dfrac{1}{2}}", "0.5")
        results["wrong"] = check_math("\\boxed{3}", "0.5")
        results["thread"] = threading.current_thread() is threading.main_thread()

    thread = threading.Thread(target=work)
    thread.start()
    thread.join(timeout=60)
    assert results == {"right": True, "wrong": False, "thread": False}


def solve_countdown(numbers, target):
    """Brute force over orders, operators and both tree shapes of 3 numbers."""
    for a, b, c in itertools.permutations(numbers):
        for o1, o2 in itertools.product("+-*/", repeat=2):
            for expr in (f"({a}{o1}{b}){o2}{c}", f"{a}{o1}({b}{o2}{c})"):
                try:
                    if eval(expr, {"__builtins__": {}}) == target:  # our own trusted expression
                        return expr
                except ZeroDivisionError:
                    pass
    return None


def test_countdown_checker_on_real_rows():
    solved = 0
    for p in rows("countdown_cd3.jsonl", 30):
        assert len(p.numbers) == 3 and f"{list(p.numbers)}" in p.question
        expr = solve_countdown(p.numbers, int(p.answer))
        if expr is None:
            continue
        solved += 1
        a, b, c = p.numbers
        assert check_countdown(expr, p.numbers, p.answer), (expr, p.id)
        assert check_countdown(f"{expr} = {p.answer}", p.numbers, p.answer)
        assert not check_countdown(f"({expr})+0", p.numbers, p.answer)  # extra number
        assert not check_countdown(f"{a}+{b}", p.numbers, p.answer)  # missing number
        assert not check_countdown(f"{a}+{a}+{b}+{c}-{a}", p.numbers, p.answer)  # reused number
        assert not check_countdown(f"({expr})+1", p.numbers, int(p.answer) + 1)
    assert solved >= 20


@pytest.mark.parametrize(
    "expr",
    [
        "a+3+7",
        "abs(3)+7+25",
        "3**2+7+25",
        "__import__('os')",
        "-3+7+25",
        "3+7+25.0",
        "3+7+25 if 1 else 0",
        "[3,7,25]",
        "3+7+25;1",
        "3 7 25",
    ],
)
def test_countdown_rejects_disallowed_syntax(expr):
    assert not check_countdown(expr, [3, 7, 25], 35 if "+" in expr else 1)


def test_countdown_fractions_and_division_by_zero():
    assert check_countdown("(1 + 1/3) * 3", [1, 1, 3, 3], 4)
    assert check_countdown("6 \\times 4 \\div 2", [6, 4, 2], 12)
    assert not check_countdown("3/(7-7)", [3, 7, 7], 0)

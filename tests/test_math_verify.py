"""Answer extraction, math-verify decisions on real data, and the countdown checker."""
import itertools
import threading

import pytest

from envs.math.data import default_data_dir, load_problems
from envs.math.verify import check_countdown, check_math, extract_answer, extract_boxed

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


def test_extract_answer_falls_back_to_answer_line():
    assert extract_answer("work...\nAnswer: 42.") == "42"
    assert extract_answer("Final answer: $\\frac{3}{4}$") == "\\frac{3}{4}"
    assert extract_answer("answer: 1\n\\boxed{2}") == "2"
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


@pytest.mark.parametrize("pred,gold,expected", [
    ("\\boxed{0.5}", "\\frac{1}{2}", True), ("\\boxed{\\dfrac{1}{2}}", "\\frac{1}{2}", True),
    ("\\boxed{\\tfrac12}", "0.5", True), ("\\boxed{1/2}", "\\frac12", True),
    ("\\boxed{\\frac{\\sqrt{2}}{2}}", "\\frac{1}{\\sqrt{2}}", True), ("\\boxed{0.51}", "\\frac{1}{2}", False),
    ("\\boxed{(3, \\frac{\\pi}{2})}", "\\left( 3, \\frac{\\pi}{2} \\right)", True),
    ("\\boxed{(3, \\pi)}", "\\left( 3, \\frac{\\pi}{2} \\right)", False), ("\\boxed{}", "1", False),
    ("\\boxed{1,000}", "1000", True), ("\\boxed{-3}", "3", False), ("Answer: 7.50", "7.5", True)])
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


@pytest.mark.parametrize("expr", ["a+3+7", "abs(3)+7+25", "3**2+7+25", "__import__('os')", "-3+7+25",
                                  "3+7+25.0", "3+7+25 if 1 else 0", "[3,7,25]", "3+7+25;1", "3 7 25"])
def test_countdown_rejects_disallowed_syntax(expr):
    assert not check_countdown(expr, [3, 7, 25], 35 if "+" in expr else 1)


def test_countdown_fractions_and_division_by_zero():
    assert check_countdown("(1 + 1/3) * 3", [1, 1, 3, 3], 4)
    assert check_countdown("6 \\times 4 \\div 2", [6, 4, 2], 12)
    assert not check_countdown("3/(7-7)", [3, 7, 7], 0)

"""Answer extraction and checking: math-verify for math, an AST checker for countdown."""
from __future__ import annotations

import ast
import atexit
import multiprocessing
import re
import threading
from collections import Counter
from concurrent.futures import ProcessPoolExecutor
from fractions import Fraction

_BOXED = re.compile(r"\\(?:boxed|fbox)\s*\{")
_ANSWER_LINE = re.compile(r"(?im)^\W*(?:final\s+)?answer\s*(?:is)?\s*[:=]\s*(.+?)\s*$")
_PLAIN_NUMBER = re.compile(r"^-?(\d{1,3}(,\d{3})+|\d+)(\.\d+)?$")
MAX_EXPRESSION_CHARS = 200


def extract_boxed(text: str) -> str | None:
    """Content of the last ``\\boxed{...}`` with balanced braces, or None."""
    for match in reversed(list(_BOXED.finditer(text))):
        depth, start = 1, match.end()
        for i in range(start, len(text)):
            depth += {"{": 1, "}": -1}.get(text[i], 0)
            if depth == 0:
                return text[start:i].strip()
    return None


_NUMBER = re.compile(r"-?\d+(?:\.\d+)?")


def extract_last_number(text: str) -> str | None:
    """The last number in ``text`` ('8 + 5 = 13.' -> '13'), thousands separators removed; None if none.
    A lenient answer rule for small models that cannot yet keep a format (one linear regex scan)."""
    numbers = _NUMBER.findall(text.replace(",", ""))
    return numbers[-1] if numbers else None


def extract_answer(text: str) -> str | None:
    """The last ``\\boxed{}`` answer, else the last 'Answer: ...' line, else None."""
    boxed = extract_boxed(text)
    if boxed is not None:
        return boxed
    lines = _ANSWER_LINE.findall(text)
    if not lines:
        return None
    answer = lines[-1].strip().rstrip(".").strip()
    if len(answer) >= 2 and answer[0] == answer[-1] == "$":
        answer = answer[1:-1].strip()
    return answer or None


def _verify(pred_answer: str, gold: str) -> bool:
    from math_verify import parse, verify

    gold_parsed = parse(f"${gold}$")
    pred_parsed = parse(f"\\boxed{{{pred_answer}}}")
    return bool(gold_parsed and pred_parsed and verify(gold_parsed, pred_parsed))


_pool: ProcessPoolExecutor | None = None
_pool_lock = threading.Lock()


def _process_pool() -> ProcessPoolExecutor:
    """A lazy process pool for math-verify calls made off the main thread (it uses SIGALRM)."""
    global _pool
    with _pool_lock:
        if _pool is None:
            _pool = ProcessPoolExecutor(max_workers=2, mp_context=multiprocessing.get_context("spawn"))
            atexit.register(_pool.shutdown, wait=False, cancel_futures=True)
        return _pool


def check_math(pred_text: str, gold: str) -> bool:
    """True when the answer in ``pred_text`` (boxed, 'Answer:' or bare) equals ``gold``."""
    answer = extract_answer(pred_text)
    answer = (answer if answer is not None else pred_text).strip()
    if not answer or len(answer) > 1000:
        return False
    if _PLAIN_NUMBER.match(answer) and _PLAIN_NUMBER.match(str(gold).strip()):  # fast path, no sympy
        return Fraction(answer.replace(",", "")) == Fraction(str(gold).strip().replace(",", ""))
    if threading.current_thread() is threading.main_thread():
        return _verify(answer, str(gold))
    return _process_pool().submit(_verify, answer, str(gold)).result()


_ALLOWED_OPS = {ast.Add: lambda a, b: a + b, ast.Sub: lambda a, b: a - b,
                ast.Mult: lambda a, b: a * b, ast.Div: lambda a, b: a / b}
_LATEX_OPS = {"\\times": "*", "\\cdot": "*", "\\div": "/", "×": "*", "÷": "/", "−": "-",
              "\\left": "", "\\right": "", "{": "(", "}": ")"}


def _countdown_eval(node: ast.AST, used: list[int]) -> Fraction:
    if isinstance(node, ast.Constant) and type(node.value) is int:
        used.append(node.value)
        return Fraction(node.value)
    if isinstance(node, ast.BinOp) and type(node.op) in _ALLOWED_OPS:
        left, right = _countdown_eval(node.left, used), _countdown_eval(node.right, used)
        return _ALLOWED_OPS[type(node.op)](left, right)
    raise ValueError(f"not allowed in a countdown answer: {ast.dump(node)[:60]}")


def check_countdown(expr: str, numbers, target) -> bool:
    """True when ``expr`` uses each of ``numbers`` exactly once with + - * / and equals ``target``."""
    if expr is None or len(expr) > MAX_EXPRESSION_CHARS:
        return False
    for latex, op in _LATEX_OPS.items():
        expr = expr.replace(latex, op)
    expr = expr.split("=")[0].strip()  # accept '3 + 4 = 7'
    try:
        used: list[int] = []
        value = _countdown_eval(ast.parse(expr, mode="eval").body, used)
    except (SyntaxError, ValueError, ZeroDivisionError, RecursionError):
        return False
    return Counter(used) == Counter(int(n) for n in numbers) and value == Fraction(str(target))

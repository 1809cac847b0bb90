"""Answer extraction and checking: math-verify for math, an AST checker for countdown."""

from __future__ import annotations

import ast
import multiprocessing
import re
import threading
from collections import Counter
from fractions import Fraction

_BOXED = re.compile(r"\\(?:boxed|fbox)\s*\{")
_BRACE = re.compile(r"[{}]")
# One line at a time, no two adjacent quantifiers over the same characters: linear in the text.
_ANSWER_LINE = re.compile(r"[^\w]*(?:final\s+)?answer\s*(?:is\s*)?[:=](.*)", re.I)
_PLAIN_NUMBER = re.compile(r"^-?(\d{1,3}(,\d{3})+|\d+)(\.\d+)?$")
MAX_EXPRESSION_CHARS = 200
MAX_ANSWER_CHARS = 1000
CHECK_TIMEOUT_S = 10.0  # wall clock of one math-verify check, worker start not included
_MATH_VERIFY_TIMEOUT_S = 3  # math-verify's own SIGALRM bound on each parse / comparison (whole seconds)
_WORKER_MEMORY_BYTES = 4 * 2**30


def extract_boxed(text: str) -> str | None:
    """Content of the last ``\\boxed{...}`` with balanced braces, or None.

    One pass over the braces with a stack, so a flood of unclosed ``\\boxed{`` stays linear: the
    box that opened last among those that close wins, as when each is scanned from the end."""
    box_opens = {m.end() - 1 for m in _BOXED.finditer(text)}
    stack: list[int] = []
    best: tuple[int, int] | None = None
    for m in _BRACE.finditer(text):
        i = m.start()
        if text[i] == "{":
            stack.append(i)
        elif stack:
            start = stack.pop()
            if start in box_opens and (best is None or start > best[0]):
                best = (start, i)
    return None if best is None else text[best[0] + 1 : best[1]].strip()


def _answer_line(text: str) -> str | None:
    """The text after 'Answer:' / 'Final answer is =' on the last such line."""
    for line in reversed(text.split("\n")):
        m = _ANSWER_LINE.match(line)
        if m:
            return m.group(1).strip()
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
    answer = _answer_line(text)
    if answer is None:
        return None
    answer = answer.rstrip(".").strip()
    if len(answer) >= 2 and answer[0] == answer[-1] == "$":
        answer = answer[1:-1].strip()
    return answer or None


def _verify(pred_answer: str, gold: str) -> bool:
    from math_verify import parse, verify

    gold_parsed = parse(f"${gold}$", parsing_timeout=_MATH_VERIFY_TIMEOUT_S)
    pred_parsed = parse(f"\\boxed{{{pred_answer}}}", parsing_timeout=_MATH_VERIFY_TIMEOUT_S)
    return bool(
        gold_parsed and pred_parsed and verify(gold_parsed, pred_parsed, timeout_seconds=_MATH_VERIFY_TIMEOUT_S)
    )


def _serve(conn) -> None:
    """Worker loop: answer (pred, gold) requests with _verify's bool, in this process's main thread
    (math-verify's SIGALRM works there), under a memory cap."""
    import resource

    resource.setrlimit(resource.RLIMIT_AS, (_WORKER_MEMORY_BYTES, _WORKER_MEMORY_BYTES))
    import math_verify  # noqa: F401  (import before saying ready: the first check's clock excludes it)

    conn.send("ready")
    while True:
        try:
            pred, gold = conn.recv()
        except EOFError:
            return
        try:
            ok = _verify(pred, gold)
        except Exception:  # math-verify's own timeout, parse errors, MemoryError: not a match
            ok = False
        conn.send(ok)


class _CheckWorker:
    """A spawned process running math-verify checks one at a time. A check that overruns its wall
    clock (e.g. sympy expanding 9^{9^{9^9}} in C, where no signal reaches) gets the worker killed."""

    def __init__(self):
        ctx = multiprocessing.get_context("spawn")
        self.conn, child = ctx.Pipe()
        self.proc = ctx.Process(target=_serve, args=(child,), daemon=True, name="eprl-math-verify")
        self.proc.start()
        child.close()
        if not self.conn.poll(120) or self.conn.recv() != "ready":
            self.kill()
            raise RuntimeError("the math-verify worker did not start within 120 s")

    def check(self, pred: str, gold: str, timeout_s: float) -> bool | None:
        """The verdict, or None when the check overran ``timeout_s`` or the worker died."""
        try:
            self.conn.send((pred, gold))
            return bool(self.conn.recv()) if self.conn.poll(timeout_s) else None
        except (EOFError, OSError):
            return None

    def kill(self) -> None:
        self.proc.kill()
        self.proc.join()


_idle_workers: list[_CheckWorker] = []
_workers_lock = threading.Lock()
timed_out_checks = 0  # checks cut by CHECK_TIMEOUT_S in this process (counted as wrong)


def _bounded_verify(pred: str, gold: str, timeout_s: float) -> bool:
    global timed_out_checks
    with _workers_lock:
        worker = _idle_workers.pop() if _idle_workers else None
    worker = worker or _CheckWorker()  # one per concurrent caller; started outside the lock
    verdict = worker.check(pred, gold, timeout_s)
    if verdict is None:
        worker.kill()
        with _workers_lock:
            timed_out_checks += 1
        return False
    with _workers_lock:
        _idle_workers.append(worker)
    return verdict


def check_math(pred_text: str, gold: str, timeout_s: float | None = None) -> bool:
    """True when the answer in ``pred_text`` (boxed, 'Answer:' or bare) equals ``gold``.

    math-verify runs in a worker process with a wall clock (``CHECK_TIMEOUT_S``): a check that
    overruns it counts as wrong, and its worker is killed and replaced."""
    answer = extract_answer(pred_text)
    answer = (answer if answer is not None else pred_text).strip()
    if not answer or len(answer) > MAX_ANSWER_CHARS:
        return False
    if _PLAIN_NUMBER.match(answer) and _PLAIN_NUMBER.match(str(gold).strip()):  # fast path, no sympy
        return Fraction(answer.replace(",", "")) == Fraction(str(gold).strip().replace(",", ""))
    return _bounded_verify(answer, str(gold), CHECK_TIMEOUT_S if timeout_s is None else timeout_s)


_ALLOWED_OPS = {
    ast.Add: lambda a, b: a + b,
    ast.Sub: lambda a, b: a - b,
    ast.Mult: lambda a, b: a * b,
    ast.Div: lambda a, b: a / b,
}
_LATEX_OPS = {
    "\\times": "*",
    "\\cdot": "*",
    "\\div": "/",
    "×": "*",
    "÷": "/",
    "−": "-",
    "\\left": "",
    "\\right": "",
    "{": "(",
    "}": ")",
}


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

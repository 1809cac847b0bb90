"""MathEnv: answer a math problem in one turn, with retries, or with a calculator/python tool."""

from __future__ import annotations

import functools
from typing import Callable

from eprl.envs.base import TextEnv
from eprl.envs.math.data import Problem, load_problems
from eprl.envs.math.generators import GENERATORS
from eprl.envs.math.tools import ToolError, calculate
from eprl.envs.math.verify import check_countdown, check_math, extract_boxed, extract_last_number
from eprl.envs.sandbox import check_sandbox, run_python

MODES = ("single", "feedback", "tool")
DEFAULT_MAX_TURNS = {"single": 2, "feedback": 6, "tool": 8}
MAX_CALLS_PER_TURN = 4
CHECKERS: dict[str, Callable[[str, Problem], bool]] = {
    "math": lambda answer, p: check_math(f"\\boxed{{{answer}}}", p.answer),
    "countdown": lambda answer, p: check_countdown(answer, p.numbers, p.answer),
}
ANSWER_HINT = {
    "math": "Give the final answer as \\boxed{ANSWER}.",
    "countdown": "Give the equation as \\boxed{EXPRESSION}.",
}
INCORRECT = "Incorrect, try again."
# How the answer is read from a reply: the last \\boxed{} (default) or, leniently, the last number.
ANSWER_RULES: dict[str, Callable[[str], str | None]] = {"boxed": extract_boxed, "last_number": extract_last_number}
LAST_NUMBER_HINT = "Answer with a number."


def _calc_tool(expr: str) -> str:
    try:
        return f"<result>{calculate(expr)}</result>"
    except ToolError as e:
        return f"<result>error: {e}</result>"


def _python_tool(code: str, timeout_s: float = 5, max_output_chars: int = 1000, sandbox: str = "bwrap") -> str:
    result = run_python(code, timeout_s=timeout_s, max_output_chars=max_output_chars, sandbox=sandbox)
    return f"<output>{result.as_text()}</output>"


TOOLS: dict[str, tuple[str, Callable[..., str]]] = {  # name -> (usage hint, run)
    "calc": ("use a calculator: write <calc>EXPRESSION</calc> to get <result>VALUE</result>", _calc_tool),
    "python": ("run Python: write <python>CODE</python> to get <output>PRINTED</output>", _python_tool),
}


def _calls(text: str, tool: str) -> tuple[list[str], bool]:
    """Complete ``<tool>...</tool>`` bodies in ``text`` and whether some call is left unclosed.

    A left-to-right scan with str.find: linear, where a lazy regex rescans the rest of the text from
    every unclosed opening tag (quadratic on a flood of them)."""
    opening, closing = f"<{tool}>", f"</{tool}>"
    bodies, pos = [], 0
    while (start := text.find(opening, pos)) != -1:
        end = text.find(closing, start + len(opening))
        if end == -1:
            break
        bodies.append(text[start + len(opening) : end])
        pos = end + len(closing)
    return bodies, text.count(opening) != len(bodies) or text.count(closing) != len(bodies)


@functools.lru_cache(maxsize=8192)
def _generated(source: str, index: int, split: str, seed: int, difficulty: int | None, extra: tuple = ()) -> Problem:
    """A procedural problem; cached because a group's K episodes reset to the same task (generators are pure)."""
    kwargs = {**({} if difficulty is None else {"difficulty": difficulty}), **dict(extra)}
    return GENERATORS[source](index, split=split, seed=seed, **kwargs)


class MathEnv(TextEnv):
    """A math problem per episode; reward 1.0 for a correct ``\\boxed{}`` answer, else 0.0.

    source: "arithmetic" / "countdown" (procedural) or a dataset (JSONL path, name, ``hf:`` id).
    mode: "single" (judge the first answer), "feedback" (retry up to ``max_attempts``),
    "tool" (``<calc>`` and optionally ``<python>`` calls until an answer or ``max_turns``).
    sandbox: how ``<python>`` code is isolated: "bwrap" (refuses to start without bubblewrap) or
    "none" (limits only; an explicit opt-out, warned about). python_timeout_s: wall clock per call.
    """

    def __init__(
        self,
        source: str | None = None,
        split: str = "train",
        difficulty: int = 1,
        mode: str = "single",
        max_turns: int | None = None,
        max_attempts: int = 3,
        checker: str | None = None,
        tools: tuple[str, ...] = ("calc",),
        seed: int = 0,
        num_tasks: int | None = None,
        limit: int | None = None,
        sandbox: str = "bwrap",
        python_timeout_s: float = 5.0,
        answer: str = "boxed",
        generator_kwargs: dict | None = None,
    ):
        super().__init__()
        if source is None:
            raise ValueError("MathEnv needs source=: 'arithmetic', 'countdown', a JSONL path or a dataset id")
        if mode not in MODES:
            raise ValueError(f"unknown mode {mode!r}; choose from {MODES}")
        unknown = set(tools) - set(TOOLS)
        if unknown:
            raise ValueError(f"unknown tools {sorted(unknown)}; choose from {sorted(TOOLS)}")
        if answer not in ANSWER_RULES:
            raise ValueError(f"unknown answer rule {answer!r}; choose from {sorted(ANSWER_RULES)}")
        if generator_kwargs and source not in GENERATORS:
            raise ValueError(f"generator_kwargs only apply to procedural sources {sorted(GENERATORS)}, not {source!r}")
        self.source, self.split, self.difficulty, self.mode, self.seed = source, split, difficulty, mode, seed
        self.answer = answer
        self.generator_kwargs = tuple(sorted((generator_kwargs or {}).items()))  # hashable: the problem cache key
        self.tools = tuple(tools) if mode == "tool" else ()
        self.sandbox, self.python_timeout_s = sandbox, python_timeout_s
        if "python" in self.tools:
            check_sandbox(sandbox)  # fail at start, not at the first python call
        self.max_attempts = max_attempts
        self.max_turns = max_turns or DEFAULT_MAX_TURNS[mode]
        self._problems = None if source in GENERATORS else load_problems(source, split, limit)
        if self._problems is not None and not self._problems:
            raise ValueError(f"no problems in {source!r} (split={split!r})")
        self._num_tasks = len(self._problems) if self._problems is not None else num_tasks
        if self._problems is None:
            self.problem_at(0)  # bad generator kwargs fail now, with the generator's message
        if checker is None:
            checker = "countdown" if source == "countdown" or (self._problems and self._problems[0].numbers) else "math"
        if checker not in CHECKERS:
            raise ValueError(f"unknown checker {checker!r}; choose from {sorted(CHECKERS)}")
        self.checker = checker
        self.problem: Problem | None = None

    @property
    def num_tasks(self) -> int | None:
        return self._num_tasks

    def problem_at(self, index: int) -> Problem:
        if self._problems is not None:
            return self._problems[index]
        return _generated(
            self.source,
            index,
            self.split,
            self.seed,
            self.difficulty if self.source == "arithmetic" else None,
            self.generator_kwargs,
        )

    def instructions(self) -> str:
        hints = [ANSWER_HINT[self.checker] if self.answer == "boxed" else LAST_NUMBER_HINT]
        if self.tools:
            hints.insert(0, "You can " + " and ".join(TOOLS[t][0] for t in self.tools) + ".")
        if self.mode == "feedback":
            hints.append(f"You have {self.max_attempts} attempts.")
        return " ".join(hints)

    def format_error(self) -> str:
        usage = " or ".join(f"<{t}>...</{t}>" for t in self.tools)
        hint = ANSWER_HINT[self.checker] if self.answer == "boxed" else LAST_NUMBER_HINT
        return f"Format error: {hint}" + (f" Or call a tool: {usage}." if usage else "")

    def _reset_task(self, index: int) -> tuple[str, dict]:
        self.problem = self.problem_at(index)
        self.stats = {"turns": 0, "tool_calls": 0, "format_errors": 0, "attempts": 0}
        return f"{self.problem.question}\n{self.instructions()}", {"task_id": self.problem.id, "task_index": index}

    def _step_text(self, action: str) -> tuple[str, float, bool, bool, dict]:
        stats = self.stats
        stats["turns"] += 1
        info = {"task_id": self.problem.id, "format_error": False}
        answer = ANSWER_RULES[self.answer](action)
        if answer is not None:  # a turn with an answer is judged; its tool calls are ignored
            stats["attempts"] += 1
            success = CHECKERS[self.checker](answer, self.problem)
            info["answer"] = answer
            if success or self.mode != "feedback" or stats["attempts"] >= self.max_attempts:
                return self._end("", success, info, terminated=True)
            obs = INCORRECT
        else:
            obs = self._run_tools(action, info)
        if stats["turns"] >= self.max_turns:
            return self._end(obs, False, info, terminated=False)
        return obs, 0.0, False, False, {**info, **stats}

    def _run_tools(self, action: str, info: dict) -> str:
        results, broken = [], False
        for name in self.tools:
            bodies, unclosed = _calls(action, name)
            broken |= unclosed
            kwargs = {"timeout_s": self.python_timeout_s, "sandbox": self.sandbox} if name == "python" else {}
            results += [TOOLS[name][1](body, **kwargs) for body in bodies[:MAX_CALLS_PER_TURN]]
        self.stats["tool_calls"] += len(results)
        if broken or not results:
            self.stats["format_errors"] += 1
            info["format_error"] = True
            if broken:
                return f"Format error: close every tool call, e.g. <{self.tools[0]}>...</{self.tools[0]}>."
            return self.format_error()
        return "\n".join(results)

    def _end(self, obs: str, success: bool, info: dict, terminated: bool):
        info = {
            **info,
            **self.stats,
            "success": bool(success),
            "answer": info.get("answer"),
            "gold": self.problem.answer,
        }
        return obs, float(success), terminated, not terminated, info

"""MathEnv episodes in every mode, generators, problem loading and the calculator."""

import re
import sys
import types

import pytest

from eprl.envs import make
from eprl.envs.math.data import Problem, default_data_dir, load_problems
from eprl.envs.math.generators import arithmetic, countdown, split_of
from eprl.envs.math.tools import ToolError, calculate
from eprl.envs.math.verify import check_countdown

DATA = default_data_dir()
needs_data = pytest.mark.skipif(
    not (DATA / "gsm8k_test.jsonl").is_file(), reason=f"math data not found at {DATA} (set EPRL_MATH_DATA)"
)


def boxed(x):
    return f"\\boxed{{{x}}}"


def start(env_id, index=7, **kwargs):
    env = make(env_id, **kwargs)
    obs, info = env.reset(seed=0, options={"task_index": index})
    return env, obs, env.unwrapped.problem


def test_first_observation_states_the_protocol():
    _, obs, problem = start("ArithmeticTool-v0")
    assert obs == (
        f"{problem.question}\nYou can use a calculator: write <calc>EXPRESSION</calc> to get "
        "<result>VALUE</result>. Give the final answer as \\boxed{ANSWER}."
    )
    _, obs, problem = start("Arithmetic-v0")
    assert obs == f"{problem.question}\nGive the final answer as \\boxed{{ANSWER}}."


def test_single_mode_correct_and_wrong():
    env, _, problem = start("Arithmetic-v0", difficulty=2)
    obs, reward, terminated, truncated, info = env.step(f"So {boxed(problem.answer)}.")
    assert (reward, terminated, truncated) == (1.0, True, False)
    assert info["success"] is True and info["turns"] == 1 and info["answer"] == problem.answer
    env.reset(options={"task_index": 7})
    _, reward, terminated, truncated, info = env.step(boxed(int(problem.answer) + 1))
    assert (reward, terminated, truncated, info["success"]) == (0.0, True, False, False)


def test_feedback_mode_retries_then_succeeds():
    env, obs, problem = start("Arithmetic-v0", mode="feedback", max_attempts=2)
    assert obs.endswith("You have 2 attempts.")
    obs, reward, terminated, truncated, info = env.step(boxed(int(problem.answer) + 1))
    assert (obs, reward, terminated, truncated) == ("Incorrect, try again.", 0.0, False, False)
    _, reward, terminated, _, info = env.step(boxed(problem.answer))
    assert (reward, terminated, info["success"], info["attempts"], info["turns"]) == (1.0, True, True, 2, 2)
    env.reset(options={"task_index": 7})
    env.step(boxed(-1))
    _, reward, terminated, truncated, info = env.step(boxed(-2))
    assert (reward, terminated, truncated, info["success"]) == (0.0, True, False, False)


def test_tool_mode_calculator_results_and_errors():
    env, _, problem = start("ArithmeticTool-v0", difficulty=3)
    obs, reward, terminated, truncated, info = env.step(f"<calc>{problem.solution}</calc>")
    assert obs == f"<result>{problem.answer}</result>" and (reward, terminated, truncated) == (0.0, False, False)
    obs, *_ = env.step("<calc>1/3</calc> then <calc>2**10</calc>")
    assert obs == "<result>0.333333</result>\n<result>1024</result>"
    obs, *_, info = env.step("<calc>7/0</calc>")
    assert obs == "<result>error: division by zero</result>" and info["tool_calls"] == 4
    _, reward, terminated, _, info = env.step(f"<calc>1/0</calc> {boxed(problem.answer)}")
    assert (reward, terminated, info["tool_calls"], info["turns"]) == (1.0, True, 4, 4)


def test_format_errors_keep_the_episode_going():
    env, _, problem = start("ArithmeticTool-v0")
    obs, reward, terminated, truncated, info = env.step("I think it is big.")
    assert obs == ("Format error: Give the final answer as \\boxed{ANSWER}. Or call a tool: <calc>...</calc>.")
    assert info["format_error"] is True and not terminated and not truncated
    obs, _, terminated, truncated, info = env.step("<calc>2+2")
    assert obs == "Format error: close every tool call, e.g. <calc>...</calc>."
    assert info["format_error"] and info["format_errors"] == 2 and not (terminated or truncated)
    _, reward, terminated, _, info = env.step(boxed(problem.answer))
    assert (reward, terminated, info["format_errors"], info["turns"]) == (1.0, True, 2, 3)
    env, _, _ = start("Arithmetic-v0")
    obs, _, terminated, truncated, info = env.step("<calc>1+1</calc>")  # no tools outside tool mode
    assert obs == "Format error: Give the final answer as \\boxed{ANSWER}." and info["format_error"]


def test_max_turns_truncates():
    env, _, problem = start("ArithmeticTool-v0", max_turns=3)
    for _ in range(2):
        assert env.step("<calc>1+1</calc>")[2:4] == (False, False)
    obs, reward, terminated, truncated, info = env.step("<calc>1+1</calc>")
    assert obs == "<result>2</result>" and (reward, terminated, truncated) == (0.0, False, True)
    assert info["success"] is False and info["turns"] == 3 and info["gold"] == problem.answer


def test_python_tool_runs_in_the_sandbox():
    env, obs, _ = start("ArithmeticTool-v0", tools=("calc", "python"))
    assert "<python>CODE</python>" in obs and "<calc>EXPRESSION</calc>" in obs
    obs, *_ = env.step("<python>print(6 * 7)</python>")
    assert obs == "<output>42</output>"
    with pytest.raises(ValueError, match="unknown tools"):
        make("ArithmeticTool-v0", tools=("shell",))


def test_countdown_env_procedural_and_from_real_data():
    env, obs, problem = start("Countdown-v0")
    assert obs.endswith("Give the equation as \\boxed{EXPRESSION}.") and len(problem.numbers) in (3, 4)
    assert env.step(boxed(problem.solution))[1] == 1.0
    env.reset(options={"task_index": 7})
    reused = "+".join(str(problem.numbers[0]) for _ in problem.numbers)
    assert env.step(boxed(reused))[1] == 0.0
    if not (DATA / "countdown_cd3.jsonl").is_file():
        pytest.skip(f"countdown data not found at {DATA}")
    env, obs, problem = start("Countdown-v0", index=0, source=str(DATA / "countdown_cd3.jsonl"))
    assert problem.numbers == (30, 100, 93) and env.unwrapped.checker == "countdown"
    assert env.step(boxed("30 - (100 - 93)"))[1] == 1.0
    env.reset(options={"task_index": 0})
    assert env.step(boxed("(100 - 93) \\times 30 / 30"))[1] == 0.0


@needs_data
def test_dataset_env_from_data_dir_name_and_split():
    env, obs, problem = start("MathFeedback-v0", index=0, source="gsm8k", split="test")
    assert env.unwrapped.num_tasks == 1319 and problem.id == "gsm8k-test-00000"
    assert obs.startswith("Janet’s ducks lay 16 eggs per day.")
    assert env.step(boxed(17))[0] == "Incorrect, try again."
    assert env.step("The answer is \\boxed{\\$18}")[1] == 1.0


def test_generators_are_deterministic_and_splits_disjoint():
    assert arithmetic(5, "train", 2) == arithmetic(5, "train", 2)
    assert arithmetic(5, "train", 2) != arithmetic(5, "train", 2, seed=1)
    assert countdown(9, "test") == countdown(9, "test")
    train = {arithmetic(i, "train").question for i in range(2500)}
    test = {arithmetic(i, "test").question for i in range(2500)}
    assert not train & test and len(test) > 1500
    assert all(split_of(q) == "test" for q in test)
    train_cd = {countdown(i, "train").question for i in range(1000)}
    assert not train_cd & {countdown(i, "test").question for i in range(1000)}
    with pytest.raises(ValueError, match="unknown split"):
        arithmetic(0, "validation")


@pytest.mark.parametrize("difficulty,operands,digits", [(1, 2, (1, 2)), (2, 3, (2,)), (3, 3, (3,))])
def test_arithmetic_difficulty_shapes(difficulty, operands, digits):
    import re

    for i in range(50):
        p = arithmetic(i, "train", difficulty)
        numbers = re.findall(r"\d+", p.solution)
        assert len(numbers) == operands and all(len(n) in digits for n in numbers)
        assert p.question == f"Compute {p.solution}." and calculate(p.solution) == p.answer
        assert ("(" in p.solution) == (difficulty == 3)


def test_countdown_generator_solutions_check():
    for i in range(200):
        p = countdown(i, "train")
        assert p.question.startswith(f"Using the numbers {list(p.numbers)}, create an equation that equals {p.answer}.")
        assert check_countdown(p.solution, p.numbers, p.answer)
    assert {len(countdown(i).numbers) for i in range(50)} == {3, 4}


def test_load_problems_errors(tmp_path):
    missing = tmp_path / "nope.jsonl"
    with pytest.raises(FileNotFoundError, match="nope.jsonl") as err:
        load_problems(str(missing))
    assert "EPRL_MATH_DATA" in str(err.value)
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"question": "1+1?", "answer": "2"}\n{"question": "oops"\n')
    with pytest.raises(ValueError, match=r"bad\.jsonl:2"):
        load_problems(str(bad))
    bad.write_text('{"question": "1+1?"}\n')
    with pytest.raises(ValueError, match=r"bad\.jsonl:1"):
        load_problems(str(bad))


def test_load_problems_jsonl_fields(tmp_path):
    path = tmp_path / "p.jsonl"
    path.write_text(
        '{"question": "q1", "answer": 3}\n\n{"id": "x", "question": "q2", "answer": "4", '
        '"source": "countdown/cd3:1,2,3"}\n{"question": "q3", "answer": "5"}\n'
    )
    problems = load_problems(str(path), limit=2)
    assert problems == [Problem("p-1", "q1", "3", "p"), Problem("x", "q2", "4", "countdown/cd3:1,2,3", (1, 2, 3))]


def test_load_problems_from_hf_dataset(monkeypatch):
    class FakeRows(list):
        column_names = ["problem", "solution"]

    calls = []
    fake = types.SimpleNamespace(
        load_dataset=lambda name, config, split: (
            calls.append((name, config, split))
            or FakeRows(
                [{"problem": "1+1?", "solution": "It is \\boxed{2}."}, {"problem": "2+2?", "solution": "So #### 4"}]
            )
        )
    )
    monkeypatch.setitem(sys.modules, "datasets", fake)
    problems = load_problems("someorg/somemath", split="test")
    assert calls == [("someorg/somemath", None, "test")]
    assert [(p.question, p.answer) for p in problems] == [("1+1?", "2"), ("2+2?", "4")]
    load_problems("hf:openai/gsm8k:main", limit=1)
    assert calls[-1] == ("openai/gsm8k", "main", "train")
    monkeypatch.setitem(sys.modules, "datasets", None)
    with pytest.raises(ImportError, match=r"pip install eprl\[datasets\]"):
        load_problems("hf:openai/gsm8k")


@pytest.mark.parametrize(
    "expr,expected",
    [
        ("37*48+19", "1795"),
        ("1/3", "0.333333"),
        ("10/4", "2.5"),
        ("-(3+4)*2", "-14"),
        ("7//2", "3"),
        ("7 % 3", "1"),
        ("2**10", "1024"),
        ("0.1+0.2", "0.3"),
        ("6/3", "2"),
        ("2**0.5", "1.41421"),
    ],
)
def test_calculator_values(expr, expected):
    assert calculate(expr) == expected


@pytest.mark.parametrize(
    "expr,message",
    [
        ("1/0", "division by zero"),
        ("1+", "syntax error"),
        ("x+1", "unsupported"),
        ("abs(3)", "unsupported"),
        ("9**9**9", "too large"),
        ("10**40", "too large"),
        ("2^3", "use \\*\\*"),
        ("", "empty"),
        ("1+" * 300 + "1", "too long"),
    ],
)
def test_calculator_errors(expr, message):
    with pytest.raises(ToolError, match=message):
        calculate(expr)


def test_last_number_rule_and_small_arithmetic():
    from eprl.envs.math.verify import extract_last_number

    assert extract_last_number("8 + 5 = 13.") == "13"
    assert extract_last_number("It is 1,024 or -3.5 maybe") == "-3.5"
    assert extract_last_number("no digits here") is None
    env = make(
        "eprl/Arithmetic-v0",
        source="small_arithmetic",
        generator_kwargs={"ops": "*", "low": 2, "high": 9},
        answer="last_number",
        max_turns=1,
        split="test",
    )
    obs, info = env.reset(options={"task_index": 3})
    question = obs.splitlines()[0]
    a, b = (int(x) for x in re.findall(r"\d+", question))
    assert question == f"What is {a} * {b}?" and 2 <= a <= 9 and 2 <= b <= 9 and "Answer with a number." in obs
    _, reward, terminated, _, info = env.step(f"{a} * {b} = {a * b}")
    assert (reward, terminated, info["success"]) == (1.0, True, True)
    env.reset(options={"task_index": 3})
    assert env.step(f"I think {a * b + 1}")[1] == 0.0
    sub = make("eprl/Arithmetic-v0", source="small_arithmetic", generator_kwargs={"ops": "-", "low": 1, "high": 9})
    values = [int(sub.unwrapped.problem_at(i).answer) for i in range(50)]
    assert min(values) >= 0  # differences never negative


def test_small_arithmetic_bad_kwargs_fail_at_construction():
    with pytest.raises(ValueError, match="ops must be"):
        make("eprl/Arithmetic-v0", source="small_arithmetic", generator_kwargs={"ops": "/"})
    with pytest.raises(ValueError, match="unknown answer rule"):
        make("eprl/Arithmetic-v0", source="small_arithmetic", answer="first_number")
    with pytest.raises(ValueError, match="generator_kwargs only apply"):
        make("eprl/Math-v0", source="gsm8k", generator_kwargs={"ops": "+"})

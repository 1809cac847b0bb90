"""AppWorld through the real engine over HTTP (marker `appworld`: needs `eprl appworld-setup`).

Runs on the stand-in world (built here if the venv exists but the world does not), or on
the official data when APPWORLD_ROOT points at it (then only task-agnostic checks hold).
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import threading
import time
from pathlib import Path

import pytest

from eprl import envs
from eprl.envs.appworld.setup import build_world, missing_reason, venv_dir, venv_ready, world_ready, world_root

pytestmark = pytest.mark.appworld
REPO = Path(__file__).resolve().parent.parent

CREATE_NOTE = """profile = apis.supervisor.show_profile()
passwords = {p["account_name"]: p["password"] for p in apis.supervisor.show_account_passwords()}
token = apis.simple_note.login(username=profile["email"], password=passwords["simple_note"])["access_token"]
apis.simple_note.create_note(access_token=token, title=TITLE, content="passport, charger", tags=["work"])
apis.supervisor.complete_task()
"""


@pytest.fixture(scope="session")
def world():
    if not venv_ready():
        pytest.skip(f"AppWorld venv not found at {venv_dir()}; run `eprl appworld-setup`")
    if not world_ready() and not os.environ.get("APPWORLD_ROOT"):
        build_world()  # ~30 s
    reason = missing_reason()
    if reason:
        pytest.skip(reason)
    if os.environ.get("APPWORLD_ROOT"):
        pytest.skip("scripted solutions target the stand-in world; APPWORLD_ROOT points at other data")
    return world_root()


def _make(world, **kw):
    return envs.make("eprl/AppWorld-v0", root=str(world), **{"split": "train", "timeout_seconds": 3, **kw}).unwrapped


@pytest.fixture(scope="module")
def env(world):
    e = _make(world)
    yield e
    e.close()


def test_scripted_correct_solution_passes(env):
    obs, info = env.reset(options={"task_index": 0})
    assert info["task_id"] == "a1c3e5f_1" and "Packing list" in obs and "maya.ortiz@gmail.com" in obs
    obs, reward, terminated, truncated, info = env.step(CREATE_NOTE.replace("TITLE", '"Packing list"'))
    assert (terminated, truncated, reward, info["success"]) == (True, False, 1.0, True), (obs, info)
    assert info["tests_passed"] == info["num_tests"] == 4


def test_wrong_solution_fails_the_right_tests(env):
    env.reset(options={"task_index": 0})
    obs, reward, terminated, _, info = env.step(CREATE_NOTE.replace("TITLE", '"Packing lst"'))
    assert terminated and not info["success"] and info["failure_reason"] == "tests_failed"
    assert info["failed_tests"] == [
        "the new note belongs to the supervisor and has the requested title, content and tag"
    ]
    assert reward == pytest.approx(3 / 4)


def test_success_reward_mode(world):
    e = _make(world, reward="success")
    try:
        e.reset(options={"task_index": 0})
        assert e.step(CREATE_NOTE.replace("TITLE", '"nope"'))[1] == 0.0
    finally:
        e.close()


def test_exception_and_empty_action_come_back_as_observations(env):
    env.reset(options={"task_index": 0})
    obs, reward, terminated, truncated, _ = env.step("x = 1\nprint(x / 0)")
    assert "ZeroDivisionError" in obs and "Traceback" in obs and not (terminated or truncated) and reward == 0.0
    obs, _, terminated, _, _ = env.step("")
    assert "No Python code found" in obs and not terminated
    obs, *_ = env.step("print(x + 1)")  # the REPL state survived the exception
    assert obs.strip() == "2"


def test_long_output_is_truncated_with_a_note(env):
    env.reset(options={"task_index": 0})
    obs, *_ = env.step("print('a' * 20000)")
    assert len(obs) < 4200 and "[output truncated" in obs


def test_infinite_loop_is_cut_by_the_timeout(env):
    env.reset(options={"task_index": 0})
    t0 = time.monotonic()
    obs, _, terminated, _, _ = env.step("while True:\n    pass")
    assert time.monotonic() - t0 < 15 and "timed out" in obs and not terminated
    obs, *_ = env.step("print('still alive')")
    assert "still alive" in obs


def test_max_interactions_truncates_and_evaluates(world):
    e = _make(world, max_interactions=2)
    try:
        e.reset(options={"task_index": 0})
        assert e.step("print(1)")[2:4] == (False, False)
        _, reward, terminated, truncated, info = e.step("print(2)")
        assert (terminated, truncated, info["success"], info["failure_reason"]) == (
            False,
            True,
            False,
            "max_interactions",
        )
        assert 0.0 <= reward < 1.0 and info["num_tests"] == 4
    finally:
        e.close()


def test_killed_server_fails_the_episode_and_is_restarted(env):
    env.reset(options={"task_index": 0})
    old_pid, old_socket = env.server.proc.pid, env.server.socket
    os.killpg(old_pid, signal.SIGKILL)
    env.server.proc.wait(timeout=10)
    obs, reward, terminated, truncated, info = env.step("print(1)")
    assert terminated and reward == 0.0 and not info["success"]
    assert info["failure_reason"].startswith("server_error") and "Environment error" in obs
    assert env.server.alive() and env.server.proc.pid != old_pid and env.server.restarts >= 1
    assert env.server.socket != old_socket
    env.reset(options={"task_index": 0})  # the restarted server serves the next episode
    assert env.step(CREATE_NOTE.replace("TITLE", '"Packing list"'))[4]["success"]


def test_four_concurrent_episodes_on_four_servers(world):
    pool = [_make(world) for _ in range(4)]
    results: dict[int, tuple] = {}

    def play(i):
        e = pool[i]
        obs, info = e.reset(options={"task_index": i})  # reference solutions written by the world builder
        code = (world / "data" / "tasks" / info["task_id"] / "ground_truth" / "solution_code.txt").read_text()
        results[i] = e.step(code)[1:] + (e.server.socket, e.experiment)

    try:
        threads = [threading.Thread(target=play, args=(i,)) for i in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(timeout=300)
        assert sorted(results) == [0, 1, 2, 3]
        assert all(r[0] == 1.0 and r[1] and r[3]["success"] for r in results.values()), results
        assert len({r[4] for r in results.values()}) == 4 and len({r[5] for r in results.values()}) == 4
    finally:
        for e in pool:
            e.close()


def test_environment_tokens_never_reach_the_loss_on_a_real_trajectory(env, tiny_tokenizer):
    from eprl.agents.react import ReactAgent
    from eprl.agents.rollout import RolloutRunner
    from eprl.training.config import SamplingConfig

    agent = ReactAgent(tiny_tokenizer, system_prompt="Solve the task with python code.")
    messages = [
        "Try:\n```python\nprint(1 / 0)\n```",
        "Fixed.\n```python\n" + CREATE_NOTE.replace("TITLE", '"Packing list"') + "```",
    ]
    from eprl.agents.engines import ScriptedEngine

    stop = agent.stop_token_ids[0]  # one fixed assistant message per turn, ending with the stop token
    engine = ScriptedEngine([tiny_tokenizer(m, add_special_tokens=False)["input_ids"] + [stop] for m in messages])
    runner = RolloutRunner(lambda: env, agent, engine, max_turns=4, max_context_tokens=100_000, progress=False)
    (traj,), _ = runner.run([0], group_size=1, sampling=SamplingConfig(max_new_tokens=8), seed=0)
    assert traj.success and traj.reward == 1.0 and traj.termination == "terminated"
    generated = [t for t, m in zip(traj.token_ids, traj.loss_mask) if m == 1]
    expected = [
        t
        for m in messages
        for t in tiny_tokenizer(m, add_special_tokens=False)["input_ids"] + [agent.stop_token_ids[0]]
    ]
    assert generated == expected  # exactly the policy's tokens carry mask 1
    env_text = tiny_tokenizer.decode([t for t, m in zip(traj.token_ids, traj.loss_mask) if m == 0])
    assert "ZeroDivisionError" in env_text and "Packing list" in env_text  # observations live in mask-0 tokens
    for start, end in traj.turn_spans:
        assert set(traj.loss_mask[start:end]) == {1}


def test_episode_metrics_report_tgc_sgc_and_mark_the_standin(env):
    infos = [
        {"task_id": "aaa_1", "success": True, "difficulty": 1},
        {"task_id": "aaa_2", "success": False, "difficulty": 2},
        {"task_id": "bbb_1", "success": True, "difficulty": 1},
        {"task_id": "bbb_2", "success": True, "difficulty": 2},
    ]
    m = env.episode_metrics(infos)
    assert m["appworld_standin"] == 1.0
    assert m["tgc"] == 75.0 and m["sgc"] == 50.0  # scenario aaa fails one of its tasks
    assert m["difficulty_1_tgc"] == 100.0 and m["difficulty_2_tgc"] == 50.0


# AppWorld's own guard refuses `import socket` or `open(...)` by name; these spellings get past it, so what
# stops them is the sandbox around the server (envs/appworld/server.py).
GUARD_BYPASS = "b = __builtins__ if isinstance(__builtins__, dict) else vars(__builtins__)\n"


def posix(fn: str) -> str:
    """posix.<fn> spelled so that AppWorld's guard, which reads names, sees neither the module nor the function."""
    return f"getattr(__import__('pos' + 'ix'), {fn[:2]!r} + {fn[2:]!r})"


def test_code_past_appworlds_guard_has_no_network_and_no_host_files(env, world):
    listener = socket.create_server(("127.0.0.1", 0))
    port = listener.getsockname()[1]
    listener.settimeout(0.5)
    env.reset(options={"task_index": 0})
    try:
        obs, *_ = env.step(
            f"s = __import__('so' + 'cket').socket()\ns.settimeout(3)\ns.connect(('127.0.0.1', {port}))\nprint('in')"
        )
        assert "Network is unreachable" in obs or "Connection refused" in obs, obs
        with pytest.raises(TimeoutError):
            listener.accept()  # nothing reached the host's loopback
    finally:
        listener.close()
    obs, *_ = env.step(GUARD_BYPASS + f"print(b['op' + 'en']({str(REPO / 'README.md')!r}).read()[:40])")
    assert "No such file or directory" in obs, obs  # the checkout is not in the sandbox
    target = world / "data" / "pwned"
    # AppWorld's guard replaces os.open (and os.listdir, os.fork...) with no-ops; posix's own are the real calls
    obs, *_ = env.step(f"{posix('open')}({str(target)!r}, {os.O_WRONLY | os.O_CREAT})")
    assert "Read-only file system" in obs and not target.exists(), obs  # the world is read-only
    obs, *_ = env.step(f"print('README.md' in {posix('listdir')}({str(REPO)!r}))")
    assert obs.strip() == "False" or "No such file" in obs, obs  # of the checkout, at most the world's dir
    obs, *_ = env.step("x = bytearray(8 * 2**30)")
    assert "MemoryError" in obs  # RLIMIT_AS
    obs, *_ = env.step("print(len(bytearray(2**20)))")
    assert obs.strip() == "1048576"  # and the server lives on


def _processes_with(marker: bytes) -> list[int]:
    found = []
    for proc in Path("/proc").iterdir():
        try:
            if proc.name.isdigit() and marker in (proc / "cmdline").read_bytes():
                found.append(int(proc.name))
        except OSError:
            pass
    return found


def test_a_process_started_by_the_agent_dies_with_the_server(world):
    e = _make(world)
    marker = b"sleep\x004242"
    try:
        e.reset(options={"task_index": 0})
        e.step(
            f"if {posix('fork')}() == 0:\n    {posix('execv')}('/usr/bin/sleep', ['sleep', '4242'])\nprint('forked')"
        )
        deadline = time.monotonic() + 10
        while not _processes_with(marker) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert _processes_with(marker), "the agent's child did not start (the check would see nothing)"
    finally:
        e.close()
    deadline = time.monotonic() + 10
    while _processes_with(marker) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not _processes_with(marker), "a process the agent started outlived its server"


def test_kept_outputs_copy_a_planted_symlink_as_a_link(world):
    e = _make(world, keep_outputs=True)
    kept = world / "experiments" / "outputs" / e.experiment
    try:
        e.reset(options={"task_index": 0})
        inside = str(world.resolve() / "experiments" / "outputs" / e.experiment)  # the sandbox's own outputs
        e.step(f"try:\n    {posix('mkdir')}({inside!r})\nexcept OSError:\n    pass")  # AppWorld may have made it
        obs, *_ = e.step(f"{posix('symlink')}('/etc/passwd', {inside + '/leak'!r})\nprint('planted')")
        assert "planted" in obs, obs
        e.step(CREATE_NOTE.replace("TITLE", '"Packing list"'))  # ends the episode: the outputs are copied out
        assert (kept / "leak").is_symlink() and (kept / "leak").readlink() == Path("/etc/passwd")
    finally:
        e.close()
        shutil.rmtree(kept, ignore_errors=True)

"""Adversarial actions (tests/corpus/adversarial_actions/*.json) against every built-in math env and tool.

Each case must give an observation in bounded time, a finite reward, nothing escaping (no forbidden
text seen, no host file written, no process left behind), and the env must go on: a fresh episode
still takes a correct answer.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import socket
import time
import uuid
from pathlib import Path

import pytest

from eprl.envs import make
from eprl.envs.math import verify

CORPUS = Path(__file__).parent / "corpus" / "adversarial_actions"
REPO = Path(__file__).resolve().parent.parent
ENVS = {  # key -> (env id, kwargs); python calls get 1 s each so the corpus stays fast
    "single": ("Arithmetic-v0", {}),
    "tool": ("ArithmeticTool-v0", {"tools": ("calc", "python"), "python_timeout_s": 1.0}),
    "feedback": ("MathFeedback-v0", {"source": "arithmetic"}),
    "countdown": ("Countdown-v0", {}),
}
# Per step, unless a case says otherwise: what the env promises (an answer check is cut at CHECK_TIMEOUT_S,
# plus a worker start) with slack for a loaded 2-core CI machine; a hang still fails.
SECONDS = verify.CHECK_TIMEOUT_S + 5.0
MAX_OBSERVATION_CHARS = 8000


def _cases():
    for path in sorted(CORPUS.glob("*.json")):
        for case in json.loads(path.read_text())["cases"]:
            for env_key in case.get("envs", list(ENVS)):
                yield pytest.param(case, env_key, id=f"{path.stem}/{case['id']}/{env_key}")


def _action(case: dict, subs: dict) -> str:
    text = case["action"] if "action" in case else "".join(piece * count for piece, count in case["parts"])
    for key, value in subs.items():
        text = text.replace("{" + key + "}", value)
    return text


def _host_processes_with(marker: str) -> list[int]:
    pids = []
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            alive = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
            if alive and marker.encode() in Path(f"/proc/{pid}/cmdline").read_bytes():
                pids.append(int(pid))
        except OSError:
            continue
    return pids


@pytest.fixture(scope="module")
def listener():
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(8)
    server.setblocking(False)
    yield server
    server.close()


@pytest.fixture(scope="module", autouse=True)
def short_checks():
    old, verify.CHECK_TIMEOUT_S = verify.CHECK_TIMEOUT_S, 1.0  # the bound itself is tested in test_math_verify
    verify.check_math("\\boxed{\\frac{1}{2}}", "0.5")  # start the checker worker outside any case's clock
    yield
    verify.CHECK_TIMEOUT_S = old


def test_corpus_is_big_enough():
    cases = [c for p in CORPUS.glob("*.json") for c in json.loads(p.read_text())["cases"]]
    assert len(cases) >= 60 and len({c["id"] for c in cases}) == len(cases)


@pytest.mark.skipif(shutil.which("bwrap") is None, reason="bwrap not on PATH: apt-get install -y bubblewrap")
@pytest.mark.parametrize("case,env_key", list(_cases()))
def test_adversarial_action(case, env_key, listener, monkeypatch, tmp_path):
    secret = f"eprl-secret-{uuid.uuid4().hex}"
    monkeypatch.setenv("EPRL_CORPUS_TOKEN", secret)
    subs = {
        "marker": f"eprl-corpus-{uuid.uuid4().hex}",
        "host_file": str(tmp_path / "escaped.txt"),
        "repo": str(REPO),
        "port": str(listener.getsockname()[1]),
        "secret": secret,
    }
    env_id, kwargs = ENVS[env_key]
    env = make(env_id, **kwargs)
    env.reset(seed=0, options={"task_index": 3})

    start = time.monotonic()
    obs, reward, terminated, truncated, info = env.step(_action(case, subs))
    elapsed = time.monotonic() - start

    assert elapsed < case.get("seconds", SECONDS), f"step took {elapsed:.1f} s"
    assert isinstance(obs, str) and len(obs) <= MAX_OBSERVATION_CHARS
    assert math.isfinite(reward) and reward in (0.0, 1.0) and isinstance(info, dict)
    for text in case.get("forbid", []):
        assert text.format(**subs) not in obs, (text, obs[:500])
    assert not Path(subs["host_file"]).exists()
    if case.get("marker"):
        time.sleep(0.2)
        assert _host_processes_with(subs["marker"]) == []
    with pytest.raises(BlockingIOError):
        listener.accept()  # nothing reached the host's loopback

    env.reset(seed=0, options={"task_index": 5})  # the run goes on
    problem = env.unwrapped.problem
    if env_key != "countdown":
        assert env.step(f"\\boxed{{{problem.answer}}}")[1] == 1.0
    else:
        assert env.step("\\boxed{0}")[2]  # judged and over

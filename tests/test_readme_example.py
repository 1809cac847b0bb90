"""The README's 'Registering an environment' example works as written."""
from __future__ import annotations

import re
import sys
from pathlib import Path

from gymnasium.utils.env_checker import check_env

import envs

README = Path(__file__).resolve().parent.parent / "README.md"


def test_readme_env_example_registers_checks_and_plays(tmp_path, monkeypatch):
    code = re.search(r"```python\n(# my_envs/guess.py\n.*?)```", README.read_text(), re.S).group(1)
    (tmp_path / "my_envs").mkdir()
    (tmp_path / "my_envs" / "__init__.py").write_text("")
    (tmp_path / "my_envs" / "guess.py").write_text(code)
    monkeypatch.syspath_prepend(str(tmp_path))
    __import__("my_envs.guess")
    assert "eprl/Guess-v0" in envs.list_envs()
    env = envs.make("eprl/Guess-v0")
    check_env(env.unwrapped)
    obs, info = env.reset(options={"task_index": 4})
    assert info["task_id"] == "guess-5"
    assert env.step("3")[:4] == ("higher", 0.0, False, False)
    assert env.step("7")[0] == "lower"
    obs, reward, terminated, truncated, info = env.step("5")
    assert (reward, terminated, truncated, info["success"]) == (1.0, True, False, True)
    sys.modules.pop("my_envs.guess", None)
    sys.modules.pop("my_envs", None)

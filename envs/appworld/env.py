"""AppWorldEnv: the agent's Python runs in AppWorld's REPL over HTTP; unit tests judge the end state.

reset picks a task of a split (train / dev / test_normal / test_challenge, read from
``ROOT/data/datasets/<split>.txt``), optionally filtered by difficulty and a denylist, and
initializes its world on this env's own server. step executes the code, returns the REPL
output (truncated with a note), and ends the episode when the agent calls
``apis.supervisor.complete_task`` (terminated) or the interaction budget is spent (truncated).
Reward: fraction of the task's tests passed ("dense", as LOOP) or 1/0 success ("success").
A crashed or hung server ends the episode as failed (info["failure_reason"]) and is restarted.
The server runs the agent's code, so it is sandboxed (``sandbox: bwrap``, the default; see server.py).
"""

from __future__ import annotations

import json
import shutil
import uuid
from pathlib import Path

from eprl.envs.appworld.client import AppWorldClient
from eprl.envs.appworld.metrics import summarize
from eprl.envs.appworld.server import AppWorldServer, AppWorldServerError
from eprl.envs.appworld.setup import world_root
from eprl.envs.base import TextEnv

SPLITS = ("train", "dev", "test_normal", "test_challenge")
EMPTY_ACTION = (
    "Execution failed. No Python code found in your message. Write the code to run in a ```python\n...\n``` block."
)
FIRST_OBSERVATION = """Using these APIs, now generate code to solve the actual task:

My name is: {first_name} {last_name}. My personal email is {email} and phone number is {phone_number}.
Task: {instruction}"""


def load_split(root: Path, split: str, difficulty: int | None = None, denylist=()) -> list[str]:
    """Task ids of a split, as AppWorld's load_task_ids reads them (tags after ':' dropped)."""
    path = root / "data" / "datasets" / f"{split}.txt"
    if not path.is_file():
        raise FileNotFoundError(
            f"AppWorld split file not found: {path}; choose a split in {SPLITS} "
            "or run `eprl appworld-setup` to build the world"
        )
    ids = [line.split(":")[0].strip() for line in path.read_text().splitlines() if line.strip()]
    if difficulty is not None:
        ids = [t for t in ids if task_metadata(root, t).get("difficulty") == difficulty]
    return [t for t in ids if t not in set(denylist)]


def task_metadata(root: Path, task_id: str) -> dict:
    path = root / "data" / "tasks" / task_id / "ground_truth" / "metadata.json"
    return json.loads(path.read_text()) if path.is_file() else {}


class AppWorldEnv(TextEnv):
    """One AppWorld server per env instance (so one per concurrent episode)."""

    def __init__(
        self,
        split: str = "train",
        difficulty: int | None = None,
        denylist: tuple[str, ...] = (),
        reward: str = "dense",
        max_interactions: int | None = None,
        max_output_chars: int = 4000,
        timeout_seconds: int = 10,
        request_margin: float = 20.0,
        root: str | None = None,
        venv: str | None = None,
        server_start_timeout: float = 120.0,
        keep_outputs: bool = False,
        sandbox: str = "bwrap",
    ):
        super().__init__()
        if reward not in ("dense", "success"):
            raise ValueError(f"reward must be 'dense' (fraction of tests passed) or 'success', got {reward!r}")
        self.root = Path(root).expanduser() if root else world_root()
        # The stand-in builder leaves this marker: results on that world are never AppWorld scores.
        self.standin = (self.root / "data" / "standin_world.json").is_file()
        self.split, self.reward_type = split, reward
        self.task_ids = load_split(self.root, split, difficulty, denylist)
        if not self.task_ids:
            raise ValueError(
                f"no AppWorld tasks in split {split!r} (difficulty={difficulty}, denylist={list(denylist)})"
            )
        self.max_interactions = max_interactions or (40 if split == "train" else 50)
        self.max_output_chars, self.timeout_seconds = max_output_chars, timeout_seconds
        self.request_timeout = timeout_seconds + request_margin
        self.keep_outputs = keep_outputs
        self.server = AppWorldServer(venv=venv, root=self.root, start_timeout=server_start_timeout, sandbox=sandbox)
        self.client: AppWorldClient | None = None
        self.experiment = f"eprl-{uuid.uuid4().hex[:12]}"  # distinct output dir per env/server
        self._open: str | None = None

    @property
    def num_tasks(self) -> int:
        return len(self.task_ids)

    # ------------------------------------------------------------------ server
    def _ensure_server(self, restart: bool = False) -> None:
        if restart or not self.server.alive():
            self.server.restart() if self.server.proc is not None or restart else self.server.start()
            if self.client is not None:
                self.client.shutdown()
            self.client = AppWorldClient(
                self.server.http(self.request_timeout), self.server.socket, self.request_timeout
            )

    def _initialize(self, task_id: str) -> dict:
        settings = dict(
            timeout_seconds=self.timeout_seconds,
            max_interactions=self.max_interactions + 1,
            random_seed=100,
            raise_on_failure=False,
        )
        try:
            self._ensure_server()
            return self.client.initialize(task_id, self.experiment, **settings)
        except AppWorldServerError:  # one restart, then give up loudly
            self._ensure_server(restart=True)
            return self.client.initialize(task_id, self.experiment, **settings)

    # ------------------------------------------------------------------ episode
    def _reset_task(self, index: int) -> tuple[str, dict]:
        self._finish_world()
        task_id = self.task_ids[index]
        task = self._initialize(task_id)
        self._open, self.turns = task_id, 0
        meta = task_metadata(self.root, task_id)
        obs = FIRST_OBSERVATION.format(instruction=task["instruction"], **task["supervisor"])
        info = {
            "task_id": task_id,
            "scenario_id": task_id.split("_")[0],
            "difficulty": meta.get("difficulty"),
            "supervisor": task["supervisor"],
            "instruction": task["instruction"],
            "datetime": task["datetime"],
        }
        return obs, info

    def _step_text(self, action: str) -> tuple[str, float, bool, bool, dict]:
        self.turns += 1
        task_id = self._open
        info = {"task_id": task_id, "turns": self.turns}
        try:
            if action.strip():
                obs = self.client.execute(task_id, action, timeout=self.request_timeout)
            else:
                obs = EMPTY_ACTION
            completed = self.client.task_completed(task_id)
            truncated = not completed and self.turns >= self.max_interactions
            if not (completed or truncated):
                return self._truncate(obs), 0.0, False, False, {**info, "success": False}
            result = self.client.evaluate(task_id)
        except AppWorldServerError as err:
            return self._server_failure(err, info)
        self._finish_world()
        n = max(int(result["num_tests"]), 1)
        passed = len(result["passes"])
        success = bool(result["success"])
        reward = passed / n if self.reward_type == "dense" else float(success)
        info.update(
            success=success,
            tests_passed=passed,
            num_tests=n,
            difficulty=result.get("difficulty"),
            scenario_id=task_id.split("_")[0],
            failed_tests=[f["requirement"] for f in result["failures"]],
            failure_reason=None if success else ("max_interactions" if truncated else "tests_failed"),
        )
        if truncated:
            obs = f"{obs}\n[maximum number of interactions ({self.max_interactions}) reached]"
        return self._truncate(obs), reward, completed, truncated, info

    def _server_failure(self, err: Exception, info: dict) -> tuple[str, float, bool, bool, dict]:
        """Crashed/hung server: fail the episode with the reason, restart the server."""
        reason = f"server_error: {err}"
        self._open = None
        try:
            self._ensure_server(restart=True)
        except AppWorldServerError as restart_err:
            reason += f"; restart failed: {restart_err}"
        info.update(success=False, failure_reason=reason, tests_passed=0, server_restarts=self.server.restarts)
        return f"Environment error: {err}", 0.0, True, False, info

    def _truncate(self, text: str) -> str:
        if len(text) <= self.max_output_chars:
            return text
        cut = len(text) - self.max_output_chars
        return text[: self.max_output_chars] + f"\n[output truncated: {cut} more characters not shown; print less]"

    def _finish_world(self) -> None:
        if self._open is not None and self.client is not None and self.server.alive():
            try:
                self.client.close(self._open)
            except AppWorldServerError:
                pass
        self._open = None
        if self.server.run_dir is None:
            return
        written = self.server.outputs / self.experiment  # the sandbox's experiments/outputs, on the host
        if self.keep_outputs and written.is_dir():
            # symlinks=True: a link the agent's code planted stays a link, never the host file it names
            shutil.copytree(
                written, self.root / "experiments" / "outputs" / self.experiment, symlinks=True, dirs_exist_ok=True
            )
        shutil.rmtree(written, ignore_errors=True)

    def episode_metrics(self, infos: list[dict]) -> dict[str, float]:
        """TGC / SGC (percent), overall and per difficulty; `appworld_standin` = 1 marks stand-in results."""
        summary = summarize(infos)
        out = {"appworld_standin": float(self.standin)}
        for group, values in summary.items():
            prefix = "" if group == "aggregate" else f"{group}_"
            out.update({f"{prefix}tgc": values["tgc"], f"{prefix}sgc": values["sgc"]})
        return out

    def close(self) -> None:
        self._finish_world()
        if self.client is not None:
            self.client.shutdown()
            self.client = None
        self.server.stop()
        super().close()

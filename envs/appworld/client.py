"""httpx client for the AppWorld environment server (`appworld.serve.environment`).

Every call is a POST with the task id; the server answers ``{"output": ...}``. Connection
errors, timeouts (a hung server) and non-200 answers raise AppWorldServerError.
"""

from __future__ import annotations

from typing import Any

import httpx

from eprl.envs.appworld.server import AppWorldServerError


class AppWorldClient:
    """initialize / execute / task_completed / evaluate / close for one task world."""

    def __init__(self, http: httpx.Client, address: str, timeout: float = 30.0):
        self.http, self.address, self.timeout = http, address, timeout  # address: the server's socket, for messages

    def _post(self, method: str, timeout: float | None = None, **body: Any) -> Any:
        try:
            response = self.http.post(f"/{method}", json=body, timeout=timeout or self.timeout)
        except httpx.TimeoutException as err:
            raise AppWorldServerError(
                f"AppWorld server at {self.address} timed out on /{method} "
                f"after {timeout or self.timeout:.0f} s (hung?)"
            ) from err
        except httpx.HTTPError as err:
            raise AppWorldServerError(
                f"AppWorld server at {self.address} unreachable on /{method}: {type(err).__name__}: {err}"
            ) from err
        if response.status_code != 200:
            raise AppWorldServerError(
                f"AppWorld /{method} failed with HTTP {response.status_code}: {response.text[:2000]}"
            )
        return response.json()["output"]

    def initialize(self, task_id: str, experiment_name: str, **settings: Any) -> dict:
        """Load the task's world; returns task_id, instruction, supervisor, datetime."""
        return self._post("initialize", task_id=task_id, experiment_name=experiment_name, **settings)

    def execute(self, task_id: str, code: str, timeout: float | None = None) -> str:
        return self._post("execute", timeout=timeout, task_id=task_id, code=code)

    def task_completed(self, task_id: str) -> bool:
        return bool(self._post("task_completed", task_id=task_id))

    def evaluate(self, task_id: str) -> dict:
        """TestTracker.to_dict: success, difficulty, num_tests, passes, failures."""
        return self._post("evaluate", task_id=task_id, suppress_errors=True)

    def close(self, task_id: str) -> None:
        self._post("close", task_id=task_id)

    def shutdown(self) -> None:
        self.http.close()

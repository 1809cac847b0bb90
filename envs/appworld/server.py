"""One AppWorld environment server: uvicorn on ``appworld.serve.environment:app`` in AppWorld's venv.

Bound to 127.0.0.1 on a free port, in its own process group; a server holds one world at a
time, so there is one per concurrent episode. Shutdown: SIGINT, then SIGKILL.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import tempfile
import time
from pathlib import Path

import httpx

from eprl.envs.appworld.setup import missing_reason, venv_dir, venv_python, world_root


class AppWorldServerError(RuntimeError):
    """The server is down, crashed, hung (timed out) or answered with an error."""


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class AppWorldServer:
    """Start/stop/restart one `uvicorn appworld.serve.environment:app` process."""

    def __init__(self, venv: str | Path | None = None, root: str | Path | None = None, start_timeout: float = 120.0):
        self.venv = Path(venv) if venv else venv_dir()
        self.root = Path(root) if root else world_root()
        self.start_timeout = start_timeout
        self.proc: subprocess.Popen | None = None
        self.port: int | None = None
        self.restarts = 0
        self._log = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def log_tail(self, n: int = 20) -> str:
        if self._log is None:
            return ""
        self._log.flush()
        lines = Path(self._log.name).read_text(errors="replace").splitlines()
        return "\n".join(lines[-n:])

    def start(self) -> "AppWorldServer":
        reason = missing_reason(self.venv, self.root)
        if reason:
            raise AppWorldServerError(reason)
        self.stop()
        self.port = free_port()
        self._log = tempfile.NamedTemporaryFile("w+", prefix=f"appworld-server-{self.port}-", suffix=".log")
        env = {k: v for k, v in os.environ.items() if not k.startswith(("PYTHON", "VIRTUAL_ENV"))}
        env.update(APPWORLD_ROOT=str(self.root), PYTHONUNBUFFERED="1", OMP_NUM_THREADS="1")
        cmd = [
            str(venv_python(self.venv)),
            "-m",
            "uvicorn",
            "appworld.serve.environment:app",
            "--host",
            "127.0.0.1",
            "--port",
            str(self.port),
            "--log-level",
            "warning",
        ]
        self.proc = subprocess.Popen(
            cmd,
            cwd=str(self.root),
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        deadline = time.monotonic() + self.start_timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise AppWorldServerError(
                    f"AppWorld server exited with code {self.proc.returncode} while starting:\n"
                    f"{self.log_tail()}\nFix: check the venv with `eprl appworld-setup`"
                )
            try:
                if httpx.get(self.url + "/", timeout=2.0).status_code == 200:
                    return self
            except httpx.HTTPError:
                pass
            time.sleep(0.2)
        self.stop()
        raise AppWorldServerError(
            f"AppWorld server on port {self.port} not ready after {self.start_timeout:.0f} s:\n{self.log_tail()}"
        )

    def stop(self, grace: float = 5.0) -> None:
        """SIGINT the process group, then SIGKILL after `grace` seconds."""
        proc, self.proc = self.proc, None
        if proc is not None and proc.poll() is None:
            for sig, wait in ((signal.SIGINT, grace), (signal.SIGKILL, 5.0)):
                try:
                    os.killpg(proc.pid, sig)
                except ProcessLookupError:
                    break
                try:
                    proc.wait(timeout=wait)
                    break
                except subprocess.TimeoutExpired:
                    continue
        if self._log is not None and proc is None:
            self._log.close()
            self._log = None

    def restart(self) -> "AppWorldServer":
        self.restarts += 1
        self.stop(grace=1.0)
        return self.start()

    def __enter__(self) -> "AppWorldServer":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()
        if self._log is not None:
            self._log.close()
            self._log = None

    def __del__(self):
        try:
            self.stop(grace=1.0)
        except Exception:
            pass

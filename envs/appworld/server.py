"""One AppWorld environment server: uvicorn on ``appworld.serve.environment:app`` in AppWorld's venv.

The server runs the agent's Python (AppWorld's REPL executes it in-process), so with ``sandbox="bwrap"``
(the default) it runs isolated as the python tool does (envs/bwrap.py): no network namespace shared with
the host, the venv, the interpreter and the world read-only, its own pid namespace (every child dies with
it), an unprivileged uid, rlimits on memory, processes, file size and open files. It listens on a Unix
socket in a per-server directory, bound into the sandbox with its own ``experiments/outputs``, the only
host paths it can write. ``sandbox="none"`` runs it unisolated on the same socket (with a warning).
A server holds one world at a time, so there is one per concurrent episode. Shutdown: SIGINT, then SIGKILL.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import tempfile
import time
from pathlib import Path

import httpx

from eprl.envs import bwrap
from eprl.envs.appworld.setup import missing_reason, venv_dir, venv_python, world_root
from eprl.envs.sandbox import check_sandbox

SOCKET = "server.sock"
MEMORY_MB = 4096  # address space of the server: AppWorld's apps, their DBs and the agent's objects
MAX_PROCESSES = 64  # processes of the server's uid at once (a fork bomb in the agent's code stops here)
MAX_FILE_BYTES = 256 * 2**20
MAX_OPEN_FILES = 1024
TMPFS_BYTES = 256 * 2**20
# Limits are set inside the sandbox before uvicorn starts (no preexec_fn: the rollout runner has threads).
_BOOTSTRAP = """import resource, runpy, sys
for name, value in {limits!r}:
    resource.setrlimit(getattr(resource, name), (value, value))
sys.argv = {argv!r}
runpy.run_module("uvicorn", run_name="__main__")
"""


class AppWorldServerError(RuntimeError):
    """The server is down, crashed, hung (timed out) or answered with an error."""


def server_ro_paths(venv: Path, root: Path) -> list[str]:
    """What the server reads: the venv, the interpreter it was made from, the world."""
    real = Path(os.path.realpath(venv_python(venv)))
    return sorted({str(venv.resolve()), str(real.parents[1]), str(root.resolve())})


class AppWorldServer:
    """Start/stop/restart one `uvicorn appworld.serve.environment:app` process, sandboxed."""

    def __init__(
        self,
        venv: str | Path | None = None,
        root: str | Path | None = None,
        start_timeout: float = 120.0,
        sandbox: str = "bwrap",
        memory_mb: int = MEMORY_MB,
    ):
        check_sandbox(sandbox)
        self.venv = Path(venv) if venv else venv_dir()
        self.root = Path(root) if root else world_root()
        self.start_timeout, self.sandbox, self.memory_mb = start_timeout, sandbox, memory_mb
        self.proc: subprocess.Popen | None = None
        self.run_dir: Path | None = None  # the socket and experiments/outputs of the running server
        self.restarts = 0
        self._log = None
        self._slot: int | None = None

    @property
    def socket(self) -> str | None:
        return str(self.run_dir / SOCKET) if self.run_dir else None

    @property
    def outputs(self) -> Path:
        """Where this server's AppWorld writes experiments/outputs (the host side of the sandbox's)."""
        assert self.run_dir is not None, "server not started"
        return self.run_dir / "outputs"

    def http(self, timeout: float) -> httpx.Client:
        """A client for this server (over its Unix socket; the host name is ignored)."""
        return httpx.Client(
            base_url="http://appworld", transport=httpx.HTTPTransport(uds=self.socket), timeout=timeout, trust_env=False
        )

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def log_tail(self, n: int = 20) -> str:
        if self._log is None:
            return ""
        self._log.flush()
        lines = Path(self._log.name).read_text(errors="replace").splitlines()
        return "\n".join(lines[-n:])

    def _argv(self) -> list[str]:
        uvicorn = ["uvicorn", "appworld.serve.environment:app", "--uds", self.socket, "--log-level", "warning"]
        limits = [
            ("RLIMIT_AS", self.memory_mb * 2**20),
            ("RLIMIT_FSIZE", MAX_FILE_BYTES),
            ("RLIMIT_CORE", 0),
            ("RLIMIT_NOFILE", MAX_OPEN_FILES),
        ]
        if self.sandbox == "bwrap":  # RLIMIT_NPROC counts per uid: only the sandbox's uid is this server's alone
            limits.append(("RLIMIT_NPROC", MAX_PROCESSES))
        python = [str(venv_python(self.venv)), "-B", "-c", _BOOTSTRAP.format(limits=limits, argv=uvicorn)]
        if self.sandbox != "bwrap":
            return python
        outputs = str(self.root.resolve() / "experiments" / "outputs")
        return bwrap.bwrap_argv(
            python,
            server_ro_paths(self.venv, self.root),
            tmpfs_bytes=TMPFS_BYTES,
            uid_slot=self._slot,
            rw_binds=[(str(self.run_dir), str(self.run_dir)), (str(self.outputs), outputs)],
            env={"APPWORLD_ROOT": str(self.root.resolve()), "PYTHONUNBUFFERED": "1"},
            chdir=str(self.root.resolve()),
        )

    def start(self) -> "AppWorldServer":
        reason = missing_reason(self.venv, self.root)
        if reason:
            raise AppWorldServerError(reason)
        self.stop()
        self.run_dir = Path(tempfile.mkdtemp(prefix="eprl-appworld-"))
        self.outputs.mkdir()
        (self.root / "experiments" / "outputs").mkdir(parents=True, exist_ok=True)  # the bind's mount point
        self._log = tempfile.NamedTemporaryFile("w+", prefix="appworld-server-", suffix=".log")
        if self.sandbox == "bwrap":
            self._slot = bwrap.UID_SLOTS.take()
            uid = bwrap.sandbox_uid(self._slot)
            for path in (self.run_dir, self.outputs) if uid is not None else ():  # root mode: the sandbox's uid
                os.chown(path, uid, uid)  # writes the socket and outputs (0700: no other local user can)
            env = bwrap.popen_env()
        else:
            env = {k: v for k, v in os.environ.items() if not k.startswith(("PYTHON", "VIRTUAL_ENV"))}
            env.update(APPWORLD_ROOT=str(self.root), PYTHONUNBUFFERED="1", OMP_NUM_THREADS="1")
        self.proc = subprocess.Popen(
            self._argv(),
            cwd=str(self.root),
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        deadline = time.monotonic() + self.start_timeout
        with self.http(timeout=2.0) as probe:
            while time.monotonic() < deadline:
                if self.proc.poll() is not None:
                    code = self.proc.returncode
                    tail = self.log_tail()
                    self.stop()
                    raise AppWorldServerError(
                        f"AppWorld server exited with code {code} while starting:\n"
                        f"{tail}\nFix: check the venv with `eprl appworld-setup`"
                    )
                try:
                    if os.path.exists(self.socket) and probe.get("/").status_code == 200:
                        return self
                except httpx.HTTPError:
                    pass
                time.sleep(0.2)
        tail = self.log_tail()
        self.stop()
        raise AppWorldServerError(f"AppWorld server not ready after {self.start_timeout:.0f} s:\n{tail}")

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
        if self._slot is not None:
            bwrap.UID_SLOTS.give(self._slot)
            self._slot = None
        if self.run_dir is not None:
            shutil.rmtree(self.run_dir, ignore_errors=True)
            self.run_dir = None
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

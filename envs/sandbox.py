"""Run untrusted, model-written Python in a resource-limited subprocess."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

MAX_FILE_BYTES = 8 * 1024 * 1024


@dataclass(frozen=True)
class SandboxResult:
    stdout: str
    stderr: str
    exit_code: int | None
    timed_out: bool
    truncated: bool

    def as_text(self) -> str:
        """stdout, then stderr's tail, then a timeout note: what a model gets to see."""
        parts = [self.stdout.rstrip("\n")]
        if self.stderr.strip():
            parts.append(self.stderr.rstrip("\n"))
        if self.timed_out:
            parts.append("[timed out]")
        return "\n".join(p for p in parts if p)


# Limits are set by a bootstrap inside the child rather than a preexec_fn, which is not
# safe when the parent runs threads (the rollout runner does).
_BOOTSTRAP = """import resource, sys
for name, value in {limits!r}:
    resource.setrlimit(getattr(resource, name), (value, value))
path = sys.argv[1]
sys.argv = ["main.py"]
source = open(path, encoding="utf-8").read()
del resource, name, value, path
exec(compile(source, "main.py", "exec"), {{"__name__": "__main__", "__builtins__": __builtins__}})
"""


def _bootstrap(timeout_s: float, memory_mb: int) -> str:
    cpu = max(1, int(timeout_s) + 1)
    limits = [("RLIMIT_CPU", cpu), ("RLIMIT_AS", memory_mb * 2**20), ("RLIMIT_FSIZE", MAX_FILE_BYTES),
              ("RLIMIT_CORE", 0), ("RLIMIT_NPROC", 64)]  # NPROC has no effect for root
    return _BOOTSTRAP.format(limits=limits)


def _read(path: Path, max_chars: int) -> tuple[str, bool]:
    with open(path, encoding="utf-8", errors="replace") as f:
        text = f.read(max_chars + 1)
    if len(text) > max_chars:
        return text[:max_chars] + f"\n[output truncated to {max_chars} characters]", True
    return text, False


def run_python(code: str, timeout_s: float = 5, memory_mb: int = 512, max_output_chars: int = 4000) -> SandboxResult:
    """Run ``code`` with ``python -I`` in an empty temp dir, new process group, rlimits and a wall clock."""
    with tempfile.TemporaryDirectory(prefix="eprl-sandbox-") as tmp:
        workdir, io_dir = Path(tmp) / "work", Path(tmp) / "io"
        workdir.mkdir()
        io_dir.mkdir()
        (io_dir / "main.py").write_text(code, encoding="utf-8")
        env = {"PATH": "/usr/bin:/bin", "HOME": str(workdir), "LANG": "C.UTF-8", "PYTHONIOENCODING": "utf-8",
               "OMP_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
        with open(io_dir / "stdout", "wb") as out, open(io_dir / "stderr", "wb") as err:
            command = [sys.executable, "-I", "-c", _bootstrap(timeout_s, memory_mb), str(io_dir / "main.py")]
            proc = subprocess.Popen(command, cwd=workdir, env=env, stdin=subprocess.DEVNULL, stdout=out,
                                    stderr=err, start_new_session=True)
            timed_out = False
            try:
                exit_code = proc.wait(timeout=timeout_s)
            except subprocess.TimeoutExpired:
                timed_out = True
            finally:
                try:
                    os.killpg(proc.pid, signal.SIGKILL)  # also ends anything the code started
                except ProcessLookupError:
                    pass
                if timed_out:
                    proc.wait()
            if timed_out:
                exit_code = None
            elif exit_code == -signal.SIGXCPU:
                timed_out = True
        stdout, out_cut = _read(io_dir / "stdout", max_output_chars)
        stderr, err_cut = _read(io_dir / "stderr", max_output_chars)
        if proc.returncode == -signal.SIGXFSZ:
            out_cut = True
            stdout = stdout if stdout.endswith("characters]") else stdout + "\n[output truncated]"
    return SandboxResult(stdout, stderr, exit_code, timed_out, out_cut or err_cut)

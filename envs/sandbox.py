"""Run untrusted, model-written Python: isolated by bubblewrap (envs/bwrap.py), with limits inside.

``sandbox="bwrap"`` (the default) runs the code in its own namespaces with an empty tmpfs as the
only writable place; ``sandbox="none"`` only applies the limits (rlimits, wall clock, process
group kill) and is an explicit opt-out, warned about once per process. The limits hold in both.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

from eprl.envs import bwrap
from eprl.envs.bwrap import SandboxUnavailableError

SANDBOXES = ("bwrap", "none")
MAX_FILE_BYTES = 8 * 1024 * 1024  # largest file (and stdout/stderr) the code may write
MAX_FILES = 256  # files and directories the program may create
MAX_PROCESSES = 32  # processes of the sandbox's uid at once (root mode: of this sandbox)
MAX_OPEN_FILES = 64
TMPFS_BYTES = 32 * 1024 * 1024  # the sandbox's whole writable space
log = logging.getLogger("eprl.sandbox")
_warned_unsandboxed = False
__all__ = ["SANDBOXES", "SandboxResult", "SandboxUnavailableError", "check_sandbox", "run_python"]


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


# Limits are set by a bootstrap inside the child rather than a preexec_fn, which is not safe when
# the parent runs threads (the rollout runner does). The program arrives on stdin, which then reads
# /dev/null. The audit hook counts created files: a tmpfs has no inode limit bwrap can set.
_BOOTSTRAP = """import os, resource, sys
source = sys.stdin.read()
_null = os.open(os.devnull, os.O_RDONLY); os.dup2(_null, 0); os.close(_null)
for name, value in {limits!r}:
    resource.setrlimit(getattr(resource, name), (value, value))
def _count_created(event, args, _n=[0], _lexists=os.path.lexists, _creat=os.O_CREAT):
    if event == "open" and isinstance(args[2], int) and args[2] & _creat:
        path = args[0]
    elif event in ("os.mkdir", "os.mkfifo", "os.mknod"):
        path = args[0]
    elif event in ("os.symlink", "os.link"):
        path = args[1]
    else:
        return
    if isinstance(path, (str, bytes)) and not _lexists(path):
        _n[0] += 1
        if _n[0] > {max_files}:
            raise OSError(122, "sandbox limit: at most {max_files} files may be created")
sys.addaudithook(_count_created)
del resource, name, value, _null, _count_created
exec(compile(source, "main.py", "exec"), {{"__name__": "__main__", "__builtins__": __builtins__}})
"""


def _bootstrap(timeout_s: float, memory_mb: int) -> str:
    cpu = max(1, int(timeout_s) + 1)
    limits = [
        ("RLIMIT_CPU", cpu),
        ("RLIMIT_AS", memory_mb * 2**20),
        ("RLIMIT_FSIZE", MAX_FILE_BYTES),
        ("RLIMIT_CORE", 0),
        ("RLIMIT_NPROC", MAX_PROCESSES),
        ("RLIMIT_NOFILE", MAX_OPEN_FILES),
    ]
    return _BOOTSTRAP.format(limits=limits, max_files=MAX_FILES)


def _read(path: Path, max_chars: int) -> tuple[str, bool]:
    with open(path, encoding="utf-8", errors="replace") as f:
        text = f.read(max_chars + 1)
    if len(text) > max_chars:
        return text[:max_chars] + f"\n[output truncated to {max_chars} characters]", True
    return text, False


def python_ro_paths() -> list[str]:
    """What the interpreter needs read-only: its prefix (the stdlib) and, for a copied venv binary, the venv."""
    real = Path(os.path.realpath(sys.executable))
    return sorted({sys.base_prefix, sys.base_exec_prefix, str(real.parents[1])})


def check_sandbox(sandbox: str) -> None:
    """Fail now (one line: how to install bwrap) or warn about an explicit opt-out."""
    global _warned_unsandboxed
    if sandbox not in SANDBOXES:
        raise ValueError(f"unknown sandbox {sandbox!r}; choose from {SANDBOXES}")
    if sandbox == "bwrap":
        bwrap.require_bwrap()
    elif not _warned_unsandboxed:
        _warned_unsandboxed = True
        log.warning(
            "eprl: sandbox: none -- model-written python runs WITHOUT isolation (it can read and write "
            "what this process can, reach the network and start processes); use sandbox: bwrap"
        )


def _kill_sandbox(proc: subprocess.Popen, info_r: int | None) -> None:
    """SIGKILL the sandbox's pid 1 (the kernel then ends its whole pid namespace) so bwrap exits and is reaped;
    the process group kill covers the unsandboxed case and a bwrap that never started its child."""
    if info_r is not None and proc.poll() is None:  # only while bwrap lives: after, the pid may be reused
        try:
            child = json.loads(os.read(info_r, 4096).decode() or "{}").get("child-pid")
            if child:
                os.kill(int(child), signal.SIGKILL)
                proc.wait(timeout=5)
        except (OSError, ValueError, subprocess.TimeoutExpired):
            pass
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    proc.wait()


def run_python(
    code: str, timeout_s: float = 5, memory_mb: int = 512, max_output_chars: int = 4000, sandbox: str = "bwrap"
) -> SandboxResult:
    """Run ``code`` with ``python -I`` under ``sandbox``, with rlimits and a wall clock; cwd is an empty dir."""
    check_sandbox(sandbox)
    with tempfile.TemporaryDirectory(prefix="eprl-sandbox-") as tmp:
        io_dir = Path(tmp)
        (io_dir / "main.py").write_text(code, encoding="utf-8", errors="replace")  # lone surrogates -> '?'
        python = [os.path.realpath(sys.executable), "-I", "-B", "-c", _bootstrap(timeout_s, memory_mb)]
        info_r = slot = None
        try:
            if sandbox == "bwrap":
                info_r, info_w = os.pipe()
                os.set_blocking(info_r, False)
                slot = bwrap.UID_SLOTS.take()
                argv = bwrap.bwrap_argv(
                    python, python_ro_paths(), tmpfs_bytes=TMPFS_BYTES, uid_slot=slot, info_fd=info_w
                )
                kw = dict(env=bwrap.popen_env(), pass_fds=(info_w,))
            else:
                (io_dir / "work").mkdir()
                argv, info_w = python, None
                kw = dict(env={**bwrap.SANDBOX_ENV, "HOME": str(io_dir / "work")}, cwd=io_dir / "work")
            with (
                open(io_dir / "main.py", "rb") as src,
                open(io_dir / "stdout", "wb") as out,
                open(io_dir / "stderr", "wb") as err,
            ):
                proc = subprocess.Popen(argv, stdin=src, stdout=out, stderr=err, start_new_session=True, **kw)
                if info_w is not None:
                    os.close(info_w)
                timed_out = False
                try:
                    exit_code = proc.wait(timeout=timeout_s)
                except subprocess.TimeoutExpired:
                    timed_out, exit_code = True, None
                _kill_sandbox(proc, info_r)  # also ends anything the code left running
        finally:
            if info_r is not None:
                os.close(info_r)
            if slot is not None:
                bwrap.UID_SLOTS.give(slot)
        if sandbox == "bwrap" and exit_code is not None and exit_code > 128:  # bwrap: 128 + signal of its child
            exit_code = 128 - exit_code
        if exit_code == -signal.SIGXCPU:
            timed_out = True
        stdout, out_cut = _read(io_dir / "stdout", max_output_chars)
        stderr, err_cut = _read(io_dir / "stderr", max_output_chars)
        if exit_code == -signal.SIGXFSZ:
            out_cut = True
            stdout = stdout if stdout.endswith("characters]") else stdout + "\n[output truncated]"
    return SandboxResult(stdout, stderr, exit_code, timed_out, out_cut or err_cut)

"""bubblewrap (``bwrap``): the command line that isolates one untrusted process, for any tool.

The sandbox gets new pid, ipc, network, uts and cgroup namespaces (and, for a non-root caller, a
user namespace), read-only binds of the given host paths, a private size-limited tmpfs at /tmp as
the only writable place, its own /proc and a minimal /dev, an empty environment, no capabilities
and no_new_privs. ``--die-with-parent`` plus the pid namespace end every descendant with the call.

Run as root, a user namespace would map the sandbox's root onto the host's root, for whom the
kernel ignores RLIMIT_NPROC; so as root there is no user namespace and ``setpriv`` switches to an
unprivileged uid of our own instead (no capabilities, empty bounding set, no supplementary groups).
"""

from __future__ import annotations

import functools
import os
import shutil
import subprocess
import threading
from pathlib import Path

from eprl.errors import EprlError

INSTALL_HINT = (
    "install bubblewrap (Debian/Ubuntu: apt-get install -y bubblewrap; Fedora: dnf install bubblewrap), "
    "or opt out of isolation with the env kwarg sandbox: none"
)
SYSTEM_RO_PATHS = ("/usr", "/lib", "/lib64", "/bin", "/etc/ld.so.cache")
SANDBOX_ENV = {
    "PATH": "/usr/bin:/bin",
    "HOME": "/tmp",
    "LANG": "C.UTF-8",
    "OMP_NUM_THREADS": "1",
    "OPENBLAS_NUM_THREADS": "1",
    "MKL_NUM_THREADS": "1",
}
UID_BASE = 3_000_000  # uids of concurrent root-mode sandboxes: UID_BASE + slot; no host account owns them


class SandboxUnavailableError(EprlError, ValueError):
    """bwrap (or, as root, setpriv) is missing: a setting this host cannot honour (the CLI prints it as one line)."""


@functools.lru_cache(maxsize=1)
def _bwrap_help(bwrap: str) -> str:
    return subprocess.run([bwrap, "--help"], capture_output=True, text=True, timeout=10).stdout


def require_bwrap() -> str:
    """Path of ``bwrap`` (and ``setpriv`` when root), or SandboxUnavailableError saying how to install it."""
    bwrap = shutil.which("bwrap")
    if bwrap is None:
        raise SandboxUnavailableError(
            f"model-written code (the python tool, AppWorld) runs in bwrap, which is not on PATH: {INSTALL_HINT}"
        )
    if os.geteuid() == 0 and shutil.which("setpriv") is None:
        raise SandboxUnavailableError(
            "the sandbox (python tool, AppWorld) run as root needs setpriv to drop root inside it: "
            "install util-linux (apt-get install -y util-linux), or run as a normal user"
        )
    return bwrap


class _UidSlots:
    """Distinct uids for concurrent root-mode sandboxes, so one sandbox's fork flood (RLIMIT_NPROC counts
    per uid) cannot starve another's."""

    def __init__(self):
        self._lock, self._free = threading.Lock(), list(range(256))

    def take(self) -> int:
        with self._lock:
            return self._free.pop() if self._free else 256 + os.getpid() % 1000  # over 256 at once: shared

    def give(self, slot: int) -> None:
        with self._lock:
            if slot < 256:
                self._free.append(slot)


UID_SLOTS = _UidSlots()


def _ro_binds(paths: list[str]) -> list[str]:
    """--ro-bind for each host path (symlinks recreated as symlinks); the bind points' parent dirs are
    created world-traversable, so e.g. a prefix under /root (0700 on the host) is reachable inside."""
    args, bound, made = [], [], set()
    for path in sorted({os.path.normpath(p) for p in paths}, key=lambda p: (p.count("/"), p)):
        if not os.path.lexists(path) or any(path == b or path.startswith(b + "/") for b in bound):
            continue
        for parent in list(reversed(Path(path).parents))[1:]:  # skip "/"
            if str(parent) not in made:
                args += ["--perms", "0755", "--dir", str(parent)]
                made.add(str(parent))
        if os.path.islink(path) and os.path.dirname(path) == "/":  # /bin -> usr/bin on merged-/usr systems
            args += ["--symlink", os.readlink(path), path]
        else:
            args += ["--ro-bind", path, path]
            bound.append(path)
    return args


def sandbox_uid(uid_slot: int | None) -> int | None:
    """The uid a root-mode sandbox runs as (setpriv), or None when not root (the user namespace keeps ours)."""
    return UID_BASE + (uid_slot or 0) if os.geteuid() == 0 else None


def bwrap_argv(
    command: list[str],
    ro_paths: list[str],
    *,
    tmpfs_bytes: int,
    uid_slot: int | None = None,
    info_fd: int | None = None,
    rw_binds: list[tuple[str, str]] = (),
    env: dict[str, str] | None = None,
    chdir: str = "/tmp",
) -> list[str]:
    """The full argv that runs ``command`` (absolute path) isolated, with HOME the empty /tmp and cwd
    ``chdir``. ``rw_binds`` (host dir, sandbox path) are the only writable host paths, mounted over the
    read-only ones (so the sandbox path must exist on the host); ``env`` adds to the sandbox's environment."""
    bwrap = require_bwrap()
    root = os.geteuid() == 0
    args = [
        bwrap,
        "--unshare-pid",
        "--unshare-ipc",
        "--unshare-net",
        "--unshare-uts",
        "--unshare-cgroup-try",
        "--die-with-parent",
        "--new-session",
        "--clearenv",
    ]
    if not root:
        args += (
            ["--unshare-user", "--disable-userns"] if "--disable-userns" in _bwrap_help(bwrap) else ["--unshare-user"]
        )
    for key, value in {**SANDBOX_ENV, **(env or {})}.items():
        args += ["--setenv", key, value]
    # Root keeps only what setpriv needs to switch uid; setpriv then drops those too.
    args += ["--cap-drop", "ALL"] + (
        ["--cap-add", "CAP_SETUID", "--cap-add", "CAP_SETGID", "--cap-add", "CAP_SETPCAP"] if root else []
    )
    args += _ro_binds([*SYSTEM_RO_PATHS, *ro_paths])
    if "--size" in _bwrap_help(bwrap):  # bwrap >= 0.5; older: RLIMIT_FSIZE and the file count bound /tmp
        args += ["--size", str(tmpfs_bytes)]
    args += ["--perms", "1777", "--tmpfs", "/tmp", "--proc", "/proc", "--dev", "/dev"]
    for host, inside in rw_binds:
        args += ["--bind", host, inside]
    args += ["--chdir", chdir]
    if info_fd is not None:
        args += ["--info-fd", str(info_fd)]
    if root:
        uid = str(sandbox_uid(uid_slot))
        args += [
            shutil.which("setpriv"),
            f"--reuid={uid}",
            f"--regid={uid}",
            "--clear-groups",
            "--inh-caps=-all",
            "--bounding-set=-all",
            "--",
        ]
    return args + list(command)


def popen_env() -> dict[str, str]:
    """bwrap's own environment: bwrap stays pid 1 of the sandbox, and /proc/1/environ must not show the trainer's."""
    return {"PATH": "/usr/bin:/bin"}

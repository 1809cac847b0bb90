"""Atomic checkpoints: everything a run needs to resume bit-exactly, or to be continued.

Layout of RUN_DIR/checkpoints/iter_000010/: model/ (HF save_pretrained, or the LoRA adapter),
tokenizer files in model/, trainer.pt (optimizer, scaler, controller, RNG states, overlap's pending
batch), state.json
(iteration, run metadata, and the size of every file: the manifest). A checkpoint is written to
a temporary directory, fsynced and renamed into place; RUN_DIR/checkpoints/latest is replaced
atomically afterwards, so a kill (or a full disk) at any moment leaves the previous checkpoint
intact. `intact_checkpoints` checks each one against its manifest before a resume trusts it.

trainer.pt holds plain data only (tensors, numbers, strings, and lists/tuples/dicts of them: `plain`) and
is read with `torch.load(weights_only=True)`: a checkpoint is a file someone may hand you, and unpickling
any other object can run code. A trainer.pt that needs the full unpickler (written before this rule, or
tampered with) is refused with a CheckpointError unless the caller trusts it (`--trust-checkpoint`).
"""

from __future__ import annotations

import errno
import json
import logging
import os
import pickle
import random
import re
import shutil
import struct
import zipfile
from pathlib import Path

import numpy as np
import torch

from eprl.errors import EprlError

log = logging.getLogger("eprl.training.checkpoint")

CHECKPOINT_NAME = re.compile(r"iter_(\d{6})$")


class CheckpointError(EprlError, RuntimeError):
    """A checkpoint cannot be written or no intact one can be read; the message says what to do."""


def atomic_write_text(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    with open(tmp, "w") as fh:
        fh.write(text)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)


SAFE_SCALARS = (str, bytes, bool, int, float, type(None))


def plain(obj, where: str = "trainer state", lossy: bool = False):
    """`obj` as data `torch.load(weights_only=True)` reads back: numpy arrays become tensors, numpy scalars
    Python numbers. Anything else raises TypeError naming where it sits, or with `lossy` becomes its repr
    (for env-provided `info`, which the learner never computes with)."""
    if isinstance(obj, (torch.Tensor, *SAFE_SCALARS)):
        return obj
    if isinstance(obj, np.ndarray):
        return torch.from_numpy(obj.copy())
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, list | tuple):
        items = [plain(v, f"{where}[{i}]", lossy) for i, v in enumerate(obj)]
        return items if isinstance(obj, list) else tuple(items)
    if isinstance(obj, dict):
        out = {}
        for key, value in obj.items():
            if not isinstance(key, SAFE_SCALARS):
                key = _not_plain(key, f"{where}: key", lossy)
            out[key] = plain(value, f"{where}[{key!r}]", lossy)
        return out
    return _not_plain(obj, where, lossy)


def _not_plain(obj, where: str, lossy: bool) -> str:
    if lossy:
        return repr(obj)
    raise TypeError(f"{where}: {type(obj).__qualname__} is not plain data (tensors, numbers, strings, containers)")


def rng_state() -> dict:
    """Every generator a run draws from, as tensors and numbers (numpy's MT19937 key as an int64 tensor)."""
    np_state = np.random.get_state(legacy=False)
    numpy = {
        **np_state,
        "state": {**np_state["state"], "key": torch.from_numpy(np_state["state"]["key"].astype(np.int64))},
    }
    state = {"torch": torch.get_rng_state(), "python": random.getstate(), "numpy": numpy}
    if torch.cuda.is_available():  # sampling on a GPU draws from the CUDA generators
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    random.setstate(state["python"])
    numpy = state["numpy"]
    if isinstance(numpy, dict):  # the plain form; a trusted older checkpoint holds numpy's legacy tuple
        key = numpy["state"]["key"].numpy().astype(np.uint32)
        numpy = {**numpy, "state": {**numpy["state"], "key": key}}
    np.random.set_state(numpy)
    if "cuda" in state and torch.cuda.is_available() and len(state["cuda"]) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all(state["cuda"])


def _files(root: Path) -> dict[str, int]:
    return {str(p.relative_to(root)): p.stat().st_size for p in sorted(root.rglob("*")) if p.is_file()}


def _fsync_tree(root: Path) -> None:
    """Data reaches the disk before the rename that publishes it (a crash must not leave a named, empty file)."""
    for path in [*sorted(root.rglob("*")), root]:
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def save_checkpoint(run_dir: Path, iteration: int, model, tokenizer, trainer_state: dict, meta: dict) -> Path:
    root = Path(run_dir) / "checkpoints"
    root.mkdir(parents=True, exist_ok=True)
    final = root / f"iter_{iteration:06d}"
    tmp = root / f".iter_{iteration:06d}.tmp{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        model.save_pretrained(tmp / "model")
        tokenizer.save_pretrained(tmp / "model")
        torch.save(plain({**trainer_state, "rng": rng_state()}), tmp / "trainer.pt")
        state = {"iteration": iteration, **meta, "files": _files(tmp)}
        (tmp / "state.json").write_text(json.dumps(state, indent=2, default=str))
        _fsync_tree(tmp)
    except (OSError, RuntimeError) as err:  # ENOSPC surfaces as OSError, or as a RuntimeError from torch's zip writer
        full = getattr(err, "errno", None) == errno.ENOSPC or shutil.disk_usage(root).free < 2**20
        reason = "no space left on device" if full else (str(err).splitlines() or [type(err).__name__])[0]
        shutil.rmtree(tmp, ignore_errors=True)  # give the space back; earlier checkpoints were never touched
        previous = latest_checkpoint(run_dir)
        raise CheckpointError(
            f"writing checkpoint {final} failed ({reason}); "
            f"the previous checkpoint {previous.name if previous else '(none)'} is intact: free disk space "
            f"and run `eprl train --resume {run_dir}`"
        ) from None
    if final.exists():  # rewriting an iteration after a fallback resume: move the old one aside, never delete first
        stale = root / f".{final.name}.old{os.getpid()}"
        os.replace(final, stale)
        os.replace(tmp, final)
        shutil.rmtree(stale, ignore_errors=True)
    else:
        os.replace(tmp, final)
    atomic_write_text(root / "latest", final.name)
    return final


def latest_checkpoint(run_dir: Path) -> Path | None:
    pointer = Path(run_dir) / "checkpoints" / "latest"
    if not pointer.is_file():
        return None
    path = pointer.parent / pointer.read_text().strip()
    return path if (path / "state.json").is_file() else None


def checkpoint_problem(ckpt: Path) -> str | None:
    """Why `ckpt` cannot be resumed from (missing or truncated file), or None if it is intact.

    Cheap: file sizes against the manifest in state.json, the safetensors headers against their
    file sizes, and trainer.pt's zip directory (which sits at its end, so truncation loses it).
    """
    try:
        state = json.loads((ckpt / "state.json").read_text())
        int(state["iteration"])
    except FileNotFoundError:
        return "no state.json"
    except (OSError, ValueError, KeyError, TypeError) as err:
        return f"unreadable state.json ({type(err).__name__})"
    for name, size in state.get("files", {}).items():  # checkpoints written before the manifest have none
        path = ckpt / name
        if not path.is_file():
            return f"{name} is missing"
        if path.stat().st_size != size:
            return f"{name} is truncated ({path.stat().st_size} of {size} bytes)"
    if not (ckpt / "trainer.pt").is_file():
        return "trainer.pt is missing"
    try:
        with zipfile.ZipFile(ckpt / "trainer.pt"):
            pass
    except (OSError, zipfile.BadZipFile):
        return "trainer.pt is truncated or corrupt"
    weights = sorted((ckpt / "model").glob("*.safetensors"))
    if not weights:
        return "model/ holds no *.safetensors weights"
    for path in weights:
        problem = _safetensors_problem(path)
        if problem:
            return f"model/{path.name} {problem}"
    return None


def _safetensors_problem(path: Path) -> str | None:
    size = path.stat().st_size
    try:
        with open(path, "rb") as fh:
            (header_len,) = struct.unpack("<Q", fh.read(8))
            if header_len > size - 8:
                return "is truncated (header cut)"
            header = json.loads(fh.read(header_len))
    except (OSError, struct.error, ValueError):
        return "has an unreadable header"
    end = max((t["data_offsets"][1] for k, t in header.items() if k != "__metadata__"), default=0)
    if 8 + header_len + end != size:
        return f"is truncated ({size} of {8 + header_len + end} bytes)"
    return None


def list_checkpoints(run_dir: Path) -> list[Path]:
    """Checkpoint directories of a run, newest first (by iteration, not by the `latest` pointer)."""
    root = Path(run_dir) / "checkpoints"
    found = [p for p in root.iterdir() if p.is_dir() and CHECKPOINT_NAME.match(p.name)] if root.is_dir() else []
    return sorted(found, key=lambda p: p.name, reverse=True)


def clean_partial_writes(run_dir: Path) -> list[str]:
    """Remove what a killed write left behind (.iter_*.tmp*, .iter_*.old*, .latest.tmp*); returns the names."""
    root = Path(run_dir) / "checkpoints"
    removed = []
    for path in sorted(root.glob(".*")) if root.is_dir() else []:
        if re.match(r"\.(iter_\d{6}\.(tmp|old)|latest\.tmp)\d+$", path.name):
            shutil.rmtree(path) if path.is_dir() else path.unlink()
            removed.append(path.name)
    return removed


def resolve_checkpoint(path: str | Path) -> Path:
    """Accept a checkpoint directory (checked intact) or a run directory (its newest intact checkpoint)."""
    path = Path(path)
    if (path / "state.json").is_file():
        problem = checkpoint_problem(path)
        if problem:
            raise CheckpointError(f"checkpoint {path} is damaged ({problem}); give an earlier one from {path.parent}")
        return path
    found = list_checkpoints(path)
    if not found:
        raise FileNotFoundError(
            f"no checkpoint at {path}: expected a checkpoint directory (with state.json) "
            f"or a run directory containing checkpoints/iter_*"
        )
    problems = []
    for ckpt in found:
        problem = checkpoint_problem(ckpt)
        if problem is None:
            return ckpt
        problems.append(f"{ckpt.name}: {problem}")
    raise CheckpointError(f"no intact checkpoint in {path} ({'; '.join(problems)})")


def load_trainer_state(ckpt: Path, trust: bool = False) -> tuple[dict, dict]:
    """state.json and trainer.pt, the latter as plain data only unless `trust` (the full unpickler runs code)."""
    state = json.loads((ckpt / "state.json").read_text())
    path = ckpt / "trainer.pt"
    try:  # map_location: GPU-saved runs load anywhere
        trainer = torch.load(path, map_location="cpu", weights_only=not trust)
    except pickle.UnpicklingError as err:
        global_name = re.search(r"Unsupported global: (GLOBAL \S+)", str(err))
        found = global_name.group(1) if global_name else str(err).strip().splitlines()[-1][:120]
        raise CheckpointError(
            f"{path} holds pickled Python objects, not only tensors and numbers ({found}): it was written by an "
            "eprl from before plain-data checkpoints, or it was tampered with, and unpickling it could run code, "
            "so it was not loaded. If you wrote this checkpoint yourself, pass --trust-checkpoint (the next "
            "checkpoint of the run is written in the plain form)"
        ) from None
    return state, trainer


def resumable_checkpoint(run_dir: Path) -> Path | None:
    """The newest intact checkpoint of a run, or None if the run never wrote one.

    Removes partial writes of a killed run; newer checkpoints that fail `checkpoint_problem` are
    moved aside to `iter_N.corrupt` (kept, never deleted) and the `latest` pointer is set to the one
    chosen. Raises CheckpointError, changing nothing, when checkpoints were written but none is intact.
    """
    root = run_dir / "checkpoints"
    skipped, chosen = [], None
    for ckpt in list_checkpoints(run_dir):
        problem = checkpoint_problem(ckpt)
        if problem is None:
            chosen = ckpt
            break
        skipped.append((ckpt, problem))
    written_before = (root / "latest").is_file() or any(root.glob("iter_*.corrupt*"))
    if chosen is None and (skipped or written_before):
        found = "; ".join(f"{c.name}: {p}" for c, p in skipped) or "checkpoints/latest names a missing directory"
        raise CheckpointError(
            f"--resume {run_dir}: no intact checkpoint ({found}); nothing was changed: restore a "
            "checkpoint directory or start a new run with another run.name"
        )
    for name in clean_partial_writes(run_dir):
        log.info(f"removed {name}: the partial write of a killed run")
    for ckpt, problem in skipped:
        aside, n = ckpt.with_name(f"{ckpt.name}.corrupt"), 1
        while aside.exists():
            n += 1
            aside = ckpt.with_name(f"{ckpt.name}.corrupt{n}")
        os.replace(ckpt, aside)
        log.info(f"skipping {ckpt.name} ({problem}): kept as {aside.name}")
    pointer = root / "latest"
    if chosen is not None and (not pointer.is_file() or pointer.read_text().strip() != chosen.name):
        atomic_write_text(pointer, chosen.name)  # continue/eval of this run dir see the checkpoint resumed from
    return chosen

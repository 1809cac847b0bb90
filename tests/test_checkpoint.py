"""Checkpoint integrity: truncated or missing files are detected, partial writes cleaned, and a disk
that fills up during a write leaves the previous checkpoint intact and loadable."""

from __future__ import annotations

import errno
import json
import os
import subprocess
import uuid
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from eprl.training.checkpoint import (
    CheckpointError,
    checkpoint_problem,
    clean_partial_writes,
    latest_checkpoint,
    list_checkpoints,
    load_trainer_state,
    save_checkpoint,
)


def _state(model) -> dict:
    # an optimizer state shaped like the learner's: two float32 moments per parameter
    return {
        "learner": {"optimizer": {n: [torch.randn_like(p), torch.randn_like(p)] for n, p in model.named_parameters()}}
    }


def _save(run_dir, it, model, tok):
    return save_checkpoint(run_dir, it, model, tok, _state(model), {"meta": {"model": "x"}})


def _truncate(path: Path, keep: float = 0.5) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: int(len(data) * keep)])


def test_intact_checkpoint_has_a_manifest_and_passes(tmp_path, tiny_model, tiny_tokenizer):
    ckpt = _save(tmp_path, 2, tiny_model, tiny_tokenizer)
    files = json.loads((ckpt / "state.json").read_text())["files"]
    assert {"trainer.pt", "model/model.safetensors", "model/config.json"} <= files.keys()
    assert files["trainer.pt"] == (ckpt / "trainer.pt").stat().st_size
    assert checkpoint_problem(ckpt) is None


@pytest.mark.parametrize(
    "name, needle",
    [
        ("trainer.pt", "trainer.pt is truncated"),
        ("model/model.safetensors", "model/model.safetensors is truncated"),
        ("model/config.json", "model/config.json is truncated"),
    ],
)
def test_truncated_files_are_named(tmp_path, tiny_model, tiny_tokenizer, name, needle):
    ckpt = _save(tmp_path, 1, tiny_model, tiny_tokenizer)
    _truncate(ckpt / name)
    assert needle in checkpoint_problem(ckpt)


def test_truncation_is_found_without_a_manifest(tmp_path, tiny_model, tiny_tokenizer):
    """Checkpoints written before the manifest existed: the zip directory and safetensors header still tell."""
    ckpt = _save(tmp_path, 1, tiny_model, tiny_tokenizer)
    state = json.loads((ckpt / "state.json").read_text())
    del state["files"]
    (ckpt / "state.json").write_text(json.dumps(state))
    assert checkpoint_problem(ckpt) is None
    _truncate(ckpt / "trainer.pt", 0.9)
    assert checkpoint_problem(ckpt) == "trainer.pt is truncated or corrupt"
    (ckpt / "trainer.pt").unlink()
    assert checkpoint_problem(ckpt) == "trainer.pt is missing"
    ckpt = _save(tmp_path, 2, tiny_model, tiny_tokenizer)
    (ckpt / "state.json").write_text(json.dumps(state))
    _truncate(ckpt / "model" / "model.safetensors", 0.99)
    assert checkpoint_problem(ckpt).startswith("model/model.safetensors is truncated")
    (ckpt / "state.json").write_text('{"iteration": ')
    assert checkpoint_problem(ckpt) == "unreadable state.json (JSONDecodeError)"


def test_partial_writes_are_cleaned_and_listing_ignores_them(tmp_path, tiny_model, tiny_tokenizer):
    _save(tmp_path, 1, tiny_model, tiny_tokenizer)
    root = tmp_path / "checkpoints"
    (root / ".iter_000002.tmp4242" / "model").mkdir(parents=True)
    (root / ".latest.tmp4242").write_text("iter_000002")
    (root / "iter_000003.corrupt").mkdir()
    assert [p.name for p in list_checkpoints(tmp_path)] == ["iter_000001"]
    assert clean_partial_writes(tmp_path) == [".iter_000002.tmp4242", ".latest.tmp4242"]
    assert sorted(p.name for p in root.iterdir()) == ["iter_000001", "iter_000003.corrupt", "latest"]


def test_rewriting_an_iteration_replaces_it(tmp_path, tiny_model, tiny_tokenizer):
    first = _save(tmp_path, 1, tiny_model, tiny_tokenizer)
    with torch.no_grad():
        next(tiny_model.parameters()).add_(1.0)
    again = _save(tmp_path, 1, tiny_model, tiny_tokenizer)
    assert again == first and checkpoint_problem(again) is None
    name, param = next(tiny_model.named_parameters())
    assert torch.equal(load_file(str(again / "model" / "model.safetensors"))[name], param.detach())
    assert sorted(p.name for p in (tmp_path / "checkpoints").iterdir()) == ["iter_000001", "latest"]


def _assert_previous_intact(run_dir: Path, model) -> None:
    prev = latest_checkpoint(run_dir)
    assert prev is not None and prev.name == "iter_000001"
    assert checkpoint_problem(prev) is None
    _, trainer = load_trainer_state(prev)
    assert trainer["learner"]["optimizer"].keys() == dict(model.named_parameters()).keys()
    assert [p.name for p in (run_dir / "checkpoints").iterdir() if p.name.startswith(".")] == []  # tmp removed


def test_disk_full_in_process_keeps_previous_checkpoint(tmp_path, tiny_model, tiny_tokenizer, monkeypatch):
    _save(tmp_path, 1, tiny_model, tiny_tokenizer)
    real_save = torch.save

    def full_disk(obj, path, *a, **kw):
        real_save(obj, path, *a, **kw)
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(torch, "save", full_disk)
    with pytest.raises(
        CheckpointError,
        match=r"iter_000002 failed \(no space left on device\); "
        r"the previous checkpoint iter_000001 is intact",
    ):
        _save(tmp_path, 2, tiny_model, tiny_tokenizer)
    _assert_previous_intact(tmp_path, tiny_model)


def test_disk_full_on_a_small_tmpfs_keeps_previous_checkpoint(tmp_path, tiny_model, tiny_tokenizer):
    """A real full disk: a tmpfs that holds one checkpoint and a half."""
    probe = _save(tmp_path / "probe", 1, tiny_model, tiny_tokenizer)
    size = sum(p.stat().st_size for p in probe.rglob("*") if p.is_file())
    mnt = tmp_path / f"tmpfs-{uuid.uuid4().hex[:6]}"
    mnt.mkdir()
    mounted = (
        subprocess.run(
            ["mount", "-t", "tmpfs", "-o", f"size={int(size * 1.5)}", "tmpfs", str(mnt)], capture_output=True
        ).returncode
        == 0
    )
    if not mounted:
        pytest.skip("cannot mount a tmpfs here (needs root); the in-process ENOSPC test covers the logic")
    try:
        run_dir = mnt / "run"
        _save(run_dir, 1, tiny_model, tiny_tokenizer)
        with pytest.raises(
            CheckpointError,
            match=r"iter_000002 failed \(no space left on device\); the previous checkpoint iter_000001 is intact",
        ):
            _save(run_dir, 2, tiny_model, tiny_tokenizer)
        _assert_previous_intact(run_dir, tiny_model)
        assert not (run_dir / "checkpoints" / "iter_000002").exists()
        assert (run_dir / "checkpoints" / "latest").read_text() == "iter_000001"
    finally:
        # lazy: the failed torch writer may still hold a file open until it is collected
        subprocess.run(["umount", "-l", str(mnt)], check=False)
    assert os.listdir(mnt) == []


def test_resolve_checkpoint_skips_or_names_damage(tmp_path, tiny_model, tiny_tokenizer):
    from eprl.training.checkpoint import resolve_checkpoint

    first, second = _save(tmp_path, 1, tiny_model, tiny_tokenizer), _save(tmp_path, 2, tiny_model, tiny_tokenizer)
    assert resolve_checkpoint(tmp_path) == second
    _truncate(second / "trainer.pt")
    assert resolve_checkpoint(tmp_path) == first  # a run directory: its newest intact checkpoint
    with pytest.raises(CheckpointError, match=r"^checkpoint .*iter_000002 is damaged \(trainer.pt is truncated"):
        resolve_checkpoint(second)
    _truncate(first / "model" / "model.safetensors")
    with pytest.raises(
        CheckpointError,
        match=r"no intact checkpoint in .*\(iter_000002: trainer.pt is truncated .*; "
        r"iter_000001: model/model.safetensors is truncated",
    ):
        resolve_checkpoint(tmp_path)
    with pytest.raises(FileNotFoundError, match="no checkpoint at"):
        resolve_checkpoint(tmp_path / "elsewhere")

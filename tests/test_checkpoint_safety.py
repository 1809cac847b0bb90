"""trainer.pt is plain data read with `torch.load(weights_only=True)`: a checkpoint someone hands you cannot
run code on `--resume` or `continue` unless you say you trust it (`--trust-checkpoint`)."""

from __future__ import annotations

import random
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from cli_runs import REPO, write_trainer_pt

from eprl.training.checkpoint import (
    CheckpointError,
    load_trainer_state,
    plain,
    resolve_checkpoint,
    rng_state,
    save_checkpoint,
    set_rng_state,
)


class _Touch:
    """A pickle payload: unpickling it calls Path.touch(marker), i.e. runs code of the file's choosing."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (self.marker,))


def _tampered_checkpoint(tmp_path, tiny_model, tiny_tokenizer, marker: Path) -> Path:
    ckpt = save_checkpoint(tmp_path / "run", 1, tiny_model, tiny_tokenizer, {"learner": {}}, {"meta": {}})
    state = load_trainer_state(ckpt)[1]
    state["learner"]["controller"] = {"target_entropy": _Touch(marker)}
    write_trainer_pt(ckpt, state)  # an attacker rewrites the manifest too
    assert resolve_checkpoint(ckpt) == ckpt  # intact by every size check: only the loader stands in the way
    return ckpt


def test_a_pickle_payload_is_refused_and_runs_nothing(tmp_path, tiny_model, tiny_tokenizer):
    marker = tmp_path / "pwned"
    ckpt = _tampered_checkpoint(tmp_path, tiny_model, tiny_tokenizer, marker)
    with pytest.raises(CheckpointError, match=r"pickled Python objects.*--trust-checkpoint") as err:
        load_trainer_state(ckpt)
    assert "(GLOBAL getattr)" in str(err.value)  # names what it found: the payload reaches Path.touch via getattr
    assert not marker.exists()
    load_trainer_state(ckpt, trust=True)  # the escape hatch really is the full unpickler
    assert marker.exists()


def test_continue_from_a_tampered_checkpoint_exits_2_in_one_line(tmp_path, tiny_model, tiny_tokenizer):
    marker = tmp_path / "pwned"
    ckpt = _tampered_checkpoint(tmp_path, tiny_model, tiny_tokenizer, marker)
    cmd = [sys.executable, "-m", "eprl.training", "continue", str(ckpt), "--task", str(REPO / "tasks" / "default.yaml")]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("eprl: error:") and "--trust-checkpoint" in lines[0]
    assert not marker.exists()


def test_trust_checkpoint_on_a_new_run_is_refused():
    cmd = [sys.executable, "-m", "eprl.training", "train", "--trust-checkpoint"]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2 and "--trust-checkpoint goes with --resume" in proc.stderr


def test_plain_converts_numpy_and_names_anything_else():
    out = plain({"a": np.arange(3, dtype=np.int32), "b": np.float32(0.5), "c": (1, [2.0, None]), 3: "x"})
    assert torch.equal(out["a"], torch.tensor([0, 1, 2], dtype=torch.int32))
    assert out["b"] == 0.5 and type(out["b"]) is float and out["c"] == (1, [2.0, None]) and out[3] == "x"
    with pytest.raises(TypeError, match=r"state\['info'\]\[0\]: object is not plain data"):
        plain({"info": [object()]}, "state")
    assert plain({"k": {1, 2}}, lossy=True) == {"k": "{1, 2}"}  # env info: kept as text, never as a pickle


def test_rng_states_round_trip_through_a_weights_only_load(tmp_path, tiny_model, tiny_tokenizer):
    torch.manual_seed(3), random.seed(3), np.random.seed(3)
    np.random.standard_normal()  # a cached gaussian is part of numpy's state
    ckpt = save_checkpoint(tmp_path, 1, tiny_model, tiny_tokenizer, {"learner": {}}, {"meta": {}})
    after = (torch.rand(4), random.random(), np.random.standard_normal(3))
    rng = load_trainer_state(ckpt)[1]["rng"]
    assert isinstance(rng["numpy"]["state"]["key"], torch.Tensor)
    torch.manual_seed(0), random.seed(0), np.random.seed(0)
    set_rng_state(rng)
    again = (torch.rand(4), random.random(), np.random.standard_normal(3))
    assert torch.equal(after[0], again[0]) and after[1] == again[1] and np.array_equal(after[2], again[2])
    legacy = {**rng_state(), "numpy": np.random.get_state()}  # a trusted older checkpoint's tuple form
    draw = np.random.random()
    set_rng_state(legacy)
    assert np.random.random() == draw

"""Run by tests/test_distributed.py under `torchrun --nproc_per_node 2`: Learner steps with FSDP2.

argv[1]: a directory holding jobs.json (a list of jobs), the batches (*.pt) and models. Per job:
load the model from `init`, build a Learner (which shards it), optionally load a checkpoint's
learner state, record the gathered full state, take one step on `batch`, record it again and
optionally write a checkpoint as the trainer does (rank 0 only). Rank 0 saves results.pt.
"""

from __future__ import annotations

import copy
import json
import sys
from pathlib import Path

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from eprl.training import distributed
from eprl.training.checkpoint import load_trainer_state, save_checkpoint
from eprl.training.config import LearnerConfig
from eprl.training.learner import Learner


def full_state(learner: Learner) -> dict:
    params = distributed.full_model_state(learner.model)
    optim = learner.state_dict()["optimizer"]
    return copy.deepcopy({"params": params, "optimizer": optim})  # a snapshot: some tensors are the live ones


def run_job(job: dict, root: Path) -> dict:
    dtype = torch.float64 if job.get("double") else torch.float32
    model = AutoModelForCausalLM.from_pretrained(job["init"], dtype=dtype)
    plain = copy.deepcopy(model) if distributed.is_main() else None  # rank 0's unsharded copy, as in the trainer
    learner = Learner(
        model, LearnerConfig(**job["cfg"]), temperature=1.0, max_len_norm=32, dtype=job.get("dtype", "fp32")
    )
    out: dict = {"world_size": distributed.world_size()}
    if job.get("load"):
        _, trainer_state = load_trainer_state(Path(job["load"]))
        learner.load_state_dict(trainer_state["learner"])
        out["loaded"] = full_state(learner)
    torch.manual_seed(0)  # the minibatch order, as the single-process learner the test compares with
    out["metrics"] = learner.step(torch.load(root / job["batch"], weights_only=False))
    out["after"] = full_state(learner)
    out["scaler"] = learner.scaler.state_dict()
    if job.get("save"):
        state = {"learner": learner.state_dict()}
        distributed.copy_full_weights(model, plain)
        if distributed.is_main():
            save_checkpoint(Path(job["save"]), 1, plain, AutoTokenizer.from_pretrained(job["init"]), state, {})
        distributed.barrier()
    return out


def main() -> None:
    torch.set_num_threads(1)
    root = Path(sys.argv[1])
    distributed.init_distributed("cpu")  # these tests compare with a single CPU process, also on GPU hosts
    try:
        results = {job["name"]: run_job(job, root) for job in json.loads((root / "jobs.json").read_text())}
        if distributed.is_main():
            torch.save(results, root / "results.pt")
    finally:
        distributed.close_distributed()


if __name__ == "__main__":
    main()

"""run.overlap (training/overlap.py): the next batch is sampled in a second process from the weights before
the current update. Staleness is exactly one update, the ratio is taken against the sampler's log-probs,
and a run resumed from a checkpoint ends bit-identical to the uninterrupted overlapped run."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from cli_runs import SMALL, kill_at_checkpoint, write_trainer_pt
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM

from eprl.training import distributed
from eprl.training.batch import collate
from eprl.training.checkpoint import CheckpointError, load_trainer_state
from eprl.training.config import ConfigError, load_run_config
from eprl.training.logprobs import model_logprobs
from eprl.training.loop import resume, train
from eprl.training.overlap import pending_from_state
from eprl.training.preflight import preflight

REPO = Path(__file__).resolve().parent.parent
TASK = str(REPO / "tasks" / "default.yaml")


def test_overlap_takes_the_ratio_against_the_sampler_or_refuses():
    assert load_run_config(TASK).run.overlap is False  # off by default
    cfg = load_run_config(TASK, overrides=["run.overlap=true"])
    assert cfg.learner.old_logprobs == "inference" and cfg.learner.tis_cap is None  # derived
    decoupled = load_run_config(TASK, overrides=["run.overlap=true", "learner.tis_cap=2"])
    assert (
        decoupled.learner.old_logprobs == "recompute"
    )  # decoupled PPO: clip at the current policy, TIS to the sampler
    for sets, words in (
        (["learner.old_logprobs=recompute"], "recompute and no tis_cap"),
        (["learner.loss=pg"], "loss=pg"),
        (["engine.type=vllm"], "engine.type=vllm"),
    ):
        with pytest.raises(ConfigError, match=words):
            load_run_config(TASK, overrides=["run.overlap=true", *sets])


def test_overlap_is_refused_under_torchrun(monkeypatch):
    cfg = load_run_config(TASK, overrides=["run.overlap=true"])
    monkeypatch.setattr(
        distributed, "active", lambda: True
    )  # the check reads it; a real torchrun is in test_distributed
    with pytest.raises(ConfigError, match="run.overlap under torchrun"):
        preflight(cfg)


def test_lora_sends_only_the_adapter_and_the_sampler_samples_from_it(eprl_cache):
    from eprl.training.builders import build_policy
    from eprl.training.overlap import OverlappedSampler
    from eprl.training.policy import resolve_model_path

    cfg = load_run_config(
        TASK,
        overrides=[*SMALL, f"model.cache_dir={eprl_cache}", "run.device=cpu", "run.overlap=true", "model.lora=true"],
    )
    path = resolve_model_path(cfg)
    model, tokenizer, rollout_model = build_policy(cfg, path)
    sampler = OverlappedSampler(cfg, path, rollout_model)
    try:
        assert sampler.shared and all("lora_" in name for name in sampler.shared)
        sent = sum(t.numel() for t in sampler.shared.values())
        assert sent < 0.5 * sum(p.numel() for p in model.parameters())
        with torch.no_grad():  # a policy the sampler can only know from the shared adapter
            for name, p in model.named_parameters():
                if "lora_B" in name:
                    p.normal_(0, 0.5, generator=torch.Generator().manual_seed(1))
        sampler.request(0, lag=0)
        got = sampler.receive()
        assert got["iteration"] == 0 and len(got["trajectories"]) == 6  # 3 tasks x 2 samples
        batch = collate(got["trajectories"], tokenizer.pad_token_id)
        with torch.no_grad():
            logp, _ = model_logprobs(model.eval(), batch.input_ids, batch.attention_mask, with_entropy=False)
        mask = batch.action_mask > 0
        assert float((logp - batch.inference_logp)[mask].abs().max()) < 1e-4  # sampled from the learner's adapter
    finally:
        sampler.close()
    assert not sampler.process.is_alive()


def _cfg(cache: Path, out: Path, name: str):
    sets = [
        *SMALL,
        f"model.cache_dir={cache}",
        "run.device=cpu",
        "learner.entropy_coef=0.01",
        "run.overlap=true",
        "run.iterations=3",
        "run.checkpoint_every=1",
        f"run.out_dir={out}",
        f"run.name={name}",
    ]
    return load_run_config(TASK, overrides=sets)


@pytest.fixture(scope="module")
def overlapped(tmp_path_factory, eprl_cache) -> Path:
    """An uninterrupted overlapped 3-iteration run, a checkpoint after every iteration."""
    out = tmp_path_factory.mktemp("overlap")
    train(_cfg(eprl_cache, out, "ref"))
    return out / "ref"


def _rows(run: Path) -> list[dict]:
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    return [
        {k: v for k, v in r.items() if not k.startswith("time") and not k.endswith("_per_s") and k != "rss_peak_mb"}
        for r in rows
    ]


def _weights(run: Path, name: str) -> dict:
    return load_file(str(run / "checkpoints" / name / "model" / "model.safetensors"))


def test_staleness_is_one_update_and_logged(overlapped):
    rows = _rows(overlapped)
    assert [r["iteration"] for r in rows] == [0, 1, 2]
    assert [r["policy_lag"] for r in rows] == [0, 1, 1]
    # iteration 0 learns from the weights that sampled it (float rounding only); later ones one update behind
    assert rows[0]["mismatch_logp_abs_mean"] < 1e-4
    assert all(r["mismatch_logp_abs_mean"] > 1e-3 for r in rows[1:])
    assert all(r["ratio_mean"] != pytest.approx(1.0, abs=1e-4) for r in rows[1:])  # against the sampler: r != 1


def test_the_pending_batch_was_sampled_by_the_previous_weights(overlapped):
    # iter_000002 holds theta_2 and the batch B_2, sampled while theta_1 (iter_000001's weights) turned into theta_2
    ckpt = overlapped / "checkpoints"
    pending = pending_from_state(load_trainer_state(ckpt / "iter_000002")[1]["overlap"]["pending"])
    assert pending["iteration"] == 2 and pending["lag"] == 1
    batch = collate(pending["trajectories"], pad_token_id(ckpt / "iter_000002"))
    mask = batch.action_mask > 0
    gaps = {}
    for name in ("iter_000001", "iter_000002"):
        model = AutoModelForCausalLM.from_pretrained(ckpt / name / "model", dtype=torch.float32).eval()
        with torch.no_grad():
            logp, _ = model_logprobs(model, batch.input_ids, batch.attention_mask, with_entropy=False)
        gaps[name] = float((logp - batch.inference_logp)[mask].abs().max())
    assert gaps["iter_000001"] < 1e-4, gaps  # the sampler's log-probs are theta_1's
    assert gaps["iter_000002"] > 1e-2, gaps  # and not the learner's theta_2


def pad_token_id(ckpt: Path) -> int:
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(ckpt / "model").pad_token_id


def test_resume_from_a_checkpoint_is_bit_exact(overlapped, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(overlapped, run)
    for name in ("iter_000003", "iter_000002"):  # killed after its first checkpoint
        shutil.rmtree(run / "checkpoints" / name)
    (run / "checkpoints" / "latest").write_text("iter_000001")
    (run / "summary.json").unlink()
    resume(run)
    assert _rows(run) == _rows(overlapped)
    a, b = _weights(overlapped, "iter_000003"), _weights(run, "iter_000003")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert load_trainer_state(run / "checkpoints" / "iter_000003")[1]["overlap"]["pending"]["iteration"] == 3


def test_an_older_pickled_checkpoint_needs_trust_then_resumes_bit_exact(overlapped, tmp_path):
    # the trainer.pt an eprl from before plain-data checkpoints wrote: Trajectory objects, numpy's legacy RNG tuple
    run = tmp_path / "run"
    shutil.copytree(overlapped, run)
    for name in ("iter_000003", "iter_000002"):
        shutil.rmtree(run / "checkpoints" / name)
    (run / "checkpoints" / "latest").write_text("iter_000001")
    (run / "summary.json").unlink()
    ckpt = run / "checkpoints" / "iter_000001"
    state = load_trainer_state(ckpt)[1]
    state["overlap"]["pending"] = pending_from_state(state["overlap"]["pending"])
    numpy = state["rng"]["numpy"]
    key = numpy["state"]["key"].numpy().astype(np.uint32)
    state["rng"]["numpy"] = ("MT19937", key, numpy["state"]["pos"], numpy["has_gauss"], numpy["gauss"])
    write_trainer_pt(ckpt, state)
    with pytest.raises(CheckpointError, match="--trust-checkpoint"):
        resume(run)
    resume(run, trust_checkpoint=True)
    assert _rows(run) == _rows(overlapped)
    a, b = _weights(overlapped, "iter_000003"), _weights(run, "iter_000003")
    assert all(torch.equal(a[k], b[k]) for k in a)
    load_trainer_state(run / "checkpoints" / "iter_000003")  # the run's next checkpoints are plain again


@pytest.mark.slow
def test_sigkill_mid_run_then_resume_matches_the_uninterrupted_run(overlapped, tmp_path, eprl_cache):
    # a real kill: the learner process dies (its sampler with it), `--resume` continues from iter_000001
    import subprocess
    import time

    from cli_runs import run_ok, train_cmd

    sets = [f"{k}={v}" for k, v in (("model.cache_dir", eprl_cache), ("run.out_dir", tmp_path), ("run.name", "killed"))]
    cmd = train_cmd(
        [
            *SMALL,
            "run.device=cpu",
            "learner.entropy_coef=0.01",
            "run.overlap=true",
            "run.iterations=3",
            "run.checkpoint_every=1",
            *sets,
        ]
    )
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, start_new_session=True)
    killed = tmp_path / "killed"
    kill_at_checkpoint(proc, killed, "iter_000001")
    deadline = time.time() + 60  # the orphaned sampler notices the closed pipe and exits
    while subprocess.run(["pgrep", "-s", str(proc.pid)], capture_output=True).returncode == 0:
        assert time.time() < deadline, "the sampler process outlived the killed learner"
        time.sleep(0.2)
    run_ok([*cmd[:3], "train", "--resume", str(killed)])
    assert _rows(killed) == _rows(overlapped)
    a, b = _weights(overlapped, "iter_000003"), _weights(killed, "iter_000003")
    assert all(torch.equal(a[k], b[k]) for k in a)

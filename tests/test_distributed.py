"""The distributed learner: micro-batches (gradient accumulation by token budget) and FSDP2 over 2
gloo processes give the single-pass, single-process update; checkpoints load across world sizes;
`torchrun --nproc_per_node 2 -m eprl.training train` runs.

Exact-equality tests run the tiny model in float64. Adam's first step divides each gradient by its
own magnitude (update ~ lr * sign(g) where |g| >> eps, lr * g / eps where |g| << eps), which turns
float32 rounding in near-zero gradient entries into update differences of ~1e-4 * lr/1e-2; in
float64 the rounding is ~1e-13, so a 1e-6 tolerance checks the algebra (normalizers, REPO-D sums,
row split, reductions) and nothing else. float32 runs compare the logged loss and gradient norm.
"""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from cli_runs import torchrun_ok

from eprl.agents.trajectory import Trajectory
from eprl.training.batch import PolicyBatch, collate
from eprl.training.checkpoint import load_trainer_state, save_checkpoint
from eprl.training.config import LearnerConfig
from eprl.training.learner import Learner
from eprl.training.microbatch import plan, split_by_tokens

torch.set_num_threads(1)
REPO = Path(__file__).resolve().parent.parent
METHODS = {
    "token_mean": {},
    "seq_mean_token_mean": {"loss_agg": "seq_mean_token_mean"},
    "repo_d": {"entropy_control": {"type": "repo_d"}},
    "gspo_sum_norm_2x2": {"loss": "gspo", "loss_agg": "seq_mean_token_sum_norm", "epochs": 2, "minibatches": 2},
}


def make_batch(tokenizer, n: int = 5, seed: int = 0) -> PolicyBatch:
    """n rows of 8..19 tokens (prompt, then actions); row 2 has no action tokens; 2 groups."""
    g = torch.Generator().manual_seed(seed)
    trajs = []
    for k in range(n):
        length = int(torch.randint(8, 20, (1,), generator=g))
        ids = torch.randint(3, len(tokenizer), (length,), generator=g).tolist()
        prompt = int(torch.randint(2, length - 2, (1,), generator=g))
        mask = [0] * length if k == 2 else [0] * prompt + [1] * (length - prompt)
        trajs.append(
            Trajectory(
                ids,
                mask,
                [-1.0 * m for m in mask],
                [(prompt, length)],
                float(k % 3 == 0),
                k % 3 == 0,
                "t",
                k % 2,
                "terminated",
            )
        )
    return collate(trajs, tokenizer.pad_token_id)


def _cfg(**overrides) -> LearnerConfig:
    return LearnerConfig(**{"lr": 1e-2, **overrides})


def _step(model, batch, **overrides):
    torch.manual_seed(0)  # the minibatch order
    learner = Learner(model, _cfg(**overrides), temperature=1.0, max_len_norm=32)
    metrics = learner.step(batch)
    return learner, metrics


def _copy(model, dtype=torch.float64):
    clone = type(model)(model.config)
    clone.load_state_dict(model.state_dict())
    return clone.to(dtype)


def _max_diff(a: dict, b: dict) -> float:
    assert a.keys() == b.keys()
    return max((a[k].double() - b[k].double()).abs().max().item() for k in a)


def _optim_diff(a: dict, b: dict) -> float:
    assert a["state"].keys() == b["state"].keys()
    return max(_max_diff(a["state"][n], b["state"][n]) for n in a["state"])


# ----------------------------------------------------------------------------- micro-batches
def test_split_by_tokens_budget():
    lengths = torch.tensor([5, 3, 9, 2])
    mbs = split_by_tokens(torch.arange(4), lengths, budget=10)
    assert [m.rows.tolist() for m in mbs] == [[0, 1], [2], [3]]  # 2x5 fits; 9 alone; 2 alone (2x9 > 10)
    assert [m.width for m in mbs] == [5, 9, 2]
    assert [m.rows.tolist() for m in split_by_tokens(torch.tensor([2, 0]), lengths, budget=4)] == [
        [2],
        [0],
    ]  # too long: alone
    assert [m.rows.tolist() for m in split_by_tokens(torch.arange(4), lengths, budget=None)] == [[0, 1, 2, 3]]
    assert len(plan(torch.arange(4), lengths, 10)) == 3  # one process: no padding


@pytest.mark.parametrize("method", sorted(METHODS))
def test_micro_batches_equal_one_pass(method, tiny_model, tiny_tokenizer):
    batch = make_batch(tiny_tokenizer)
    lengths = batch.attention_mask.sum(1)
    assert len(split_by_tokens(torch.arange(len(batch)), lengths, 32)) >= 3
    overrides = METHODS[method]
    one, m_one = _step(_copy(tiny_model), batch, **overrides)
    acc, m_acc = _step(_copy(tiny_model), batch, micro_batch_tokens=32, **overrides)
    moved = _max_diff(dict(one.model.named_parameters()), dict(_copy(tiny_model).named_parameters()))
    assert moved > 1e-3
    assert _max_diff(dict(one.model.named_parameters()), dict(acc.model.named_parameters())) < 1e-6
    assert _optim_diff(one.state_dict()["optimizer"], acc.state_dict()["optimizer"]) < 1e-6
    for key in ("loss", "pg_loss", "grad_norm", "entropy", "clip_frac_high", "approx_kl", "ratio_max"):
        assert m_acc[key] == pytest.approx(m_one[key], rel=1e-6, abs=1e-9), key
    if method == "repo_d":
        assert m_acc["repo_d_c"] == pytest.approx(m_one["repo_d_c"], rel=1e-6)


def test_micro_batches_float32_metrics(tiny_model, tiny_tokenizer):
    batch = make_batch(tiny_tokenizer, n=6, seed=1)
    _, m_one = _step(_copy(tiny_model, torch.float32), batch)
    _, m_acc = _step(_copy(tiny_model, torch.float32), batch, micro_batch_tokens=40)
    for key in ("loss", "grad_norm", "entropy"):
        assert m_acc[key] == pytest.approx(m_one[key], rel=1e-5), key


def test_optimizer_state_is_keyed_by_name_and_old_checkpoints_load(tiny_model, tiny_tokenizer):
    batch = make_batch(tiny_tokenizer)
    learner, _ = _step(_copy(tiny_model, torch.float32), batch)
    state = learner.state_dict()["optimizer"]
    names = [n for n, p in learner.model.named_parameters() if p.requires_grad]
    assert list(state["state"]) == names and state["param_groups"][0]["params"] == names
    for saved in (state, learner.optimizer.state_dict()):  # by name (now), by index (checkpoints before)
        fresh = Learner(_copy(tiny_model, torch.float32), _cfg(), temperature=1.0, max_len_norm=32)
        fresh.load_state_dict({**learner.state_dict(), "optimizer": saved})
        assert _optim_diff(fresh.state_dict()["optimizer"], state) == 0.0


# ----------------------------------------------------------------------------- 2 processes
@pytest.fixture(scope="module")
def two_ranks(tmp_path_factory, tiny_tokenizer):
    """One torchrun job (2 gloo ranks) runs every distributed Learner case; the tests compare."""
    from eprl.training.tiny_default import build_model

    root = tmp_path_factory.mktemp("dist")
    model = build_model(tiny_tokenizer, seed=0).eval()
    for name, dtype in (("model64", torch.float64), ("model32", torch.float32)):
        _copy(model, dtype).save_pretrained(root / name)
        tiny_tokenizer.save_pretrained(root / name)
    batch, batch2 = make_batch(tiny_tokenizer, n=5, seed=0), make_batch(tiny_tokenizer, n=3, seed=2)
    torch.save(batch, root / "batch.pt")
    torch.save(batch2, root / "batch2.pt")
    # A world-size-1 checkpoint after one step, for the world-size-2 run to load.
    learner, _ = _step(_copy(model), batch)
    save_checkpoint(root / "ws1", 1, learner.model, tiny_tokenizer, {"learner": learner.state_dict()}, {})
    ws1 = root / "ws1" / "checkpoints" / "iter_000001"
    jobs = [
        {"name": f"{m}", "init": str(root / "model64"), "double": True, "batch": "batch.pt", "cfg": c}
        for m, c in METHODS.items()
    ]
    jobs += [
        {
            "name": "micro",
            "init": str(root / "model64"),
            "double": True,
            "batch": "batch.pt",
            "cfg": {"micro_batch_tokens": 32, "entropy_control": {"type": "repo_d"}},
        },
        {
            "name": "one_row",
            "init": str(root / "model64"),
            "double": True,
            "batch": "batch2.pt",
            "cfg": {"minibatches": 3},
        },  # 1-row minibatches: rank 1 runs a dummy micro-batch
        {
            "name": "from_ws1",
            "init": str(ws1 / "model"),
            "double": True,
            "batch": "batch2.pt",
            "cfg": {},
            "load": str(ws1),
            "save": str(root / "ws2"),
        },
        {"name": "fp32", "init": str(root / "model32"), "batch": "batch.pt", "cfg": {}},
        {"name": "bf16", "init": str(root / "model32"), "batch": "batch.pt", "cfg": {}, "dtype": "bf16"},
        {"name": "fp16", "init": str(root / "model32"), "batch": "batch.pt", "cfg": {"loss": "dapo"}, "dtype": "fp16"},
    ]
    for job in jobs:
        job["cfg"] = {"lr": 1e-2, **job["cfg"]}
    (root / "jobs.json").write_text(json.dumps(jobs))
    torchrun_ok(str(REPO / "tests" / "_dist_worker.py"), str(root))
    return {
        "root": root,
        "model": model,
        "batch": batch,
        "batch2": batch2,
        "ws1": ws1,
        "ws2": root / "ws2" / "checkpoints" / "iter_000001",
        "results": torch.load(root / "results.pt", weights_only=False),
    }


def _single(run, overrides, batch_key="batch", dtype=torch.float64, **kw):
    model = _copy(run["model"], dtype)
    torch.manual_seed(0)  # the minibatch order (the worker's rank 0 seeds the same, see _dist_worker.py)
    learner = Learner(model, _cfg(**overrides), temperature=1.0, max_len_norm=32, **kw)
    metrics = learner.step(run[batch_key])
    return learner, metrics


@pytest.mark.parametrize("name", sorted(METHODS) + ["micro", "one_row"])
def test_two_ranks_update_equals_one_process(two_ranks, name):
    """5 rows over 2 ranks (3 + 2, one row without action tokens), or 1-row minibatches (one rank idle)."""
    res = two_ranks["results"][name]
    assert res["world_size"] == 2
    overrides = {
        "micro": {"micro_batch_tokens": 32, "entropy_control": {"type": "repo_d"}},
        "one_row": {"minibatches": 3},
    }.get(name, METHODS.get(name))
    single, metrics = _single(two_ranks, overrides, "batch2" if name == "one_row" else "batch")
    params = {k: v.detach() for k, v in single.model.state_dict().items()}
    assert _max_diff(params, res["after"]["params"]) < 1e-6
    assert _optim_diff(single.state_dict()["optimizer"], res["after"]["optimizer"]) < 1e-6
    for key in ("loss", "grad_norm", "entropy", "clip_frac_high", "approx_kl"):
        assert res["metrics"][key] == pytest.approx(metrics[key], rel=1e-6, abs=1e-9), key


def test_two_ranks_mixed_precision(two_ranks):
    """fp32 masters, bf16 / fp16 compute (fp16 with ShardedGradScaler): the same update up to rounding."""
    res = two_ranks["results"]
    single, m32 = _single(two_ranks, {}, dtype=torch.float32)
    start = {k: v.float() for k, v in two_ranks["model"].state_dict().items()}
    assert res["fp32"]["metrics"]["loss"] == pytest.approx(m32["loss"], rel=1e-5)
    assert res["fp32"]["metrics"]["grad_norm"] == pytest.approx(m32["grad_norm"], rel=1e-5)
    for name in ("bf16", "fp16"):
        after = res[name]["after"]["params"]
        assert all(v.dtype == torch.float32 for v in after.values())  # master weights stay float32
        assert all(torch.isfinite(v).all() for v in after.values())
        assert _max_diff(after, start) > 1e-3  # it learned
        assert math.isfinite(res[name]["metrics"]["loss"]) and res[name]["metrics"]["grad_norm"] > 0
        assert res[name]["metrics"]["entropy"] == pytest.approx(m32["entropy"], rel=0.05)
    assert res["fp16"]["scaler"]["scale"] == 2.0**16  # enabled, no inf seen
    assert res["bf16"]["scaler"] == {}  # bf16 needs no loss scaling


def test_checkpoints_across_world_sizes(two_ranks):
    res = two_ranks["results"]["from_ws1"]
    ws1, ws2 = two_ranks["ws1"], two_ranks["ws2"]
    # world size 1 -> 2: the sharded learner holds exactly the checkpoint's parameters and optimizer state
    from safetensors.torch import load_file

    saved = load_file(str(ws1 / "model" / "model.safetensors"))
    assert _max_diff({k: saved[k] for k in saved}, {k: res["loaded"]["params"][k] for k in saved}) == 0.0
    assert _optim_diff(load_trainer_state(ws1)[1]["learner"]["optimizer"], res["loaded"]["optimizer"]) == 0.0
    # ... and its next step equals a world-size-1 learner's resumed from the same checkpoint
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(ws1 / "model", dtype=torch.float64)
    single = Learner(model, _cfg(), temperature=1.0, max_len_norm=32)
    single.load_state_dict(load_trainer_state(ws1)[1]["learner"])
    single.step(two_ranks["batch2"])
    assert _max_diff(dict(single.model.state_dict()), res["after"]["params"]) < 1e-6
    # world size 2 -> 1: the checkpoint written by rank 0 is a plain HF directory with the full state
    model = AutoModelForCausalLM.from_pretrained(ws2 / "model", dtype=torch.float64)
    back = Learner(model, _cfg(), temperature=1.0, max_len_norm=32)
    back.load_state_dict(load_trainer_state(ws2)[1]["learner"])
    assert _max_diff(dict(back.model.state_dict()), res["after"]["params"]) == 0.0
    assert _optim_diff(back.state_dict()["optimizer"], res["after"]["optimizer"]) == 0.0
    assert back.optimizer.state_dict()["state"][0]["step"] == 2  # the step counters came along


# ----------------------------------------------------------------------------- torchrun end to end
@pytest.mark.slow
def test_torchrun_train_then_resume_in_one_process(tmp_path, eprl_cache):
    sets = [
        "model.tiny_sft_steps=30",
        f"model.cache_dir={eprl_cache}",
        "task.group_size=2",
        "task.tasks_per_iteration=3",
        "task.eval.num_tasks=2",
        "task.eval_samples=1",
        "task.sampling.max_new_tokens=12",
        "task.eval_sampling.max_new_tokens=12",
        "run.threads=1",
        "run.progress=false",
        "learner.entropy_coef=0.01",
        "learner.micro_batch_tokens=64",
        "run.iterations=2",
        "run.checkpoint_every=1",
        f"run.out_dir={tmp_path}",
        "run.name=ddp",
    ]
    proc = torchrun_ok(
        "-m",
        "eprl.training",
        "train",
        "--task",
        str(REPO / "tasks" / "default.yaml"),
        *[a for s in sets for a in ("--set", s)],
    )
    assert proc.stdout.count('"run_dir"') == 1  # only rank 0 reports
    run = tmp_path / "ddp"
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["iteration"] for r in rows] == [0, 1]
    assert all(math.isfinite(r["loss"]) and r["grad_norm"] > 0 for r in rows)
    assert (run / "checkpoints" / "iter_000002" / "model" / "model.safetensors").is_file()
    assert json.loads((run / "summary.json").read_text())["iterations"] == 2
    # the world-size-2 checkpoint resumes in one process
    proc = subprocess.run(
        [sys.executable, "-m", "eprl.training", "train", "--resume", str(run), "--iterations", "3"],
        capture_output=True,
        text=True,
        timeout=600,
        cwd=REPO,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["iteration"] for r in rows] == [0, 1, 2]


# ----------------------------------------------------------------------------- backend choice (no processes)
@pytest.mark.parametrize(
    "device,gpus,ranks,expect",
    [
        ("auto", 0, 2, "gloo"),
        ("auto", 1, 2, "gloo"),  # fewer GPUs than ranks: CPU, not a crash on cuda:1
        ("auto", 2, 2, "nccl"),
        ("cuda", 4, 2, "nccl"),
        ("cpu", 2, 2, "gloo"),
        ("cuda", 1, 2, "error"),
    ],
)
def test_backend_choice(monkeypatch, device, gpus, ranks, expect):
    import torch.distributed as dist

    from eprl.training import distributed
    from eprl.training.config import ConfigError

    for key, value in {"WORLD_SIZE": ranks, "LOCAL_WORLD_SIZE": ranks, "LOCAL_RANK": 0}.items():
        monkeypatch.setenv(key, str(value))
    monkeypatch.setattr(torch.cuda, "is_available", lambda: gpus > 0)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: gpus)
    monkeypatch.setattr(torch.cuda, "set_device", lambda index: None)
    monkeypatch.setattr(dist, "is_initialized", lambda: False)
    chosen = []
    monkeypatch.setattr(dist, "init_process_group", lambda backend, timeout: chosen.append(backend))
    if expect == "error":
        with pytest.raises(ConfigError, match="needs one GPU per rank: 2 ranks on this node but 1 GPU"):
            distributed.init_distributed(device)
        return
    distributed.init_distributed(device)
    assert chosen == [expect]

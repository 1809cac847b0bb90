"""LoRA training through peft (no vLLM needed): rank/alpha/targets from the config, only the adapter
trains, checkpoints are standard peft adapters on a durable base, and `continue` / `train --resume`
work from them. Also the vllm engine's LoRA helpers that need no vLLM (rank choice, served base,
error from a server without LoRA loading)."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import httpx
import pytest
import torch
from safetensors.torch import load_file

peft = pytest.importorskip("peft")

from cli_runs import SMALL, continue_cmd, run_ok, train_cmd  # noqa: E402

REPO = Path(__file__).resolve().parent.parent
SETTINGS = SMALL + ["learner.entropy_coef=0.01"]
LORA = ["model.lora=true", "model.lora_rank=8", "model.lora_alpha=16", "model.lora_target_modules=[q_proj,v_proj]"]


def _sets(cache: Path, out: Path, name: str, *extra: str) -> list[str]:
    return SETTINGS + LORA + [f"model.cache_dir={cache}", f"run.out_dir={out}", f"run.name={name}", *extra]


def _train_cmd(cache: Path, out: Path, name: str, *extra: str) -> list[str]:
    return train_cmd(_sets(cache, out, name, *extra))


def _adapter(ckpt: Path) -> dict:
    return load_file(str(ckpt / "model" / "adapter_model.safetensors"))


def _assert_standard_adapter(model_dir: Path, base: str) -> dict:
    files = {p.name for p in model_dir.iterdir()}
    assert {"adapter_config.json", "adapter_model.safetensors", "tokenizer_config.json"} <= files
    assert not any(f.startswith("model") and f.endswith(".safetensors") for f in files), files  # no full weights
    conf = json.loads((model_dir / "adapter_config.json").read_text())
    assert conf["peft_type"] == "LORA" and conf["r"] == 8 and conf["lora_alpha"] == 16
    assert set(conf["target_modules"]) == {"q_proj", "v_proj"}
    assert (
        conf["base_model_name_or_path"] == base and Path(base).is_absolute() and (Path(base) / "config.json").is_file()
    )
    keys = set(load_file(str(model_dir / "adapter_model.safetensors")))
    assert keys and all(".lora_A." in k or ".lora_B." in k for k in keys)
    assert {k.split(".self_attn.")[1].split(".")[0] for k in keys} == {"q_proj", "v_proj"}
    return conf


# ----------------------------------------------------------------------------- in process
def test_lora_training_changes_only_the_adapter(tmp_path, eprl_cache):
    from transformers import AutoModelForCausalLM

    from eprl.training.config import load_run_config
    from eprl.training.logprobs import model_logprobs
    from eprl.training.loop import Trainer
    from eprl.training.policy import resolve_model_path

    # CPU also on GPU hosts: the logits are compared bit for bit with a CPU-loaded copy below.
    cfg = load_run_config(
        REPO / "tasks" / "default.yaml", overrides=_sets(eprl_cache, tmp_path, "lora", "run.device=cpu")
    )
    base_path = resolve_model_path(cfg)
    torch.manual_seed(0)
    (tmp_path / "lora").mkdir()
    trainer = Trainer.from_config(cfg, tmp_path / "lora", base_path, {"model": base_path, "parent": None})
    try:
        model = trainer.model
        assert isinstance(model, peft.PeftModel)
        trainable = {n for n, p in model.named_parameters() if p.requires_grad}
        assert trainable and all(".lora_A." in n or ".lora_B." in n for n in trainable)
        before = {n: p.detach().clone() for n, p in model.named_parameters()}
        trainer.train_iteration()
        trainer.train_iteration()
        after = {n: p.detach() for n, p in model.named_parameters()}
        frozen = [n for n in before if n not in trainable]
        assert frozen and all(torch.equal(before[n], after[n]) for n in frozen), "a base weight changed"
        assert any(not torch.equal(before[n], after[n]) for n in trainable if ".lora_B." in n), (
            "the adapter did not train"
        )
        ckpt = trainer.checkpoint()
    finally:
        trainer.close()
    # A standard peft adapter on the durable base (the tiny default's cache dir), loadable by peft itself.
    _assert_standard_adapter(ckpt / "model", str(Path(base_path).resolve()))
    loaded = peft.PeftModel.from_pretrained(
        AutoModelForCausalLM.from_pretrained(base_path, dtype=torch.float32), ckpt / "model"
    ).eval()
    ids = torch.randint(0, 200, (2, 16))
    with torch.no_grad():
        want, _ = model_logprobs(model.eval(), ids, with_entropy=False)
        got, _ = model_logprobs(loaded, ids, with_entropy=False)
        base_lp, _ = model_logprobs(
            AutoModelForCausalLM.from_pretrained(base_path, dtype=torch.float32).eval(), ids, with_entropy=False
        )
    assert torch.equal(got, want)
    assert (got - base_lp).abs().max() > 0  # the adapter is not a no-op


# ----------------------------------------------------------------------------- CLI: continue, resume
@pytest.mark.slow
def test_lora_continue_and_resume(tmp_path, eprl_cache):
    iters = ["run.iterations=2", "run.checkpoint_every=1"]
    run_ok(_train_cmd(eprl_cache, tmp_path, "parent", *iters))
    parent = tmp_path / "parent"
    base = json.loads((parent / "meta.json").read_text())["model"]
    for it in (1, 2):
        _assert_standard_adapter(parent / "checkpoints" / f"iter_00000{it}" / "model", base)
    a1, a2 = (_adapter(parent / "checkpoints" / f"iter_00000{it}") for it in (1, 2))
    assert any(not torch.equal(a1[k], a2[k]) for k in a1)

    # train --resume: a run stopped after 1 iteration, extended to 2, ends bit-identical to the 2-iteration run.
    run_ok(_train_cmd(eprl_cache, tmp_path, "cut", "run.iterations=1", "run.checkpoint_every=1"))
    run_ok([sys.executable, "-m", "eprl.training", "train", "--resume", str(tmp_path / "cut"), "--iterations", "2"])
    resumed = _adapter(tmp_path / "cut" / "checkpoints" / "iter_000002")
    assert resumed.keys() == a2.keys() and all(torch.equal(resumed[k], a2[k]) for k in a2)

    # continue on another suite, from another process and working directory; model.lora is not set here:
    # the checkpoint being an adapter is enough.
    # SETTINGS keeps entropy_coef: a gradient even if all groups tie.
    run_ok(continue_cmd(parent, SETTINGS, tmp_path, iterations=1), cwd=tmp_path)
    child = tmp_path / "child"
    meta = json.loads((child / "meta.json").read_text())
    assert meta["parent"] == str((parent / "checkpoints" / "iter_000002").resolve())
    assert Path(meta["model"]).resolve() == (parent / "checkpoints" / "iter_000002" / "model").resolve()
    _assert_standard_adapter(child / "checkpoints" / "iter_000001" / "model", base)  # still on the same base
    c1 = _adapter(child / "checkpoints" / "iter_000001")
    assert c1.keys() == a2.keys() and any(not torch.equal(c1[k], a2[k]) for k in a2)
    # it started from the parent's adapter: closer to it than to the untrained adapter (lora_B = 0)
    dist_parent = sum((c1[k] - a2[k]).abs().sum() for k in a2 if ".lora_B." in k)
    dist_zero = sum(c1[k].abs().sum() for k in a2 if ".lora_B." in k)
    assert dist_parent < dist_zero


# ----------------------------------------------------------------------------- vllm engine helpers (no vllm)
def test_vllm_lora_rank_choice():
    from eprl.agents.engines.vllm import vllm_max_lora_rank
    from eprl.errors import ConfigError

    assert [vllm_max_lora_rank(r) for r in (1, 2, 8, 9, 16, 17, 64, 300, 512)] == [1, 8, 8, 16, 16, 32, 64, 320, 512]
    with pytest.raises(ConfigError, match="^model.lora_rank: .* above vLLM.s largest"):
        vllm_max_lora_rank(513)


def test_served_base_is_exactly_the_base(tmp_path, tiny_tokenizer):
    from eprl.agents.engines.vllm import lora_rank, save_adapter, save_base_weights
    from eprl.training.tiny_default import build_model

    base = build_model(tiny_tokenizer, seed=0)
    want = {k: v.clone() for k, v in base.state_dict().items()}
    model = peft.get_peft_model(
        base, peft.LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "o_proj"], rank_pattern={"o_proj": 12})
    )
    assert lora_rank(model) == 12
    save_base_weights(model, tiny_tokenizer, tmp_path / "w")
    got = load_file(str(tmp_path / "w" / "model.safetensors"))
    assert set(got) == set(want) - {"lm_head.weight"}  # tied to embed_tokens, as a plain save_pretrained writes it
    assert all(torch.equal(got[k], want[k]) for k in got)
    save_adapter(model, tmp_path / "w" / "lora-v1")
    assert {"adapter_config.json", "adapter_model.safetensors"} <= {
        p.name for p in (tmp_path / "w" / "lora-v1").iterdir()
    }


def test_server_without_lora_loading_says_how_to_start_it(monkeypatch, tmp_path):
    from eprl.agents.engines import vllm_server
    from eprl.agents.engines.vllm import Adapter
    from eprl.training.config import EngineConfig

    def handler(request: httpx.Request) -> httpx.Response:
        if request.url.path == "/v1/models":
            return httpx.Response(200, json={"data": [{"id": "base"}]})
        return httpx.Response(404, json={"detail": "Not Found"})  # no VLLM_ALLOW_RUNTIME_LORA_UPDATING

    real_client = httpx.Client
    monkeypatch.setattr(
        vllm_server.httpx, "Client", lambda **kw: real_client(transport=httpx.MockTransport(handler), **kw)
    )
    cfg = EngineConfig(type="vllm", server_urls=["http://10.0.0.1:8000"])
    with pytest.raises(
        RuntimeError, match="VLLM_ALLOW_RUNTIME_LORA_UPDATING=True and `--enable-lora --max-lora-rank 8"
    ):
        vllm_server.ServerBackend(
            tmp_path, cfg, "float32", 0, max_lora_rank=8, adapter=Adapter("eprl-v1", 1, tmp_path / "lora-v1")
        )

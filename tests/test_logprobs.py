import pytest
import torch
from torch import nn

from eprl.training.logprobs import causal_lm_parts, model_logprobs, token_logprobs_and_entropy

torch.set_num_threads(1)


def _reference(hidden, head, targets, temperature):
    """Unchunked, no checkpoint: log_softmax of the full float32 logits."""
    logits = head(hidden).float() / temperature
    logp_all = torch.log_softmax(logits, -1)
    logp = logp_all.gather(-1, targets[..., None]).squeeze(-1)
    entropy = -(logp_all.exp() * logp_all).sum(-1)
    return logp, entropy


@pytest.mark.parametrize("chunk_size", [1, 5, 7, 64])
@pytest.mark.parametrize("temperature", [1.0, 0.7])
@pytest.mark.parametrize("path", ["fused", "checkpoint"])
def test_chunked_equals_unchunked_values_and_grads(chunk_size, temperature, path):
    torch.manual_seed(0)
    B, T, H, V = 2, 9, 16, 50
    linear = nn.Linear(H, V, bias=True)
    head = linear if path == "fused" else nn.Sequential(linear)  # non-Linear head: torch.utils.checkpoint path
    hidden = torch.randn(B, T, H, requires_grad=True)
    targets = torch.randint(0, V, (B, T))
    gl, ge = torch.randn(B, T), torch.randn(B, T)  # arbitrary upstream gradients for both outputs

    lp, ent = token_logprobs_and_entropy(hidden, head, targets, temperature=temperature, chunk_size=chunk_size)
    ((lp * gl).sum() + (ent * ge).sum()).backward()
    got = (hidden.grad.clone(), linear.weight.grad.clone(), linear.bias.grad.clone())
    hidden.grad = None
    head.zero_grad()
    rlp, rent = _reference(hidden, head, targets, temperature)
    ((rlp * gl).sum() + (rent * ge).sum()).backward()
    want = (hidden.grad, linear.weight.grad, linear.bias.grad)

    assert lp.dtype == ent.dtype == torch.float32 and lp.shape == (B, T)
    assert torch.allclose(lp, rlp, atol=1e-6) and torch.allclose(ent, rent, atol=1e-6)
    for g, w in zip(got, want):
        assert g.abs().sum() > 0 and torch.allclose(g, w, atol=1e-6)


@pytest.mark.parametrize("path", ["fused", "checkpoint"])
def test_chunks_are_checkpointed_so_full_logits_are_not_saved(path):
    """Autograd must save nothing of size [tokens x vocab]: at most one chunk's worth during backward."""
    B, T, H, V, chunk = 1, 64, 8, 1000, 16
    head = nn.Linear(H, V, bias=False)
    head = head if path == "fused" else nn.Sequential(head)
    hidden = torch.randn(B, T, H, requires_grad=True)
    saved = []

    def pack(t):
        saved.append(t.numel())
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        lp, ent = token_logprobs_and_entropy(hidden, head, torch.randint(0, V, (B, T)), chunk_size=chunk)
    assert saved and max(saved) < chunk * V  # only inputs (hidden chunk, weight, targets) saved, no logits
    saved.clear()
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        _reference(hidden, head, torch.randint(0, V, (B, T)), 1.0)
    assert max(saved) >= T * V  # the unchunked path does save full logits (the check can fail)


def test_without_entropy_and_no_grad():
    head = nn.Linear(8, 30)
    hidden, targets = torch.randn(2, 5, 8), torch.randint(0, 30, (2, 5))
    with torch.no_grad():
        lp, ent = token_logprobs_and_entropy(hidden, head, targets, chunk_size=3, with_entropy=False)
    assert ent is None and torch.allclose(lp, _reference(hidden, head, targets, 1.0)[0], atol=1e-6)


def _tiny_qwen3(seed=0, dtype=torch.float32):
    from transformers import Qwen3Config, Qwen3ForCausalLM

    torch.manual_seed(seed)
    cfg = Qwen3Config(
        vocab_size=1000,
        hidden_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        head_dim=16,
        intermediate_size=128,
        max_position_embeddings=128,
        tie_word_embeddings=False,
    )
    return Qwen3ForCausalLM(cfg).to(dtype).eval()


@pytest.mark.parametrize("temperature", [1.0, 0.8])
def test_model_logprobs_on_tiny_qwen3(temperature):
    model = _tiny_qwen3()
    torch.manual_seed(1)
    ids = torch.randint(0, 1000, (2, 12))
    attn = torch.ones_like(ids)
    logp, ent = model_logprobs(model, ids, attn, temperature=temperature, chunk_size=5)
    with torch.no_grad():
        logits = model(input_ids=ids, attention_mask=attn).logits.float()[:, :-1] / temperature
    logp_all = torch.log_softmax(logits, -1)
    assert logp.shape == (2, 11)
    assert torch.allclose(logp.detach(), logp_all.gather(-1, ids[:, 1:, None]).squeeze(-1), atol=1e-5)
    assert torch.allclose(ent.detach(), -(logp_all.exp() * logp_all).sum(-1), atol=1e-5)


@pytest.mark.parametrize("dtype,tol", [(torch.float32, 1e-6), (torch.float64, 1e-12)])
def test_tiny_qwen3_chunked_vs_unchunked_grads(dtype, tol):
    # float32: chunked and whole head matmuls round differently in the last bit (BLAS blocking depends
    # on the row count; d hidden differs by ~3e-8), and two layers of backward amplify that to ~1.7e-6
    # in embedding grads of size ~4. So: max |diff| <= 1e-6 * max |grad| per parameter in float32
    # (the head itself is checked at 1e-6 absolute above); float64 shows the math is identical (1e-12).
    model = _tiny_qwen3(dtype=dtype)
    torch.manual_seed(2)
    ids = torch.randint(0, 1000, (2, 10))
    weights = torch.randn(2, 9, dtype=dtype)

    def grads(chunk_size):
        model.zero_grad()
        logp, ent = model_logprobs(model, ids, torch.ones_like(ids), chunk_size=chunk_size)
        ((logp * weights).sum() + 0.1 * ent.sum()).backward()
        return {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}

    chunked, whole = grads(4), grads(10_000)
    assert (
        set(chunked) == set(whole)
        and "lm_head.weight" in chunked
        and "model.layers.0.self_attn.q_proj.weight" in chunked
    )
    for name in whole:
        assert (chunked[name] - whole[name]).abs().max() <= tol * whole[name].abs().max(), name


def test_peft_wrapped_model():
    peft = pytest.importorskip("peft")
    model = _tiny_qwen3()
    ids = torch.randint(0, 1000, (1, 8))
    want, _ = model_logprobs(model, ids, torch.ones_like(ids))
    lora = peft.get_peft_model(model, peft.LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"]))
    backbone, head = causal_lm_parts(lora)
    assert head is lora.get_base_model().lm_head and backbone is lora.get_base_model().model
    got, _ = model_logprobs(lora, ids, torch.ones_like(ids))  # LoRA B = 0 at init: same values
    assert torch.allclose(got, want, atol=1e-6)
    got.sum().backward()
    lora_grads = [p.grad for n, p in lora.named_parameters() if "lora_" in n]
    assert lora_grads and all(g is not None for g in lora_grads)


def test_fused_backward_without_entropy():
    torch.manual_seed(3)
    head = nn.Linear(8, 40)
    hidden = torch.randn(3, 4, 8, requires_grad=True)
    targets = torch.randint(0, 40, (3, 4))
    lp, ent = token_logprobs_and_entropy(hidden, head, targets, chunk_size=5, with_entropy=False)
    lp.sum().backward()
    got = hidden.grad.clone()
    hidden.grad = None
    _reference(hidden, head, targets, 1.0)[0].sum().backward()
    assert ent is None and torch.allclose(got, hidden.grad, atol=1e-6)

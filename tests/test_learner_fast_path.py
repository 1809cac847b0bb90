"""The learner computes no more than the update needs (issue #14), and its numbers do not move:
- `reuse_update_forward`: logp_old and H of the first minibatch come from its own update forward, so
  the default (1 epoch x 1 minibatch) skips the no-grad pre-pass. Bit-exact against the pre-pass
  when that pass saw the same rows at the same padded width (one minibatch, or micro-batches). With
  several minibatches and no micro-batching the pre-pass ran over the whole batch, padded wider, and
  its logp_old differed from the update's own logp in the last bit (a ratio of 1 +- 1 ulp); now the
  first minibatch's ratio is exactly 1: metrics agree to 1e-6, weights to 1e-5 (AdamW amplifies).
- `head_on_actions`: the lm_head runs only at action positions. Forward values bit-exact; the
  lm_head weight gradient is a GEMM summed over K = tokens, and leaving out the masked positions'
  (exactly zero) rows changes MKL's blocking of that sum, so grad_norm and the updated weights agree to
  rounding (grad_norm within 1 ulp, weights observed <= 2e-7 absolute after one AdamW step at lr 5e-5;
  asserted: rel 1e-6 and 1e-6). grad_norm was bit-equal too until transformers 5.25 by chance of blocking.
"""

from __future__ import annotations

import pytest
import torch

from eprl.agents.trajectory import Trajectory
from eprl.training import learner as learner_mod
from eprl.training import logprobs as logprobs_mod
from eprl.training.batch import collate
from eprl.training.config import EntropyControlConfig, LearnerConfig
from eprl.training.learner import Learner, train_forward_is_eval_forward

torch.set_num_threads(1)
TIMING = ("time_learn", "learn_tokens_per_s")
CONFIGS = {
    "default": {},
    "micro_batched": {"micro_batch_tokens": 60},
    "epochs2_minibatches2_micro": {"epochs": 2, "minibatches": 2, "micro_batch_tokens": 60},
    "repo_d_micro": {"entropy_control": EntropyControlConfig(type="repo_d"), "micro_batch_tokens": 60},
    "repo_d_one_pass": {"entropy_control": EntropyControlConfig(type="repo_d")},
    "kl_ref_entropy_bonus": {"kl_coef": 0.01, "entropy_coef": 0.001},
    "old_logprobs_inference_micro": {"old_logprobs": "inference", "minibatches": 2, "micro_batch_tokens": 60},
    "clip_cov": {"entropy_control": EntropyControlConfig(type="clip_cov")},
    "kl_cov_minibatches2_micro": {
        "entropy_control": EntropyControlConfig(type="kl_cov"),
        "minibatches": 2,
        "micro_batch_tokens": 60,
    },
}
WIDER_PRE_PASS = {  # several minibatches, one pass each: the old pre-pass was padded wider (module docstring)
    "old_logprobs_inference": {"old_logprobs": "inference", "minibatches": 2},
    "kl_cov_minibatches2": {"entropy_control": EntropyControlConfig(type="kl_cov"), "minibatches": 2},
    "epochs2_minibatches2": {"epochs": 2, "minibatches": 2},
}


def _batch(tokenizer, n=8, seed=0):
    """Multi-turn rows: prompt, answer, observation, answer (random lengths; rows padded)."""
    g = torch.Generator().manual_seed(seed)
    draw = lambda lo, hi: int(torch.randint(lo, hi, (1,), generator=g))  # noqa: E731
    trajs = []
    for i in range(n):
        p, a, o, a2 = draw(5, 20), draw(2, 10), draw(0, 6), draw(0, 6)
        ids = torch.randint(3, len(tokenizer), (p + a + o + a2,), generator=g).tolist()
        mask = [0] * p + [1] * a + [0] * o + [1] * a2
        trajs.append(
            Trajectory(
                ids, mask, [-1.0] * len(ids), [(p, p + a)], float(i % 3 == 0), i % 3 == 0, "t", i // 4, "terminated"
            )
        )
    return collate(trajs, tokenizer.pad_token_id)


def _run(model, tokenizer, cfg: LearnerConfig, reuse: bool, head: bool, steps: int = 2):
    fresh = type(model)(model.config)
    fresh.load_state_dict(model.state_dict())
    learner = Learner(fresh, cfg, temperature=1.0, max_len_norm=64)
    learner.reuse_update_forward, learner.head_on_actions = reuse, head
    torch.manual_seed(1)
    rows = [learner.step(_batch(tokenizer, seed=s)) for s in range(steps)]
    return [{k: v for k, v in r.items() if k not in TIMING} for r in rows], fresh.state_dict()


@pytest.mark.parametrize("name", sorted(CONFIGS))
def test_reusing_the_update_forward_is_bit_exact(name, tiny_model, tiny_tokenizer):
    cfg = LearnerConfig(**CONFIGS[name])
    old_rows, old_w = _run(tiny_model, tiny_tokenizer, cfg, reuse=False, head=True)
    new_rows, new_w = _run(tiny_model, tiny_tokenizer, cfg, reuse=True, head=True)
    assert new_rows == old_rows  # same keys, same floats, both iterations
    assert all(torch.equal(old_w[k], new_w[k]) for k in old_w)


@pytest.mark.parametrize("name", sorted(WIDER_PRE_PASS))
def test_reusing_the_update_forward_with_several_unbatched_minibatches_agrees_to_rounding(
    name, tiny_model, tiny_tokenizer
):
    cfg = LearnerConfig(**WIDER_PRE_PASS[name])
    old_rows, old_w = _run(tiny_model, tiny_tokenizer, cfg, reuse=False, head=True)
    new_rows, new_w = _run(tiny_model, tiny_tokenizer, cfg, reuse=True, head=True)
    for old, new in zip(old_rows, new_rows):
        assert old.keys() == new.keys()
        assert all(new[k] == pytest.approx(old[k], rel=1e-6, abs=1e-6) for k in old), name
    worst = max((old_w[k] - new_w[k]).abs().max().item() for k in old_w)
    moved = max((old_w[k] - tiny_model.state_dict()[k]).abs().max().item() for k in old_w)
    assert worst <= 1e-5 and moved > 10 * worst, (worst, moved)


@pytest.mark.parametrize("name", ["default", "micro_batched", "kl_ref_entropy_bonus", "repo_d_one_pass"])
def test_head_on_action_positions_only_matches_the_full_head(name, tiny_model, tiny_tokenizer):
    cfg = LearnerConfig(**CONFIGS[name])
    old_rows, old_w = _run(tiny_model, tiny_tokenizer, cfg, reuse=False, head=False, steps=1)
    new_rows, new_w = _run(tiny_model, tiny_tokenizer, cfg, reuse=True, head=True, steps=1)
    for old, new in zip(old_rows, new_rows, strict=True):
        assert old.keys() == new.keys()
        forward = {k: v for k, v in old.items() if k != "grad_norm"}
        assert {k: new[k] for k in forward} == forward  # loss, entropies, ratios, clip fractions: bit-exact
        assert new["grad_norm"] == pytest.approx(old["grad_norm"], rel=1e-6)  # the head's weight-gradient GEMM
    worst = max((old_w[k] - new_w[k]).abs().max().item() for k in old_w)
    assert worst <= 1e-6, worst
    moved = max((old_w[k] - tiny_model.state_dict()[k]).abs().max().item() for k in old_w)
    assert moved > 10 * worst  # the step did move the weights: the tolerance is far below the update


def test_default_runs_one_forward_and_the_head_sees_only_action_tokens(tiny_model, tiny_tokenizer, monkeypatch):
    seen = []  # (grad enabled, positions given to the head) per model_logprobs call
    real = logprobs_mod.token_logprobs_and_entropy

    def spy(hidden, *args, **kwargs):
        seen.append((torch.is_grad_enabled(), hidden.reshape(-1, hidden.shape[-1]).shape[0]))
        return real(hidden, *args, **kwargs)

    monkeypatch.setattr(logprobs_mod, "token_logprobs_and_entropy", spy)
    batch = _batch(tiny_tokenizer)
    for cfg, expected_passes in [
        (LearnerConfig(), [True]),
        (LearnerConfig(minibatches=2), [False, True, True]),
    ]:  # pre-pass over half the rows
        seen.clear()
        Learner(type(tiny_model)(tiny_model.config), cfg, temperature=1.0, max_len_norm=64).step(batch)
        assert [g for g, _ in seen] == expected_passes
        tokens = int(batch.action_mask.sum())
        assert sum(n for g, n in seen if g) == tokens  # the update: every action token once, nothing else
        assert 0 < sum(n for g, n in seen if not g) < tokens or not any(not g for g, _ in seen)  # the other rows only


def test_model_logprobs_positions_equal_the_full_head_there_and_zero_elsewhere(tiny_model, tiny_tokenizer):
    b = _batch(tiny_tokenizer)
    pos = b.action_mask > 0
    with torch.no_grad():
        lp, ent = logprobs_mod.model_logprobs(tiny_model, b.input_ids, b.attention_mask)
        lp_p, ent_p = logprobs_mod.model_logprobs(tiny_model, b.input_ids, b.attention_mask, positions=pos)
    assert torch.equal(lp_p[pos], lp[pos]) and torch.equal(ent_p[pos], ent[pos])
    assert not lp_p[~pos].any() and not ent_p[~pos].any()
    # nothing selected (a dummy micro-batch): the full head, so the backward still reaches every parameter
    none = torch.zeros_like(pos)
    lp_n, _ = logprobs_mod.model_logprobs(tiny_model, b.input_ids, b.attention_mask, positions=none)
    assert lp_n.requires_grad and torch.equal(lp_n.detach(), lp)


def test_dropout_falls_back_to_the_pre_pass(tiny_model, tiny_tokenizer, monkeypatch):
    assert train_forward_is_eval_forward(tiny_model)
    tiny_model.config.attention_dropout = 0.1
    assert not train_forward_is_eval_forward(tiny_model)
    tiny_model.config.attention_dropout = 0.0
    model = torch.nn.Sequential(torch.nn.Dropout(0.1))
    assert not train_forward_is_eval_forward(model)
    # the learner then runs the no-grad pre-pass over every row, as before
    monkeypatch.setattr(learner_mod, "train_forward_is_eval_forward", lambda m: False)
    grads = []
    real = logprobs_mod.token_logprobs_and_entropy
    monkeypatch.setattr(
        logprobs_mod,
        "token_logprobs_and_entropy",
        lambda *a, **k: (grads.append(torch.is_grad_enabled()), real(*a, **k))[1],
    )
    Learner(type(tiny_model)(tiny_model.config), LearnerConfig(), temperature=1.0, max_len_norm=64).step(
        _batch(tiny_tokenizer)
    )
    assert grads == [False, True]

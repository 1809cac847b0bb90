"""`learner.share_prefix` (training/shared_prefix.py): a group's prompt runs once, the numbers stay those of the
plain forward up to float rounding, and the backbone sees fewer tokens."""

from __future__ import annotations

import pytest
import torch

from eprl.agents.trajectory import Trajectory
from eprl.training.batch import collate
from eprl.training.config import LearnerConfig
from eprl.training.learner import Learner
from eprl.training.logprobs import model_logprobs
from eprl.training.model_parts import causal_lm_parts
from eprl.training.shared_prefix import plan_shared_prefix

torch.set_num_threads(1)
TIMING = ("time_learn", "learn_tokens_per_s")


def _groups(tokenizer, groups=3, size=4, seed=0, multi_turn=True):
    """`groups` tasks x `size` samples: rows of a task share its prompt (lengths differ between tasks);
    each row answers, gets an observation, answers again (multi_turn)."""
    g = torch.Generator().manual_seed(seed)
    draw = lambda lo, hi: int(torch.randint(lo, hi, (1,), generator=g))  # noqa: E731
    tokens = lambda n: torch.randint(3, len(tokenizer), (n,), generator=g).tolist()  # noqa: E731
    trajs = []
    for task in range(groups):
        prompt = tokens(draw(6, 14))
        for sample in range(size):
            a, o, a2 = draw(2, 10), (draw(1, 5) if multi_turn else 0), (draw(1, 5) if multi_turn else 0)
            ids = prompt + tokens(a + o + a2)
            mask = [0] * len(prompt) + [1] * a + [0] * o + [1] * a2
            p = len(prompt)
            trajs.append(
                Trajectory(
                    ids, mask, [-1.0] * len(ids), [(p, p + a)], float(sample % 2), sample % 2 == 0, "t", task, "x"
                )
            )
    return collate(trajs, tokenizer.pad_token_id)


def test_the_plan_splits_at_the_earliest_action_and_groups_rows_by_prompt(tiny_tokenizer):
    batch = _groups(tiny_tokenizer)
    plan = plan_shared_prefix(batch.input_ids, batch.action_mask > 0)
    first_action = [int(row.nonzero()[0]) + 1 for row in batch.action_mask]
    assert plan.length == min(first_action)
    assert plan.groups.tolist() == [g for g in plan.groups.tolist()]  # one entry per row
    assert len(plan.heads) == 3 and len(plan.groups) == 12
    # rows of a task share a prefix index, rows of different tasks do not; each head is its prefix's first row
    by_task = [set(plan.groups[t * 4 : t * 4 + 4].tolist()) for t in range(3)]
    assert all(len(s) == 1 for s in by_task) and len(set.union(*by_task)) == 3
    assert all(int(plan.groups[h]) == i for i, h in enumerate(plan.heads.tolist()))
    assert sorted(plan.heads.tolist()) == [0, 4, 8]


def test_no_plan_when_nothing_is_shared_or_a_row_has_no_action(tiny_tokenizer):
    batch = _groups(tiny_tokenizer, groups=4, size=1)
    assert plan_shared_prefix(batch.input_ids, batch.action_mask > 0) is None  # every prompt distinct
    batch = _groups(tiny_tokenizer)
    acting = batch.action_mask > 0
    acting[5] = False  # a zero-weight row (a dummy micro-batch's): it bounds nothing, so no sharing
    assert plan_shared_prefix(batch.input_ids, acting) is None
    assert plan_shared_prefix(batch.input_ids[:1], (batch.action_mask > 0)[:1]) is None


def _logprobs_and_grads(model, batch, share: bool):
    model.zero_grad(set_to_none=True)
    positions = batch.action_mask > 0
    lp, ent = model_logprobs(model, batch.input_ids, batch.attention_mask, positions=positions, share_prefix=share)
    ((lp * batch.action_mask).sum() + 0.1 * (ent * batch.action_mask).sum()).backward()
    return lp.detach(), ent.detach(), {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


def test_log_probs_entropies_and_gradients_match_the_plain_forward(tiny_model, tiny_tokenizer):
    batch = _groups(tiny_tokenizer)
    tiny_model.train()
    lp0, ent0, g0 = _logprobs_and_grads(tiny_model, batch, share=False)
    lp1, ent1, g1 = _logprobs_and_grads(tiny_model, batch, share=True)
    assert torch.allclose(lp1, lp0, atol=2e-5, rtol=0) and torch.allclose(ent1, ent0, atol=2e-5, rtol=0)
    assert (lp1 != 0).sum() == batch.action_mask.sum()  # only action positions hold values, as before
    assert g0.keys() == g1.keys() and len(g0) == len(list(tiny_model.parameters()))
    for name in g0:  # every parameter, the embedding and the prefix's layers included, gets the full gradient
        scale = g0[name].abs().max().item()
        assert (g1[name] - g0[name]).abs().max().item() <= 1e-4 * max(scale, 1e-3), name


def test_the_backbone_runs_each_prompt_once(tiny_model, tiny_tokenizer):
    batch = _groups(tiny_tokenizer)
    backbone, _ = causal_lm_parts(tiny_model)
    seen = []
    handle = backbone.register_forward_pre_hook(
        lambda _m, _a, kw: seen.append(tuple(kw["input_ids"].shape)), with_kwargs=True
    )
    try:
        with torch.no_grad():
            model_logprobs(
                tiny_model, batch.input_ids, batch.attention_mask, positions=batch.action_mask > 0, share_prefix=True
            )
    finally:
        handle.remove()
    plan = plan_shared_prefix(batch.input_ids, batch.action_mask > 0)
    width = batch.input_ids.shape[1]
    assert seen == [(3, plan.length), (12, width - plan.length)]
    assert 3 * plan.length + 12 * (width - plan.length) < 12 * width


def _steps(model, tokenizer, cfg: LearnerConfig, steps: int = 2):
    fresh = type(model)(model.config)
    fresh.load_state_dict(model.state_dict())
    learner = Learner(fresh, cfg, temperature=1.0, max_len_norm=64)
    torch.manual_seed(1)
    rows = [learner.step(_groups(tokenizer, seed=s)) for s in range(steps)]
    return [{k: v for k, v in r.items() if k not in TIMING} for r in rows], fresh.state_dict()


@pytest.mark.parametrize(
    "settings",
    [{}, {"micro_batch_tokens": 60}, {"epochs": 2, "minibatches": 2}, {"kl_coef": 0.01, "entropy_coef": 0.001}],
    ids=["default", "micro_batched", "epochs2_minibatches2", "kl_ref_entropy_bonus"],
)
def test_learner_steps_with_a_shared_prefix_match_the_plain_ones(settings, tiny_model, tiny_tokenizer):
    old_rows, old_w = _steps(tiny_model, tiny_tokenizer, LearnerConfig(**settings))
    new_rows, new_w = _steps(tiny_model, tiny_tokenizer, LearnerConfig(**settings, share_prefix=True))
    for old, new in zip(old_rows, new_rows):
        assert old.keys() == new.keys()
        for k in old:
            assert new[k] == pytest.approx(old[k], rel=1e-4, abs=1e-5), k
    worst = max((old_w[k] - new_w[k]).abs().max().item() for k in old_w)
    moved = max((old_w[k] - tiny_model.state_dict()[k]).abs().max().item() for k in old_w)
    assert worst <= 1e-5 and moved > 10 * worst, (worst, moved)


def test_lora_adapter_gets_the_same_gradient(tiny_model, tiny_tokenizer):
    from peft import LoraConfig, get_peft_model

    model = get_peft_model(tiny_model, LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"]))
    for name, p in model.named_parameters():
        if "lora_B" in name:
            torch.nn.init.normal_(p, std=0.05)  # a trained adapter: B != 0, so A's gradient is not zero either
    batch = _groups(tiny_tokenizer, multi_turn=False)
    lp0, _, g0 = _logprobs_and_grads(model, batch, share=False)
    lp1, _, g1 = _logprobs_and_grads(model, batch, share=True)
    assert torch.allclose(lp1, lp0, atol=2e-5, rtol=0)
    assert (
        g0.keys() == g1.keys()
        and all("lora_" in n for n in g0)
        and len(g0) == 4 * len(model.base_model.model.model.layers)
    )
    for name in g0:
        assert torch.allclose(g1[name], g0[name], atol=1e-4 * g0[name].abs().max().item() + 1e-7), name


def test_micro_batches_keep_a_group_together_within_the_budget():
    from eprl.training.microbatch import plan

    groups = torch.tensor([2, 0, 1, 0, 2, 1, 0, 2, 1, 3])  # shuffled rows of 4 groups (3 rows each, one of 1)
    lengths = torch.full((10,), 10)
    rows = torch.arange(10)
    mbs = plan(rows, lengths, 60, groups)  # 6 rows of width 10 fit: two whole groups, never a split one
    assert [sorted(groups[mb.rows].tolist()) for mb in mbs] == [[0, 0, 0, 1, 1, 1], [2, 2, 2, 3]]
    assert sorted(torch.cat([mb.rows for mb in mbs]).tolist()) == rows.tolist()
    assert all(len(mb.rows) * mb.width <= 60 for mb in mbs)
    # a group over the budget alone is cut by rows; the others still stay whole
    mbs = plan(rows, lengths, 20, groups)
    assert all(len(mb.rows) * mb.width <= 20 for mb in mbs) and len(mbs) == 7  # 3 groups cut 2 + 1, and the single row
    assert sorted(torch.cat([mb.rows for mb in mbs]).tolist()) == rows.tolist()
    assert plan(rows, lengths, None, groups)[0].rows.tolist() == [1, 3, 6, 2, 5, 8, 0, 4, 7, 9]  # one pass, by group


def _engine_prompts(tokenizer):
    """3 distinct prompts of different lengths (left padding differs), 4 samples each, interleaved."""
    g = torch.Generator().manual_seed(3)
    distinct = [torch.randint(3, len(tokenizer), (n,), generator=g).tolist() for n in (7, 12, 9)]
    return [distinct[i % 3] for i in range(12)]


def _generate(model, tokenizer, share: bool, greedy: bool):
    from eprl.agents.engines.config import SamplingConfig
    from eprl.agents.engines.hf import HFEngine

    engine = HFEngine(model, tokenizer, share_prefix=share)
    torch.manual_seed(0)
    sampling = SamplingConfig(temperature=1.0, greedy=greedy, max_new_tokens=10)
    return engine.generate(_engine_prompts(tokenizer), sampling, stop_token_ids=[])


@pytest.mark.parametrize("greedy", [True, False], ids=["greedy", "sampled"])
def test_hf_engine_prefills_each_prompt_once_and_samples_the_same(greedy, tiny_model, tiny_tokenizer):
    plain = _generate(tiny_model, tiny_tokenizer, share=False, greedy=greedy)
    calls = []
    handle = tiny_model.register_forward_pre_hook(
        lambda _m, _a, kw: calls.append(tuple(kw["input_ids"].shape)), with_kwargs=True
    )
    try:
        shared = _generate(tiny_model, tiny_tokenizer, share=True, greedy=greedy)
    finally:
        handle.remove()
    width = 12  # the longest prompt
    assert calls[0] == (3, width)  # each distinct prompt once
    assert calls[1] == (12, 1) and all(c == (12, 1) for c in calls[1:])  # then one token per row per step
    assert [g.token_ids for g in shared] == [g.token_ids for g in plain]
    for a, b in zip(shared, plain):
        assert a.logprobs == pytest.approx(b.logprobs, abs=1e-5)


def test_share_prefix_is_refused_for_engines_that_do_not_read_it():
    from eprl.agents.engines.config import EngineConfig

    with pytest.raises(ValueError, match="share_prefix with type=vllm: only the hf engine reads it"):
        EngineConfig(type="vllm", share_prefix=True)

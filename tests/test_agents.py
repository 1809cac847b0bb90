"""Chat agent tokenization, engine log-probs vs learner recomputation, masking into the loss."""

from __future__ import annotations

import pytest
import torch

from eprl.agents.chat import ChatAgent, TemplatePrefixError
from eprl.agents.engines import SamplingError, make_engine
from eprl.agents.trajectory import Trajectory
from eprl.training.batch import collate
from eprl.training.config import EngineConfig, LearnerConfig, SamplingConfig
from eprl.training.learner import Learner
from eprl.training.logprobs import model_logprobs


def _play(agent, engine, sampling, observations):
    state = agent.start(observations[0])
    for obs in observations[1:] + [None]:
        gen = engine.generate([state.token_ids], sampling, agent.stop_token_ids)[0]
        agent.record_action(state, gen.token_ids, gen.logprobs)
        if obs is not None:
            agent.record_observation(state, obs)
    return state


def test_delta_tokenization_matches_full_render(tiny_model, tiny_tokenizer):
    torch.manual_seed(0)
    agent = ChatAgent(tiny_tokenizer, system_prompt="You are a calculator agent.")
    engine = make_engine("hf", tiny_model, tiny_tokenizer, EngineConfig())
    state = _play(
        agent, engine, SamplingConfig(max_new_tokens=8), ["Compute 3+4.", "<result>7</result>", "Incorrect, try again."]
    )
    # The token history decodes to exactly the re-rendered conversation (truncated turns end without <|im_end|>).
    rendered = tiny_tokenizer.apply_chat_template(state.messages, tokenize=False)
    decoded = tiny_tokenizer.decode(state.token_ids, skip_special_tokens=False)
    assert rendered.startswith(decoded) and len(rendered) - len(decoded) <= len("<|im_end|>\n")
    # Masks: exactly the generated spans are 1, and they hold the engine's log-probs.
    ones = [i for i, m in enumerate(state.loss_mask) if m]
    assert ones == [i for s, e in state.turn_spans for i in range(s, e)]
    assert len(state.turn_spans) == 3
    assert all(lp < 0 for i, lp in enumerate(state.logprobs) if state.loss_mask[i])
    assert all(lp == 0 for i, lp in enumerate(state.logprobs) if not state.loss_mask[i])


def test_prefix_check_raises_when_template_rewrites_history(tiny_tokenizer):
    tok = tiny_tokenizer
    agent = ChatAgent(tok)
    state = agent.start("Compute 1+1.")
    ids = tok("<think>x</think>2", add_special_tokens=False)["input_ids"] + [tok.eos_token_id]
    agent.record_action(state, ids, [0.0] * len(ids))
    original = tok.chat_template
    try:  # a template that strips reasoning from earlier assistant turns (as Qwen3's does)
        tok.chat_template = original.replace(
            "m['content']", "(m['content'].split('</think>')[-1] if m['role'] == 'assistant' else m['content'])"
        )
        with pytest.raises(TemplatePrefixError, match="differs from the token history"):
            agent.record_observation(state, "<result>2</result>")
    finally:
        tok.chat_template = original


def test_engine_logprobs_equal_learner_recomputation(tiny_model, tiny_tokenizer):
    torch.manual_seed(1)
    agent = ChatAgent(tiny_tokenizer)
    engine = make_engine("hf", tiny_model, tiny_tokenizer, EngineConfig(batch_size=3))
    sampling = SamplingConfig(temperature=0.7, max_new_tokens=10)
    prompts = [agent.start(q) for q in ["Compute 12+30.", "Compute 5*6-2. Use the tool.", "Hi"]]
    gens = engine.generate([s.token_ids for s in prompts], sampling, agent.stop_token_ids)
    trajs = []
    for g, (s, gen) in enumerate(zip(prompts, gens)):
        agent.record_action(s, gen.token_ids, gen.logprobs)
        trajs.append(
            Trajectory(s.token_ids, s.loss_mask, s.logprobs, s.turn_spans, 0.0, False, str(g), g, "terminated")
        )
    batch = collate(trajs, tiny_tokenizer.pad_token_id)
    with torch.no_grad():
        logp, _ = model_logprobs(tiny_model, batch.input_ids, batch.attention_mask, temperature=0.7, with_entropy=False)
    mask = batch.action_mask.bool()
    assert mask.sum() >= 3
    assert torch.allclose(logp[mask], batch.inference_logp[mask], atol=1e-5, rtol=0)


def test_biased_sampling_is_refused_unless_opted_in(tiny_model, tiny_tokenizer):
    engine = make_engine("hf", tiny_model, tiny_tokenizer, EngineConfig())
    with pytest.raises(SamplingError, match="top_p"):
        engine.generate([[1, 2, 3]], SamplingConfig(top_p=0.9), [tiny_tokenizer.eos_token_id])
    out = engine.generate(
        [[1, 2, 3]],
        SamplingConfig(top_k=5, allow_biased_sampling=True, max_new_tokens=3),
        [tiny_tokenizer.eos_token_id],
    )
    assert 1 <= len(out[0].token_ids) <= 3


def test_no_prompt_or_observation_token_reaches_the_loss(tiny_model, tiny_tokenizer):
    """d loss / d logp is exactly zero at every prompt/observation position, non-zero at every action token."""
    torch.manual_seed(2)
    agent = ChatAgent(tiny_tokenizer)
    engine = make_engine("hf", tiny_model, tiny_tokenizer, EngineConfig())
    state = _play(agent, engine, SamplingConfig(max_new_tokens=6), ["Compute 2+2.", "<result>4</result>"])
    traj = Trajectory(
        state.token_ids, state.loss_mask, state.logprobs, state.turn_spans, 1.0, True, "t", 0, "terminated"
    )
    other = Trajectory(
        state.token_ids, state.loss_mask, state.logprobs, state.turn_spans, 0.0, False, "t", 0, "terminated"
    )
    cfg = LearnerConfig(loss="pg", lr=1e-3)
    learner = Learner(tiny_model, cfg, temperature=1.0, max_len_norm=512)
    batch = collate([traj, other], tiny_tokenizer.pad_token_id)

    def loss_grad(b):
        from eprl.training.losses import LossInputs, compute_policy_loss

        tiny_model.zero_grad()
        logp, _ = model_logprobs(tiny_model, b.input_ids, b.attention_mask, with_entropy=False)
        logp.retain_grad()
        adv = learner.advantages(b)[:, None] * b.action_mask
        loss, _ = compute_policy_loss(
            cfg, LossInputs(logp=logp, old_logp=logp.detach(), advantages=adv, mask=b.action_mask)
        )
        loss.backward()
        return logp.grad

    grad = loss_grad(batch)
    masked = batch.action_mask == 0
    assert torch.count_nonzero(grad[masked]) == 0, "a prompt/observation position received gradient"
    assert torch.count_nonzero(grad[~masked]) == int((~masked).sum())


def test_threaded_env_workers_give_identical_trajectories(tiny_model, tiny_tokenizer):
    from eprl import envs
    from eprl.agents.rollout import RolloutRunner

    agent = ChatAgent(tiny_tokenizer)
    engine = make_engine("hf", tiny_model, tiny_tokenizer, EngineConfig())
    sampling = SamplingConfig(max_new_tokens=8)
    results = []
    for workers in (0, 3):
        runner = RolloutRunner(
            lambda: envs.make("eprl/ArithmeticTool-v0", difficulty=1, max_turns=3),
            agent,
            engine,
            max_turns=3,
            max_context_tokens=400,
            progress=False,
            env_workers=workers,
        )
        torch.manual_seed(5)
        trajs, stats = runner.run([3, 8], group_size=2, sampling=sampling, seed=11)
        runner.close()
        results.append([(t.token_ids, t.loss_mask, t.reward, t.termination, t.task_id) for t in trajs])
        assert stats.episodes == 4 and stats.generated_tokens == sum(sum(t.loss_mask) for t in trajs)
    assert results[0] == results[1]
    assert [r[4] for r in results[0]][::2] == [r[4] for r in results[0]][1::2]  # groups share their task
    assert len({r[4] for r in results[0]}) == 2


@pytest.mark.parametrize("temperature", [1.0, 0.7])
def test_hf_logprobs_equal_a_teacher_forced_forward(tiny_model, tiny_tokenizer, temperature):
    """The engine's recorded log-prob of every sampled token is log_softmax(logits / T) of the full
    distribution, as one forward over prompt + sample computes it (the learner's view), including a row that
    stops early and leaves the batch."""
    import torch.nn.functional as F

    engine = make_engine("hf", tiny_model, tiny_tokenizer, EngineConfig())
    prompts = [tiny_tokenizer("Compute 3+4.")["input_ids"], tiny_tokenizer("Compute 12*7+1. Then")["input_ids"]]
    stop = [tiny_tokenizer.eos_token_id, tiny_tokenizer.convert_tokens_to_ids("<|im_end|>")]
    torch.manual_seed(3)
    gens = engine.generate(prompts * 4, SamplingConfig(max_new_tokens=12, temperature=temperature), stop)
    assert {g.finish_reason for g in gens} == {"stop", "length"}  # some rows stopped early, others ran out
    for prompt, gen in zip(prompts * 4, gens):
        assert (gen.finish_reason == "stop") == (gen.token_ids[-1] in stop)
        assert not any(t in stop for t in gen.token_ids[:-1])
        ids = torch.tensor([prompt + gen.token_ids])
        with torch.no_grad():
            logits = tiny_model(input_ids=ids).logits[0, len(prompt) - 1 : -1]
        ref = F.log_softmax(logits.float() / temperature, -1).gather(-1, ids[0, len(prompt) :, None]).squeeze(-1)
        assert torch.allclose(torch.tensor(gen.logprobs), ref, atol=1e-5, rtol=0)


def test_a_tokenizer_without_chat_template_is_a_config_error(tiny_tokenizer):
    import copy

    from eprl.errors import ConfigError

    tok = copy.deepcopy(tiny_tokenizer)
    tok.chat_template = None
    with pytest.raises(ConfigError, match=r"^model\.name_or_path: the tokenizer has no chat_template"):
        ChatAgent(tok)

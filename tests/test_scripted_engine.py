"""ScriptedEngine (agents/engines/scripted.py): the one model-free engine of tests and benchmarks."""

from __future__ import annotations

import pytest

from eprl.agents.engines import Generation, ScriptedEngine


def test_turns_in_order_every_prompt_the_same_and_stop_detected():
    engine = ScriptedEngine([[5, 6, 9], [7]])
    first = engine.generate([[1], [1, 2]], None, stop_token_ids=[9])
    assert [(g.token_ids, g.logprobs, g.finish_reason) for g in first] == [([5, 6, 9], [-0.5] * 3, "stop")] * 2
    (second,) = engine.generate([[1]], None, stop_token_ids=[9])
    assert second.token_ids == [7] and second.finish_reason == "length"
    with pytest.raises(RuntimeError, match="script has 2 turns"):
        engine.generate([[1]], None, stop_token_ids=[9])


def test_constant_repeats_and_returns_fresh_lists():
    engine = ScriptedEngine.constant([3, 4], logprob=-1.0)
    a = engine.generate([[1]], None, [0])
    a[0].token_ids.append(99)
    b = engine.generate([[1], [2]], None, [0])
    assert [g.token_ids for g in b] == [[3, 4], [3, 4]] and b[0].logprobs == [-1.0, -1.0]
    engine.sync_weights(object())  # no weights: a no-op


def test_replay_returns_recorded_generations_and_checks_prompt_lengths():
    gens = [Generation([1], [-0.1], "stop"), Generation([2, 3], [-0.2, -0.3], "length")]
    engine = ScriptedEngine.replay([([2, 3], gens)])
    assert engine.generate([[0, 0], [0, 0, 0]], None, [1]) == gens
    engine.calls = 0
    with pytest.raises(RuntimeError, match="diverged"):
        engine.generate([[0], [0, 0, 0]], None, [1])

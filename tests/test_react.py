"""ReAct agent: code-block parsing, registration, system prompt (no AppWorld needed)."""

from __future__ import annotations

from eprl import agents
from eprl.agents.react import SYSTEM_PROMPT, ReactAgent, extract_code


def test_single_block():
    assert extract_code("Thought: go.\n```python\nprint(1)\n```\nDone.") == "print(1)"


def test_several_blocks_are_joined_in_order():
    text = "a\n```python\nx = 1\n```\nthen\n```python\nprint(x)\n```\n"
    assert extract_code(text) == "x = 1\n\nprint(x)"


def test_unterminated_trailing_block_is_accepted():
    text = "```python\nx = 1\n```\nmore:\n```python\nprint(x)\nprint(x + 1)"
    assert extract_code(text) == "x = 1\n\nprint(x)\nprint(x + 1)"


def test_no_code_gives_empty_action():
    assert extract_code("I think the answer is 7.") == ""
    assert extract_code("```\nplain fence, not python\n```") == ""
    assert extract_code("```python\n\n```") == ""


def test_py_alias_and_inline_text_kept_out():
    assert extract_code("Use `apis` here.\n```py\nprint(2)\n```") == "print(2)"


def test_registered_and_uses_its_prompt(tiny_tokenizer):
    assert agents.AGENTS["react"] is ReactAgent
    agent = agents.make_agent("react", tiny_tokenizer)
    assert agent.system_prompt == SYSTEM_PROMPT and "complete_task" in SYSTEM_PROMPT
    assert agents.make_agent("react", tiny_tokenizer, system_prompt="short").system_prompt == "short"
    assert agent.parse_action("x\n```python\nprint(3)\n```") == "print(3)"


def test_record_action_returns_parsed_code(tiny_tokenizer):
    agent = ReactAgent(tiny_tokenizer, system_prompt="s")
    state = agent.start("task")
    ids = tiny_tokenizer("ok\n```python\nprint(4)\n```", add_special_tokens=False)["input_ids"]
    assert agent.record_action(state, ids, [0.0] * len(ids)) == "print(4)"
    assert state.loss_mask[-len(ids) :] == [1] * len(ids)

"""Chat agent: renders turns with the tokenizer's chat template, keeps generated tokens verbatim.

Only observations are tokenized, as the *delta* between two renders of the conversation:
    delta_text = render(messages + [obs], gen_prompt=True)[len(decode(history)):]
The prefix check fails loudly when decode(history) is not a prefix of the re-render, i.e. when
a template would rewrite earlier turns (e.g. strip reasoning) and the tokens the learner trains
on would differ from what a re-rendered conversation contains.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from eprl.errors import ConfigError


class TemplatePrefixError(RuntimeError):
    """Re-rendering the conversation would not reproduce the token history."""


@dataclass
class EpisodeState:
    messages: list[dict[str, str]]
    token_ids: list[int] = field(default_factory=list)
    loss_mask: list[int] = field(default_factory=list)
    logprobs: list[float] = field(default_factory=list)
    turn_spans: list[tuple[int, int]] = field(default_factory=list)

    def append(self, ids, mask: int, logprobs=None) -> None:
        self.token_ids.extend(ids)
        self.loss_mask.extend([mask] * len(ids))
        self.logprobs.extend(logprobs if logprobs is not None else [0.0] * len(ids))


class ChatAgent:
    """One assistant message per turn; the action handed to the env is the decoded message text."""

    def __init__(self, tokenizer, system_prompt: str | None = None):
        if tokenizer.chat_template is None:
            raise ConfigError(
                "model.name_or_path: the tokenizer has no chat_template; use an instruct/chat model or set "
                "tokenizer.chat_template"
            )
        self.tokenizer = tokenizer
        self.system_prompt = system_prompt
        self.stop_token_ids = sorted({tokenizer.eos_token_id, *self._end_of_turn_ids()} - {None})

    def _end_of_turn_ids(self) -> list[int]:
        ids = []
        for tok in ("<|im_end|>", "<|eot_id|>", "<end_of_turn>"):
            tid = self.tokenizer.convert_tokens_to_ids(tok)
            if isinstance(tid, int) and tid != self.tokenizer.unk_token_id:
                ids.append(tid)
        return ids

    def _render(self, messages, generation_prompt: bool) -> str:
        return self.tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=generation_prompt)

    def _encode(self, text: str) -> list[int]:
        return self.tokenizer(text, add_special_tokens=False)["input_ids"]

    def start(self, first_observation: str, max_tokens: int | None = None) -> EpisodeState:
        """The episode's prompt tokens, cut to ``max_tokens`` (the runner then ends it as context_limit)."""
        messages = [{"role": "system", "content": self.system_prompt}] if self.system_prompt else []
        messages.append({"role": "user", "content": first_observation})
        state = EpisodeState(messages=messages)
        state.append(self._encode(self._render(messages, generation_prompt=True))[:max_tokens], mask=0)
        return state

    def parse_action(self, text: str) -> str:
        """The env's action for an assistant message; subclasses extract e.g. code blocks."""
        return text

    def record_action(self, state: EpisodeState, token_ids: list[int], logprobs: list[float]) -> str:
        """Append generated tokens verbatim (mask 1); return the action the env receives (`parse_action`)."""
        start = len(state.token_ids)
        state.append(token_ids, mask=1, logprobs=logprobs)
        state.turn_spans.append((start, len(state.token_ids)))
        text = self.tokenizer.decode([t for t in token_ids if t not in self.stop_token_ids], skip_special_tokens=False)
        state.messages.append({"role": "assistant", "content": text})
        return self.parse_action(text)

    def record_observation(self, state: EpisodeState, observation: str, max_tokens: int | None = None) -> bool:
        """Tokenize the env's reply as a template delta (mask 0), after the prefix check. A delta longer than
        ``max_tokens`` is cut there and False returned: the episode must end, as its next render would differ."""
        state.messages.append({"role": "user", "content": observation})
        rendered = self._render(state.messages, generation_prompt=True)
        history = self.tokenizer.decode(state.token_ids, skip_special_tokens=False)
        if not rendered.startswith(history):
            at = next(
                (i for i, (a, b) in enumerate(zip(history, rendered)) if a != b), min(len(history), len(rendered))
            )
            raise TemplatePrefixError(
                f"chat template re-render differs from the token history at character {at}: "
                f"history ...{history[max(0, at - 40) : at + 40]!r} vs render ...{rendered[max(0, at - 40) : at + 40]!r}. "
                "The template rewrites earlier turns; use a template that renders history verbatim."
            )
        delta = self._encode(rendered[len(history) :])
        state.append(delta[:max_tokens], mask=0)
        return max_tokens is None or len(delta) <= max_tokens

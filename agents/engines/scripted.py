"""`ScriptedEngine`: answers from a script, no model. For tests and benchmarks of everything around the
engine (rollout runner, agents, env boundary, the loop's bookkeeping) in milliseconds.

The script is a list of turns, one per `generate` call, in order:
- a turn that is a list of token ids: every prompt of that call gets those ids;
- a turn that is a list of `Generation`: one per prompt, returned as recorded (a replay).
After the last turn, `repeat_last=True` keeps answering with it; otherwise a further call raises.
A token-id answer finishes with "stop" when its last token is one of the call's stop tokens, else
"length"; each of its tokens gets the log-prob `logprob`. With `prompt_lengths` (one list per turn, as
recorded), a call whose prompt lengths differ raises: the replayed episodes diverged from the recording.
"""

from __future__ import annotations

from typing import Sequence

from .base import Generation


class ScriptedEngine:
    def __init__(
        self,
        script: Sequence,
        *,
        logprob: float = -0.5,
        repeat_last: bool = False,
        prompt_lengths: Sequence[Sequence[int]] | None = None,
    ):
        if not script:
            raise ValueError("ScriptedEngine: the script needs at least one turn")
        self.script, self.logprob, self.repeat_last = list(script), logprob, repeat_last
        self.prompt_lengths = None if prompt_lengths is None else list(prompt_lengths)
        self.calls = 0

    @classmethod
    def constant(cls, token_ids: Sequence[int], **kw) -> "ScriptedEngine":
        """The same answer to every prompt, every call."""
        return cls([list(token_ids)], repeat_last=True, **kw)

    @classmethod
    def replay(cls, calls: Sequence[tuple[Sequence[int], Sequence[Generation]]]) -> "ScriptedEngine":
        """Recorded calls [(prompt lengths, generations)] returned in order, checking the prompt lengths."""
        return cls([list(gens) for _, gens in calls], prompt_lengths=[list(lengths) for lengths, _ in calls])

    def sync_weights(self, model) -> None:
        pass  # no weights

    def generate(self, prompts, sampling, stop_token_ids) -> list[Generation]:
        i = self.calls
        if i >= len(self.script) and not self.repeat_last:
            raise RuntimeError(f"ScriptedEngine: call {i + 1}, but the script has {len(self.script)} turns")
        turn = self.script[min(i, len(self.script) - 1)]
        if (
            self.prompt_lengths is not None
            and i < len(self.prompt_lengths)
            and list(self.prompt_lengths[i]) != [len(p) for p in prompts]
        ):
            raise RuntimeError("replay diverged from the recorded run (prompt lengths differ)")
        self.calls += 1
        if turn and isinstance(turn[0], Generation):
            if len(turn) != len(prompts):
                raise RuntimeError(f"ScriptedEngine: {len(prompts)} prompts, the turn has {len(turn)} generations")
            return list(turn)
        finish = "stop" if turn and turn[-1] in set(stop_token_ids) else "length"
        return [Generation(list(turn), [self.logprob] * len(turn), finish) for _ in prompts]

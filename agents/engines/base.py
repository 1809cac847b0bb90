"""The engine contract: token ids in, token ids + float32 log-probs out."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol, Sequence

from eprl.errors import ConfigError

if TYPE_CHECKING:
    from .config import SamplingConfig


class SamplingError(ConfigError):
    """Sampling settings the learner cannot reproduce (top-p/top-k without opt-in)."""


@dataclass
class Generation:
    token_ids: list[int]  # generated tokens, verbatim, including the stop token if one was hit
    logprobs: list[float]  # sampler log-prob of each generated token (float32, at the sampling temperature)
    finish_reason: str  # "stop" | "length"


class Engine(Protocol):
    def generate(
        self, prompts: Sequence[Sequence[int]], sampling: SamplingConfig, stop_token_ids: Sequence[int]
    ) -> list[Generation]:
        """Continue each prompt once."""

    def sync_weights(self, model) -> None:
        """Make the engine sample from the learner's current weights."""


def check_unbiased(sampling: SamplingConfig) -> None:
    """Refuse sampling settings under which the learner's recomputed probabilities would differ."""
    biased = [name for name, off in (("top_p", 1.0), ("top_k", 0)) if getattr(sampling, name) != off]
    if biased and not sampling.allow_biased_sampling:
        raise SamplingError(
            f"sampling.{biased[0]}={getattr(sampling, biased[0])} makes the sampler's distribution differ from the "
            "learner's; remove it or set sampling.allow_biased_sampling=true to accept biased importance ratios"
        )

"""What an engine is configured with: sampling settings (per rollout) and the engine section (per run).

They live with the engines, so an engine's signature can name them without importing `eprl.training`;
training/config.py re-exports both as parts of a RunConfig.
"""

from __future__ import annotations

from typing import Literal, Optional

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator


class Strict(BaseModel):
    """A config section: unknown keys are errors and assignments are validated."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class SamplingConfig(Strict):
    temperature: float = Field(
        1.0, gt=0, description="sampling temperature; the learner divides logits by the same value"
    )
    max_new_tokens: int = Field(64, gt=0, description="token budget of one agent turn")
    top_p: float = Field(
        1.0,
        description="nucleus sampling; != 1 makes learner and sampler probabilities differ, refused unless allow_biased_sampling",
    )
    top_k: int = Field(0, description="top-k sampling (0 = off); refused unless allow_biased_sampling")
    allow_biased_sampling: bool = Field(
        False, description="opt in to top_p/top_k that make the sampler's distribution differ from the learner's"
    )
    greedy: bool = Field(False, description="argmax decoding (evaluation)")


class EngineConfig(Strict):
    type: str = Field("hf", description="rollout engine by name: hf | vllm")
    batch_size: int = Field(64, ge=1, description="max sequences generated together")
    gpu_memory_utilization: float = Field(
        0.15, gt=0, le=1, description="vllm: share of GPU memory for weights + KV cache (on CPU: share of RAM)"
    )
    max_model_len: Optional[int] = Field(
        None, gt=0, description="vllm: max prompt + generation tokens per sequence (None: the model's)"
    )
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = Field(
        "auto",
        description="sampler weights/compute dtype (auto: the learner model's dtype); hf: another dtype samples from a copy of the weights in it, refreshed after each update (pair bfloat16 with learner.tis_cap)",
    )
    enforce_eager: bool = Field(
        False, description="vllm: no CUDA graphs / torch.compile (faster start, slower decoding)"
    )
    launch_server: bool = Field(
        False, description="vllm: start a `vllm serve` on 127.0.0.1 and use it over HTTP instead of an in-process LLM"
    )
    server_urls: list[str] = Field(
        default_factory=list,
        description="vllm: URLs of running OpenAI-compatible vLLM servers (several = replicas, round-robin)",
    )
    server_timeout: float = Field(
        600.0, gt=0, description="vllm server: seconds to wait for /health at launch and for one request"
    )
    share_prefix: bool = Field(
        False,
        description="hf: rows with the same prompt (a group's samples) prefill it once and decode from copies of its key/value cache; the same samples up to float rounding, group_size x less prefill",
    )
    weights_dir: Optional[str] = Field(
        None, description="vllm: where synced weights are written (None: a temp dir); servers given by URL must see it"
    )

    @model_validator(mode="after")
    def _share_prefix_is_hf_only(self) -> "EngineConfig":
        if self.share_prefix and self.type != "hf":
            raise ValueError(
                f"share_prefix with type={self.type}: only the hf engine reads it (vLLM shares cached prompts by its own "
                "prefix caching)"
            )
        return self

    @field_validator("type")
    @classmethod
    def _known_engine(cls, v: str) -> str:
        from . import ENGINES  # the package imports this module's neighbours, not this module: no cycle

        return ENGINES.check(v)

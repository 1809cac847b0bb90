"""The learner's configuration: loss, advantage, aggregation, optimizer, and the entropy controller.

Part of the run config (training/config.py re-exports both classes); the named choices are validated
against their Registry, imported inside the validators so that loading a config does not import torch.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal, Optional, Union

from pydantic import Field, field_validator, model_validator

from eprl.agents.engines.config import Strict


# ----------------------------------------------------------------------------- learner
class EntropyControlConfig(Strict):
    type: str = Field("none", description="entropy controller: none | repo_r | repo_d | adapo | clip_cov | kl_cov")
    target_entropy: Union[float, Literal["remeasure"], None] = Field(
        None,
        description="H*; None = mean action-token entropy of the first target_iterations iterations (continue: the parent's H*); remeasure = measure it again on the new run even under continue",
    )
    tolerance: float = Field(0.0, ge=0, description="band around H* inside which the controller holds still")
    tolerance_relative: bool = Field(False, description="tolerance is a fraction of H* (0.1 = +-10%) instead of nats")
    target_iterations: int = Field(
        1,
        ge=1,
        description="H* = mean entropy of the first N iterations (1: the first, per docs/algorithms.md); no control step before",
    )
    smoothing: float = Field(
        0.0,
        ge=0,
        lt=1,
        description="EMA weight s: the controller compares H_c = s*H_c + (1-s)*H with H* (0: the iteration's H)",
    )
    zeta: Optional[float] = Field(None, description="initial REPO zeta (None: 1e-3 for repo_r, 1.0 for repo_d)")
    zeta_min: Optional[float] = Field(None, description="smallest |zeta| (None: 1e-4 repo_r, 1e-3 repo_d)")
    zeta_max: Optional[float] = Field(None, description="largest |zeta| (None: 0.05 repo_r, 10 repo_d)")
    adaptive: bool = Field(True, description="adjust zeta / eps_high once per iteration toward H*")
    gamma: float = Field(1.5, gt=1, description="ADAPO multiplicative step for eps_high")
    eps_high_min: Optional[float] = Field(None, description="ADAPO lower bound on eps_high (None: eps_low/2)")
    eps_high_max: float = Field(1.0, description="ADAPO upper bound on eps_high")
    logp_floor: float = Field(-20.0, description="REPO-R floor on the sampled token's log-prob")
    clip_cov_ratio: float = Field(
        2e-4,
        gt=0,
        le=1,
        description="Clip-Cov: fraction of action tokens whose gradient is detached (at least one; Cui et al. 2025)",
    )
    clip_cov_lb: float = Field(
        1.0, description="Clip-Cov: lower bound of the covariance window the tokens are drawn from"
    )
    clip_cov_ub: float = Field(5.0, description="Clip-Cov: upper bound of the covariance window")
    kl_cov_ratio: float = Field(
        2e-4,
        gt=0,
        le=1,
        description="KL-Cov: fraction of action tokens (largest covariance) that get the KL penalty (at least one)",
    )
    kl_cov_coef: float = Field(
        1.0, ge=0, description="KL-Cov: coefficient of the penalty coef*|logp - logp_old| on those tokens"
    )

    @field_validator("type")
    @classmethod
    def _known_controller(cls, v: str) -> str:
        from .entropy_control import CONTROLLERS

        return CONTROLLERS.check(v)

    @model_validator(mode="after")
    def _fields_of_another_controller(self) -> "EntropyControlConfig":
        # a field that belongs to another controller has no effect: refuse a non-default value
        defaults = type(self).model_fields
        for owner, fields in CONTROLLER_FIELDS.items():
            if self.type in owner:
                continue
            changed = [f for f in fields if getattr(self, f) != defaults[f].default]
            if changed:
                raise ValueError(
                    f"{changed[0]}={getattr(self, changed[0])!r} has no effect with type={self.type} "
                    f"(it is a {' / '.join(owner)} field)"
                )
        if self.clip_cov_lb >= self.clip_cov_ub:
            raise ValueError("clip_cov_lb must be below clip_cov_ub")
        return self


CONTROLLER_FIELDS: dict[tuple[str, ...], tuple[str, ...]] = {  # controller type(s) -> the fields only they read
    ("repo_r", "repo_d"): ("zeta", "zeta_min", "zeta_max"),
    ("repo_r",): ("logp_floor",),
    ("adapo",): ("gamma", "eps_high_min", "eps_high_max"),
    ("clip_cov",): ("clip_cov_ratio", "clip_cov_lb", "clip_cov_ub"),
    ("kl_cov",): ("kl_cov_ratio", "kl_cov_coef"),
}


class LearnerConfig(Strict):
    advantage: str = Field(
        "grpo", description="advantage estimator by name: grpo | loo | reinforce_pp | reinforce_pp_baseline"
    )
    std_normalize: bool = Field(True, description="grpo: divide by group std (false = Dr.GRPO)")
    loss: str = Field("ppo", description="policy loss by name: pg | ppo | dapo | gspo | cispo")
    loss_agg: str = Field(
        "token_mean", description="how per-token losses are aggregated (gspo: seq_mean_token_mean unless set)"
    )
    eps: float = Field(0.2, description="ppo: symmetric clip epsilon (LOOP uses 0.1)")
    ppo_lower_bound: Literal["one_minus_eps", "inverse"] = Field(
        "one_minus_eps", description="ppo lower clip bound: 1-eps (standard) or 1/(1+eps) (LOOP code)"
    )
    eps_low: float = Field(0.2, description="dapo/adapo: lower clip epsilon")
    eps_high: float = Field(0.28, description="dapo/adapo: upper clip epsilon (ADAPO adapts it)")
    gspo_eps_low: float = Field(3e-4, description="gspo: lower sequence clip epsilon")
    gspo_eps_high: float = Field(4e-4, description="gspo: upper sequence clip epsilon")
    clip_ratio_c: Optional[float] = Field(
        None,
        gt=1,
        description="ppo/dapo dual-clip c: for A < 0 the token loss is at most c*|A| (None = off; 3.0 is usual)",
    )
    cispo_eps_low: float = Field(
        1.0, gt=0, le=1, description="cispo: IS weight lower bound 1 - eps (1.0: no lower bound, as MiniMax-M1)"
    )
    cispo_eps_high: float = Field(
        0.28, gt=0, description="cispo: IS weight upper bound 1 + eps (MiniMax-M1 tunes it; 0.28 as Trinity-RFT)"
    )
    max_len_norm: Optional[int] = Field(
        None, description="seq_mean_token_sum_norm constant (None: agent.max_context_tokens)"
    )
    overlong_buffer: int = Field(
        0, ge=0, description="dapo overlong shaping: linear penalty in the last N tokens before the limit (0 = off)"
    )
    overlong_penalty: float = Field(1.0, description="dapo overlong shaping: penalty at the limit")
    drop_zero_advantage: bool = Field(False, description="drop groups whose returns are all equal")
    dynamic_sampling: bool = Field(False, description="dapo: refill dropped groups by sampling more tasks")
    max_resample_rounds: int = Field(3, ge=0, description="bound on dynamic-sampling refill rounds")
    kl_coef: float = Field(0.0, ge=0, description="KL to the reference (initial) policy (0 = off)")
    kl_estimator: Literal["k1", "k2", "k3", "k1+", "k3+"] = Field(
        "k3", description="KL estimator: k1, k2 (mse), k3 (low-var, clamped); + = value of k1/k3 with k2's gradient"
    )
    entropy_coef: float = Field(0.0, description="explicit entropy bonus -c*H with exact full-vocabulary H (0 = off)")
    tis_cap: Optional[float] = Field(
        None, description="truncated importance sampling cap against inference log-probs (None = off)"
    )
    old_logprobs: Literal["recompute", "inference"] = Field("recompute", description="where logp_old comes from")
    entropy_control: EntropyControlConfig = Field(
        default_factory=EntropyControlConfig, description="REPO / ADAPO entropy control"
    )
    lr: float = Field(
        5e-5,
        gt=0,
        description="AdamW learning rate (5e-5 suits the embedded tiny default: at 1e-4 its entropy blows up after ~40 iterations; full fine-tuning of real LLMs uses ~1e-6)",
    )
    weight_decay: float = Field(0.0, ge=0, description="AdamW weight decay")
    max_grad_norm: float = Field(1.0, gt=0, description="gradient clipping norm")
    epochs: int = Field(1, ge=1, description="passes over each iteration's batch")
    minibatches: int = Field(1, ge=1, description="optimizer steps per epoch")
    micro_batch_tokens: Optional[Union[Literal["auto"], Annotated[int, Field(ge=1)]]] = Field(
        "auto",
        description="gradient accumulation: split each minibatch (each rank's share under torchrun) into micro-batches of at most this many padded tokens (None: one pass; auto: 1/16 of the device memory over the model's activation bytes per token, training/microbatch.py)",
    )
    chunk_size: int = Field(256, ge=1, description="sequence chunk for float32 log-prob/entropy (memory)")
    share_prefix: bool = Field(
        False,
        description="run the prompt shared by a micro-batch's rows once per distinct prompt and continue each row from its key/value cache (training/shared_prefix.py): the same gradient up to float rounding, (group_size - 1) x prompt tokens less compute per group; not under torchrun",
    )
    fp32_lm_head: Optional[bool] = Field(
        None,
        description="compute the lm_head matmul in float32 when model.dtype is bf16/fp16 (None: on for bf16/fp16; cost in bench/results/learner_rails.md)",
    )

    @model_validator(mode="before")
    @classmethod
    def _gspo_sequence_mean(cls, data: Any) -> Any:
        # GSPO is a per-sequence objective: its default aggregation is the sequence mean
        if isinstance(data, dict) and data.get("loss") == "gspo" and "loss_agg" not in data:
            data = {**data, "loss_agg": "seq_mean_token_mean"}
        return data

    @model_validator(mode="after")
    def _no_silent_combinations(self) -> "LearnerConfig":
        """Combinations where a knob would have no effect (or change the method's meaning) are refused."""
        ec = self.entropy_control
        problems = [
            (
                self.loss == "gspo" and self.loss_agg == "token_mean",
                "loss=gspo with loss_agg=token_mean: GSPO is defined per sequence and token_mean weights sequences "
                "by length; use seq_mean_token_mean (the default for gspo) or another seq_mean_* mode",
            ),
            (
                ec.type == "adapo" and self.loss != "dapo",
                f"entropy_control.type=adapo with loss={self.loss}: ADAPO moves eps_high, which only loss=dapo reads "
                "(ppo uses eps, gspo gspo_eps_high, cispo cispo_eps_high, pg none)",
            ),
            (
                self.tis_cap is not None and self.old_logprobs == "inference",
                "tis_cap with old_logprobs=inference: logp_old is then the inference log-prob, so every TIS weight is 1",
            ),
            (
                self.clip_ratio_c is not None and self.loss not in ("ppo", "dapo"),
                f"clip_ratio_c with loss={self.loss}: dual-clip applies to the token-clipped losses ppo and dapo only",
            ),
            (
                not self.std_normalize and self.advantage != "grpo",
                f"std_normalize=false with advantage={self.advantage}: only grpo divides by a group std",
            ),
            (
                self.max_len_norm is not None and self.loss_agg != "seq_mean_token_sum_norm",
                f"max_len_norm with loss_agg={self.loss_agg}: only seq_mean_token_sum_norm divides by it",
            ),
            (
                ec.type == "kl_cov" and self.epochs * self.minibatches == 1 and self.old_logprobs == "recompute",
                "entropy_control.type=kl_cov with epochs=1, minibatches=1, old_logprobs=recompute: the only update "
                "has logp = logp_old, so the penalty |logp - logp_old| and its gradient are 0; set epochs or minibatches > 1",
            ),
            (
                self.kl_estimator != "k3" and self.kl_coef == 0,
                f"kl_estimator={self.kl_estimator} with kl_coef=0: the KL term is off",
            ),
        ]
        for bad, message in problems:
            if bad:
                raise ValueError(message)
        return self

    @field_validator("advantage")
    @classmethod
    def _known_advantage(cls, v: str) -> str:
        from .advantages import ADVANTAGE_ESTIMATORS

        return ADVANTAGE_ESTIMATORS.check(v)

    @field_validator("loss")
    @classmethod
    def _known_loss(cls, v: str) -> str:
        from .losses import POLICY_LOSSES

        return POLICY_LOSSES.check(v)

    @field_validator("loss_agg")
    @classmethod
    def _known_aggregation(cls, v: str) -> str:
        from .losses import LOSS_AGGREGATIONS

        return LOSS_AGGREGATIONS.check(v)

"""Entropy controllers (docs/algorithms.md, "Entropy control"): REPO-R, REPO-D, ADAPO; Clip-Cov and
KL-Cov (training/cov_control.py, registered here by name and imported on first use).

Theorem 1: one policy-gradient step of size eta changes the entropy at state s by
    Delta H(s) ~= -eta * E_{a~pi}[ pi(a|s) * A(s,a) * L(s,a) ],   L = log pi(a|s) + H(s).
REPO changes the advantage, A' = A - beta * L; ADAPO moves the upper clip bound eps_high.
Both are steered once per iteration toward a target entropy H*.

Registry by name (eprl/registry.py; plugins: entry-point group `eprl.entropy_controls`): CONTROLLERS["repo_r"]
is a class taking the LearnerConfig; `make_controller(cfg)` builds one.
Every controller has `shape_advantages`, `shaping_stats`, `loss_overrides`, `update`, `metrics`,
`state_dict`, `load_state_dict` and the attributes `needs_entropy`, `minibatch_stats`, `token_modifier`
(None, or a losses.TokenModifier applied to the per-token policy loss: Clip-Cov, KL-Cov).

A controller whose shaping uses a statistic of the whole minibatch (`minibatch_stats`, REPO-D's c)
exposes its additive parts as `shaping_stats(...)`: the learner sums them over micro-batches and
ranks and passes the total as `shape_advantages(..., stats=total)`, so that shaping a part of the
minibatch gives the same advantages as shaping all of it at once.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Optional

import torch
from torch import Tensor

from eprl.registry import Registry

if TYPE_CHECKING:  # type only: config imports this module's registry
    from eprl.training.config import LearnerConfig

CONTROLLERS: Registry[type["EntropyController"]] = Registry("entropy controller", group="eprl.entropy_controls")
register_controller = CONTROLLERS.register
# Clip-Cov and KL-Cov subclass EntropyController in their own module: registered by name, imported on first get.
CONTROLLERS.register("clip_cov", "eprl.training.cov_control:ClipCov")
CONTROLLERS.register("kl_cov", "eprl.training.cov_control:KlCov")


def make_controller(cfg: LearnerConfig) -> "EntropyController":
    return CONTROLLERS.get(cfg.entropy_control.type)(cfg)


@register_controller("none")
class EntropyController:
    """No control. Base class: holds H* and the once-per-iteration update protocol.

    update(H): while target_entropy is None, H* := the mean of the first `target_iterations` H and no
    step is taken. Afterwards, if adaptive and |H_c - H*| > band, `_step(entropy_low = H_c < H*)`,
    H_c = H (or its EMA with `smoothing`).
    """

    needs_entropy: bool = False
    minibatch_stats: bool = False  # shaping needs sums over the whole minibatch (shaping_stats)
    token_modifier = None  # per-token loss modifier (losses.TokenModifier) or None

    def __init__(self, cfg: LearnerConfig):
        self.cfg = cfg
        self.ec = cfg.entropy_control
        # "remeasure" (continue on a new domain): measured again, as when unset
        self.target_entropy: Optional[float] = None if self.ec.target_entropy == "remeasure" else self.ec.target_entropy
        self.first_entropies: list[float] = []  # iterations that define H* (target_iterations of them)
        self.smoothed: Optional[float] = None  # H the controller compares with H* (EMA when smoothing > 0)

    def shape_advantages(
        self, adv: Tensor, logp: Tensor, entropy: Optional[Tensor], mask: Tensor, stats: Optional[Tensor] = None
    ) -> Tensor:
        return adv

    def shaping_stats(self, adv: Tensor, logp: Tensor, entropy: Optional[Tensor], mask: Tensor) -> Optional[Tensor]:
        """Additive minibatch statistics the shaping needs (None: it needs none)."""
        return None

    def loss_overrides(self) -> dict[str, Any]:
        """LearnerConfig fields this controller moves, as the loss should read them now (ADAPO: eps_high).
        The learner applies them to a copy of its config for every loss call; {}: none."""
        return {}

    def band(self) -> float:
        """Half-width of the dead band around H*: tolerance, or tolerance * H* when tolerance_relative."""
        assert self.target_entropy is not None  # only called once H* is set
        return self.ec.tolerance * (abs(self.target_entropy) if self.ec.tolerance_relative else 1.0)

    def update(self, mean_entropy: float) -> None:
        """Once per iteration. While H* is unset, collect the first `target_iterations` entropies and set
        H* to their mean (no step). Then H_c = s * H_c + (1 - s) * H (s = smoothing; 0: H_c = H) and,
        if adaptive and |H_c - H*| > band, `_step(entropy_low = H_c < H*)`."""
        mean_entropy = float(mean_entropy)
        if self.target_entropy is None:
            self.first_entropies.append(mean_entropy)
            if len(self.first_entropies) >= self.ec.target_iterations:
                self.target_entropy = sum(self.first_entropies) / len(self.first_entropies)
                self.smoothed = self.target_entropy
            return
        s = self.ec.smoothing
        self.smoothed = mean_entropy if self.smoothed is None else s * self.smoothed + (1.0 - s) * mean_entropy
        # inside the band |H_c - H*| <= band (with tolerance 0: H_c == H*) nothing moves
        if not self.ec.adaptive or abs(self.smoothed - self.target_entropy) <= self.band():
            return
        self._step(entropy_low=self.smoothed < self.target_entropy)

    def _step(self, entropy_low: bool) -> None:
        pass

    def metrics(self) -> dict[str, float]:
        out = {} if self.target_entropy is None else {"target_entropy": self.target_entropy}
        if self.smoothed is not None and self.ec.smoothing > 0:
            out["entropy_smoothed"] = self.smoothed
        return out

    def state_dict(self) -> dict:
        return {
            "target_entropy": self.target_entropy,
            "first_entropies": list(self.first_entropies),
            "smoothed": self.smoothed,
        }

    def load_state_dict(self, state: dict) -> None:
        t = state.get("target_entropy")
        self.target_entropy = None if t is None else float(t)
        self.first_entropies = [float(x) for x in state.get("first_entropies", [])]
        smoothed = state.get("smoothed")
        self.smoothed = None if smoothed is None else float(smoothed)


class _ZetaController(EntropyController):
    """REPO's zeta controller (docs/algorithms.md, "The zeta controller"):
    H < H*: zeta >= 0: zeta = min(zeta_max, 2 zeta) (zeta_min if it was 0)
            zeta <  0: zeta = zeta / 2, and if zeta > -zeta_min: zeta = +zeta_min
    H > H*: zeta >= 0: zeta = zeta / 2, and if zeta < zeta_min: zeta = -zeta_min
            zeta <  0: zeta = max(-zeta_max, 2 zeta)
    """

    defaults: tuple[float, float, float] = (0.0, 0.0, 0.0)  # zeta, zeta_min, zeta_max

    def __init__(self, cfg: LearnerConfig):
        super().__init__(cfg)
        zeta, zmin, zmax = self.defaults
        self.zeta = float(zeta if self.ec.zeta is None else self.ec.zeta)
        self.zeta_min = float(zmin if self.ec.zeta_min is None else self.ec.zeta_min)
        self.zeta_max = float(zmax if self.ec.zeta_max is None else self.ec.zeta_max)

    def _step(self, entropy_low: bool) -> None:
        z = self.zeta
        if entropy_low:
            if z >= 0:
                z = self.zeta_min if z == 0 else min(self.zeta_max, 2 * z)
            else:
                z = z / 2
                if z > -self.zeta_min:
                    z = self.zeta_min
        else:
            if z >= 0:
                z = z / 2
                if z < self.zeta_min:
                    z = -self.zeta_min
            else:
                z = max(-self.zeta_max, 2 * z)
        self.zeta = float(z)

    def metrics(self) -> dict[str, float]:
        return {**super().metrics(), "zeta": self.zeta}

    def state_dict(self) -> dict:
        return {**super().state_dict(), "zeta": self.zeta}

    def load_state_dict(self, state: dict) -> None:
        super().load_state_dict(state)
        self.zeta = float(state["zeta"])


@register_controller("repo_r")
class RepoR(_ZetaController):
    """REPO-R (rescale), with lp = max(logp, logp_floor) the detached current log-prob:
        A > 0:  A' = A * (1 - zeta * lp)      (rare good tokens pushed up more)
        A < 0:  A' = A * (1 + zeta * lp)      (rare bad tokens pushed down less)
    then A' is clamped to the sign of A (A' = 0 where it would flip). Equivalent to
    A' = A - beta * logp with beta = zeta * |A| (H(s) is a per-state baseline, dropped).
    """

    defaults = (1e-3, 1e-4, 0.05)

    def shape_advantages(
        self, adv: Tensor, logp: Tensor, entropy: Optional[Tensor], mask: Tensor, stats: Optional[Tensor] = None
    ) -> Tensor:
        m = mask > 0
        adv32 = adv.to(torch.float32)
        lp = torch.where(m, logp.detach().to(torch.float32), torch.zeros_like(adv32)).clamp_min(self.ec.logp_floor)
        pos = (adv32 * (1.0 - self.zeta * lp)).clamp_min(0.0)
        neg = (adv32 * (1.0 + self.zeta * lp)).clamp_max(0.0)
        shaped = torch.where(adv32 > 0, pos, torch.where(adv32 < 0, neg, torch.zeros_like(adv32)))
        return torch.where(m, shaped, adv32)


@register_controller("repo_d")
class RepoD(_ZetaController):
    """REPO-D (decorrelate; our reading). Over the minibatch's action tokens, pi = exp(logp),
    L = logp + H(s) with exact H:
        c  = sum(pi * A * L) / sum(pi * L^2)      (the beta that cancels Theorem 1's drop)
        A' = A - zeta * c * L
    c = 0 when the denominator is zero (e.g. every token deterministic).
    The two sums are `shaping_stats`; a caller holding only part of the minibatch passes their
    totals over the whole minibatch as `stats`.
    """

    defaults = (1.0, 1e-3, 10.0)
    needs_entropy = True
    minibatch_stats = True

    @staticmethod
    def _terms(adv: Tensor, logp: Tensor, entropy: Optional[Tensor], mask: Tensor):
        """(mask, A, L, pi) in float32 (float64 inputs stay float64), zero outside action tokens."""
        if entropy is None:
            raise ValueError("repo_d needs the exact entropy (controller.needs_entropy is True)")
        m = mask > 0
        dt = torch.promote_types(logp.dtype, torch.float32)
        zero = torch.zeros_like(adv, dtype=dt)
        lp = torch.where(m, logp.detach().to(dt), zero)
        L = torch.where(m, lp + entropy.detach().to(dt), zero)
        return m, torch.where(m, adv.to(dt), zero), L, torch.where(m, torch.exp(lp), zero)

    @staticmethod
    def _sums(a: Tensor, L: Tensor, pi: Tensor) -> Tensor:
        return torch.stack([(pi * a * L).sum(), (pi * L * L).sum()])

    def shaping_stats(self, adv: Tensor, logp: Tensor, entropy: Optional[Tensor], mask: Tensor) -> Tensor:
        """[sum(pi * A * L), sum(pi * L^2)] over these action tokens (float32, or float64 inputs' float64)."""
        _, a, L, pi = self._terms(adv, logp, entropy, mask)
        return self._sums(a, L, pi)

    def shape_advantages(
        self, adv: Tensor, logp: Tensor, entropy: Optional[Tensor], mask: Tensor, stats: Optional[Tensor] = None
    ) -> Tensor:
        m, a, L, pi = self._terms(adv, logp, entropy, mask)
        num, den = self._sums(a, L, pi) if stats is None else stats
        c = num / den if float(den) > 1e-12 else torch.zeros((), dtype=L.dtype, device=L.device)
        self.last_c = float(c)
        adv32 = adv.to(L.dtype)
        return torch.where(m, adv32 - self.zeta * c * L, adv32)

    def metrics(self) -> dict[str, float]:
        out = super().metrics()
        if hasattr(self, "last_c"):
            out["repo_d_c"] = self.last_c
        return out


@register_controller("adapo")
class Adapo(EntropyController):
    """ADAPO: the upper clip bound is the entropy lever (use with loss `dapo`):
        H < H*: eps_high = min(eps_high_max, eps_high * gamma)
        H > H*: eps_high = max(eps_high_min, eps_high / gamma)
    start = cfg.eps_high (0.28), eps_high_min default eps_low / 2 (our choice, not the paper's).
    """

    def __init__(self, cfg: LearnerConfig):
        super().__init__(cfg)
        self.current = float(cfg.eps_high)
        self.lo = float(cfg.eps_low / 2 if self.ec.eps_high_min is None else self.ec.eps_high_min)
        self.hi = float(self.ec.eps_high_max)

    def loss_overrides(self) -> dict[str, Any]:
        return {"eps_high": self.current}

    def _step(self, entropy_low: bool) -> None:
        g = self.ec.gamma
        if entropy_low:
            self.current = float(min(self.hi, self.current * g))
        else:
            self.current = float(max(self.lo, self.current / g))

    def metrics(self) -> dict[str, float]:
        return {**super().metrics(), "eps_high": self.current}

    def state_dict(self) -> dict:
        return {**super().state_dict(), "eps_high": self.current}

    def load_state_dict(self, state: dict) -> None:
        super().load_state_dict(state)
        self.current = float(state["eps_high"])

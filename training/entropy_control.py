"""Entropy controllers (ALGORITHMS.md, "Entropy control"): REPO-R, REPO-D, ADAPO.

Theorem 1: one policy-gradient step of size eta changes the entropy at state s by
    Delta H(s) ~= -eta * E_{a~pi}[ pi(a|s) * A(s,a) * L(s,a) ],   L = log pi(a|s) + H(s).
REPO changes the advantage, A' = A - beta * L; ADAPO moves the upper clip bound eps_high.
Both are steered once per iteration toward a target entropy H*.

Registry by name: CONTROLLERS["repo_r"] is a class; `make_controller(cfg)` builds one.
Every controller has `shape_advantages`, `eps_high`, `update`, `metrics`, `state_dict`,
`load_state_dict` and the attribute `needs_entropy`.
"""
from __future__ import annotations

from typing import Callable, Optional

import torch
from torch import Tensor

from training.config import LearnerConfig

CONTROLLERS: dict[str, type["EntropyController"]] = {}


def register_controller(name: str) -> Callable[[type], type]:
    def deco(cls: type) -> type:
        CONTROLLERS[name] = cls
        return cls
    return deco


def make_controller(cfg: LearnerConfig) -> "EntropyController":
    name = cfg.entropy_control.type
    if name not in CONTROLLERS:
        raise ValueError(f"unknown entropy controller {name!r}; registered: {sorted(CONTROLLERS)}")
    return CONTROLLERS[name](cfg)


@register_controller("none")
class EntropyController:
    """No control. Base class: holds H* and the once-per-iteration update protocol.

    update(H): on the first call with target_entropy None, H* := H and no step is taken.
    Afterwards, if adaptive and |H - H*| > tolerance, `_step(entropy_low = H < H*)`.
    """
    needs_entropy: bool = False

    def __init__(self, cfg: LearnerConfig):
        self.cfg = cfg
        self.ec = cfg.entropy_control
        self.target_entropy: Optional[float] = self.ec.target_entropy

    def shape_advantages(self, adv: Tensor, logp: Tensor, entropy: Optional[Tensor], mask: Tensor) -> Tensor:
        return adv

    def eps_high(self, default: float) -> float:
        return default

    def update(self, mean_entropy: float) -> None:
        mean_entropy = float(mean_entropy)
        if self.target_entropy is None:
            self.target_entropy = mean_entropy
            return
        # inside the band |H - H*| <= tolerance (with tolerance 0: H == H*) nothing moves
        if not self.ec.adaptive or abs(mean_entropy - self.target_entropy) <= self.ec.tolerance:
            return
        self._step(entropy_low=mean_entropy < self.target_entropy)

    def _step(self, entropy_low: bool) -> None:
        pass

    def metrics(self) -> dict[str, float]:
        return {} if self.target_entropy is None else {"target_entropy": self.target_entropy}

    def state_dict(self) -> dict:
        return {"target_entropy": self.target_entropy}

    def load_state_dict(self, state: dict) -> None:
        t = state.get("target_entropy")
        self.target_entropy = None if t is None else float(t)


class _ZetaController(EntropyController):
    """REPO's zeta controller (ALGORITHMS.md, "The zeta controller"):
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

    def shape_advantages(self, adv: Tensor, logp: Tensor, entropy: Optional[Tensor], mask: Tensor) -> Tensor:
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
    """
    defaults = (1.0, 1e-3, 10.0)
    needs_entropy = True

    def shape_advantages(self, adv: Tensor, logp: Tensor, entropy: Optional[Tensor], mask: Tensor) -> Tensor:
        if entropy is None:
            raise ValueError("repo_d needs the exact entropy (controller.needs_entropy is True)")
        m = mask > 0
        zero = torch.zeros_like(adv, dtype=torch.float32)
        adv32 = adv.to(torch.float32)
        lp = torch.where(m, logp.detach().to(torch.float32), zero)
        L = torch.where(m, lp + entropy.detach().to(torch.float32), zero)
        a = torch.where(m, adv32, zero)
        pi = torch.where(m, torch.exp(lp), zero)
        num, den = (pi * a * L).sum(), (pi * L * L).sum()
        c = num / den if float(den) > 1e-12 else torch.zeros((), dtype=torch.float32)
        self.last_c = float(c)
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

    def eps_high(self, default: float) -> float:
        return self.current

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

"""Policy-optimization objectives: SAPO and its baselines (pure torch, no Lightning).

Every objective is a callable ``objective(log_probs, old_log_probs, advantages, mask)``:

- ``log_probs``      ``[N, T]`` float, log π_θ of the sampled tokens (carries the gradient);
- ``old_log_probs``  ``[N, T]`` float, log π_old of the same tokens (a constant);
- ``advantages``     ``[N]`` float, one advantage per response (a constant);
- ``mask``           ``[N, T]`` bool, True for real response tokens.

It returns an :class:`ObjectiveOutput`: the scalar ``loss`` to minimise and a dict of
detached scalar diagnostics. Keys ending in ``_min`` / ``_max`` are aggregated across
steps and ranks by min / max, every other key by mean. The math follows ``SAPO.md``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor

from sapo_lightning.errors import ConfigError

#: Log-ratios are clamped to this range before ``exp``: an overflowed ratio whose gate
#: derivative is 0 would give inf * 0 = NaN in backward.
LOG_RATIO_CLAMP = 20.0

AGGREGATIONS = ("seq-mean-token-mean", "token-mean", "seq-mean-token-sum-norm")


@dataclass
class ObjectiveOutput:
    """What an objective returns: the loss and its detached diagnostics."""

    loss: Tensor  # scalar, carries the gradient
    metrics: dict[str, Tensor]  # name -> detached scalar


def aggregate(values: Tensor, mask: Tensor, mode: str) -> Tensor:
    """Reduce per-token values ``[N, T]`` to a scalar over the tokens where ``mask`` is True.

    - ``seq-mean-token-mean``: mean_i( Σ_t m·l / Σ_t m )  (each response weighs the same)
    - ``token-mean``: Σ_{i,t} m·l / Σ_{i,t} m  (each token weighs the same)
    - ``seq-mean-token-sum-norm``: Σ_{i,t} m·l / (N · T)  (Dr.GRPO: a constant divisor,
      T being the padded response length L_max)
    """
    masked = values * mask  # [N, T]
    if mode == "seq-mean-token-mean":
        lengths = mask.sum(-1).clamp(min=1)  # [N]
        return (masked.sum(-1) / lengths).mean()
    if mode == "token-mean":
        return masked.sum() / mask.sum().clamp(min=1)
    if mode == "seq-mean-token-sum-norm":
        return masked.sum() / mask.numel()
    check_aggregation(mode)  # raises for an unknown mode
    raise AssertionError(mode)


def check_aggregation(mode: str) -> str:
    if mode not in AGGREGATIONS:
        raise ConfigError(f"aggregation must be one of {', '.join(AGGREGATIONS)}; got {mode!r}")
    return mode


def check_positive(name: str, value: float) -> float:
    if not (isinstance(value, (int, float)) and math.isfinite(value) and value > 0):
        raise ConfigError(f"{name} must be a finite number > 0; got {value!r}")
    return float(value)


def log_ratio(log_probs: Tensor, old_log_probs: Tensor) -> Tensor:
    """z = log π_θ − log π_old, clamped to [−20, 20]."""
    return (log_probs - old_log_probs).clamp(-LOG_RATIO_CLAMP, LOG_RATIO_CLAMP)


@torch.no_grad()
def ratio_metrics(z: Tensor, ratio: Tensor, mask: Tensor) -> dict[str, Tensor]:
    """Diagnostics every objective reports: ratio mean/min/max and approx KL (k3)."""
    n_tokens = mask.sum().clamp(min=1)
    inf = torch.tensor(float("inf"), dtype=ratio.dtype, device=ratio.device)
    return {
        "ratio_mean": (ratio * mask).sum() / n_tokens,
        "ratio_min": torch.where(mask, ratio, inf).amin(),
        "ratio_max": torch.where(mask, ratio, -inf).amax(),
        "approx_kl": (((ratio - 1) - z) * mask).sum() / n_tokens,
    }


def masked_mean(values: Tensor, mask: Tensor) -> Tensor:
    """Mean of ``values`` where ``mask``; NaN when the mask is empty (skipped when logged)."""
    return (values * mask).sum() / mask.sum()


class Objective:
    """Base class: subclasses implement ``__call__`` with the signature of the module docstring."""

    def __call__(
        self, log_probs: Tensor, old_log_probs: Tensor, advantages: Tensor, mask: Tensor
    ) -> ObjectiveOutput:
        raise NotImplementedError

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in vars(self).items())
        return f"{type(self).__name__}({args})"


class SAPO(Objective):
    r"""Soft Adaptive Policy Optimization (Qwen team, arXiv 2511.20347, Eq. 5-8).

    J(θ) = E[ (1/G) Σ_i (1/|y_i|) Σ_t f_{i,t}(r_{i,t}) Â_i ],  loss = −J

    f(r) = (4/τ) σ(τ (r − 1)),   τ = τ_pos if Â_i > 0 else τ_neg,   r = exp(clamp(z, −20, 20))

    The gradient weight is w = f'(r) = 4 σ(τ(r−1)) (1 − σ(τ(r−1))) = sech²(τ(r−1)/2): w = 1 at
    r = 1 for every τ, so on-policy SAPO is the plain policy gradient; off-policy tokens are
    softly down-weighted instead of hard-clipped. No clipping, no KL term.

    Args:
        tau_pos: Gate temperature for tokens of responses with positive advantage (paper: 1.0).
        tau_neg: Gate temperature for zero or negative advantage (paper: 1.05). τ_neg > τ_pos
            makes the gate of negative updates decay faster, which the paper finds more stable.
        aggregation: How per-token losses are reduced: ``seq-mean-token-mean`` (paper),
            ``token-mean`` or ``seq-mean-token-sum-norm``.

    Diagnostics: ratio mean/min/max, approx KL, ``gate_mean`` (mean w), ``gate_pos`` /
    ``gate_neg`` (mean w over tokens with Â > 0 / Â < 0) and ``soft_clip_frac`` (share of
    tokens with w < 0.5).
    """

    def __init__(
        self, tau_pos: float = 1.0, tau_neg: float = 1.05, aggregation: str = "seq-mean-token-mean"
    ) -> None:
        self.tau_pos = check_positive("tau_pos", tau_pos)
        self.tau_neg = check_positive("tau_neg", tau_neg)
        self.aggregation = check_aggregation(aggregation)

    def __call__(
        self, log_probs: Tensor, old_log_probs: Tensor, advantages: Tensor, mask: Tensor
    ) -> ObjectiveOutput:
        z = log_ratio(log_probs, old_log_probs)  # [N, T]
        ratio = torch.exp(z)  # [N, T]
        adv = advantages.unsqueeze(-1)  # [N, 1]
        positive = adv > 0  # [N, 1]
        tau = torch.full_like(adv, self.tau_neg, dtype=ratio.dtype).masked_fill_(positive, self.tau_pos)  # [N, 1]
        sig = torch.sigmoid(tau * (ratio - 1))  # [N, T]
        f = (4 / tau) * sig  # [N, T]
        loss = aggregate(-f * adv, mask, self.aggregation)

        metrics = ratio_metrics(z, ratio, mask)
        with torch.no_grad():
            gate = 4 * sig * (1 - sig)  # w = f'(r), [N, T]
            metrics["gate_mean"] = masked_mean(gate, mask)
            metrics["gate_pos"] = masked_mean(gate, mask & positive)
            metrics["gate_neg"] = masked_mean(gate, mask & (adv < 0))
            metrics["soft_clip_frac"] = masked_mean((gate < 0.5).to(gate.dtype), mask)
        return ObjectiveOutput(loss, metrics)

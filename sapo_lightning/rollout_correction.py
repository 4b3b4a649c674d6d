"""Rollout correction: importance weights from the sampler's distribution π_rollout to π_old (pure torch).

The sampler and the update need not compute a token's log-prob alike: a cached decode against a full
forward, bf16 against float32, another kernel or another engine. The tokens come from π_rollout (the
log-probs stored at sampling), while the objective takes its ratio against π_old (the same weights,
scored by the update's own path: ``model.recompute_old_log_probs``). With ρ = π_old / π_rollout per
token, a correction weighs or drops each token's loss (verl's and TRL's TIS and MIS; docs/math.md):

- ``tis`` (truncated importance sampling): weight w = min(ρ, C), the mask unchanged;
- ``mis`` (masked importance sampling): weight w = ρ where ρ ≤ C; tokens with ρ > C leave the loss's mask.

At ``level: sequence`` ρ is the response's ratio, exp(Σ_t log ρ_t) over its tokens, on every token of it.
The weights are constants (no gradient); the module multiplies them into the advantages.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import NamedTuple

import torch
from torch import Tensor

from sapo_lightning.checks import check_choice, check_number, fail

KINDS = ("tis", "mis")
LEVELS = ("token", "sequence")
#: log ρ is clamped to this range before ``exp``, as the objectives clamp their log-ratio
LOG_RATIO_CLAMP = 20.0


class Correction(NamedTuple):
    """A correction's effect on a rollout batch."""

    weights: Tensor  # [N, T] float, w per token, 0 off the returned mask
    mask: Tensor  # [N, T] bool, the tokens the loss keeps
    metrics: dict[str, Tensor]  # detached scalars


@dataclass
class RolloutCorrection:
    """Truncated (``tis``) or masked (``mis``) importance sampling from π_rollout to π_old.

    Args:
        kind: ``tis``: weight each token's loss by min(ρ, cap); ``mis``: drop the tokens (or whole
            responses) with ρ > cap and weight the others by ρ.
        level: ``token``: ρ per token; ``sequence``: the product of a response's token ratios.
        cap: C, the bound on ρ (>= 1: an exact ratio of 1 is never cut).

    Diagnostics: ``rollout_is_mean`` (mean weight over the sampled tokens, 0 where dropped),
    ``rollout_is_clipped_frac`` (share of sampled tokens whose ρ > C: truncated or dropped) and
    ``rollout_ratio_max`` (the largest ρ before the cap).
    """

    kind: str = "tis"
    level: str = "token"
    cap: float = 2.0

    def check(self) -> RolloutCorrection:
        """This correction, its fields checked (ConfigError naming the field otherwise)."""
        check_choice("rollout_correction.kind", self.kind, KINDS)
        check_choice("rollout_correction.level", self.level, LEVELS)
        self.cap = check_number("rollout_correction.cap", self.cap, 1)
        return self

    @torch.no_grad()
    def __call__(self, old_log_probs: Tensor, rollout_log_probs: Tensor, mask: Tensor) -> Correction:
        """Weights and mask from π_old's and π_rollout's log-probs ``[N, T]`` of the sampled tokens ``mask``."""
        log_rho = (old_log_probs - rollout_log_probs) * mask  # [N, T]
        if self.level == "sequence":
            log_rho = log_rho.sum(-1, keepdim=True).expand_as(log_rho)  # [N, T], log ρ_i on every token of i
        rho = log_rho.clamp(-LOG_RATIO_CLAMP, LOG_RATIO_CLAMP).exp()  # [N, T]
        over = mask & (rho > self.cap)
        if self.kind == "tis":
            keep, weights = mask, rho.clamp(max=self.cap)
        else:
            keep, weights = mask & ~over, rho
        weights = weights.masked_fill(~keep, 0.0)
        n_tokens = mask.sum()
        metrics = {
            "rollout_is_mean": weights.sum() / n_tokens,
            "rollout_is_clipped_frac": over.sum() / n_tokens,
            "rollout_ratio_max": rho.masked_fill(~mask, 0.0).amax(),
        }
        return Correction(weights, keep, metrics)


def check_correction(correction: RolloutCorrection | dict | None) -> RolloutCorrection | None:
    """A correction from the CLI (a RolloutCorrection) or from Python (a mapping of its fields), checked; None: none."""
    if isinstance(correction, dict):
        unknown = sorted(set(correction) - set(RolloutCorrection.__dataclass_fields__))
        if unknown:
            fail("rollout_correction fields", f"among {', '.join(RolloutCorrection.__dataclass_fields__)}", unknown)
        correction = RolloutCorrection(**correction)
    return None if correction is None else correction.check()

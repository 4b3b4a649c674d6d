"""What the updates of a rollout batch read: π_old's log-probs (the sampled ones, or recomputed by the update's own
path), the rollout correction's weighted advantages and loss mask, and the mismatch between sampler and update."""

from __future__ import annotations

import math
from typing import Any, NamedTuple

import torch
from torch import Tensor

from sapo_lightning.checks import fail
from sapo_lightning.loop.slices import update_slices
from sapo_lightning.objectives import k3_kl, masked_mean
from sapo_lightning.rollout import Rollout, take, take_rollout
from sapo_lightning.rollout_correction import RolloutCorrection, check_correction

#: the mismatch diagnostics, measured at the first optimizer step of each rollout batch (NaN, so skipped, at the others)
MISMATCH = ("mismatch_kl", "mismatch_ratio_outside")


class UpdateData(NamedTuple):
    """The rows an update reads, sliced together by :meth:`take`."""

    queries: Any
    rollout: Rollout  # as sampled: ``log_probs`` are π_rollout's, ``mask`` the sampled tokens
    advantages: Tensor  # [N], or [N, T] weighted by a rollout correction
    old_log_probs: Tensor  # [N, T] π_old's
    mask: Tensor  # [N, T] bool, the loss's tokens: the sampled ones less any a masked correction drops
    ref_log_probs: Tensor | None  # [N, T] π_ref's, or None

    def take(self, rows: slice) -> UpdateData:
        return UpdateData(take(self.queries, rows), take_rollout(self.rollout, rows),
                          *(take(values, rows) for values in self[2:]))


class OldLogProbs:
    """π_old's log-probs and the rollout correction of each rollout batch, before its first update.

    Args:
        host: The module: its π_old (``frozen``), ``mini_batches`` and ``micro_batch_size``.
        recompute: Score the rollout with π_old, under no_grad, in the update's precision and micro-batches
            (its first step's ratio is then exactly 1 when π_old = π_θ); False: the sampled log-probs stand for it.
        correction: Weigh or drop tokens by π_old / π_rollout (needs ``recompute``); None: no correction.
    """

    def __init__(self, host: Any, recompute: bool, correction: RolloutCorrection | dict | None) -> None:
        correction = check_correction(correction)
        if correction is not None and not recompute:
            fail("recompute_old_log_probs", "true with a rollout_correction (it weighs π_old's recomputed log-probs "
                 "against the sampled ones)", recompute)
        self.host, self.recompute, self.correction = host, recompute, correction

    @torch.no_grad()
    def prepare(self, queries: Any, rollout: Rollout, advantages: Tensor,
                ref_log_probs: Tensor | None) -> tuple[UpdateData, dict[str, Tensor]]:
        """The updates' data for a rollout batch, and the correction's diagnostics."""
        old = rollout.log_probs  # [N, T]
        if self.recompute:
            host = self.host
            chunks = update_slices(len(rollout.responses), host.mini_batches, host.micro_batch_size)
            old = host.frozen.old_log_probs(queries, rollout, chunks)
        if self.correction is None:
            return UpdateData(queries, rollout, advantages, old, rollout.mask, ref_log_probs), {}
        weights, mask, metrics = self.correction(old, rollout.log_probs, rollout.mask)
        return UpdateData(queries, rollout, advantages.unsqueeze(-1) * weights, old, mask, ref_log_probs), metrics


@torch.no_grad()
def mismatch_diagnostics(log_probs: Tensor, rollout: Rollout, measure: bool) -> dict[str, Tensor]:
    """How far the update's log-probs ``[N, T]`` are from the sampler's over the sampled tokens: the k3 estimate of
    KL(π_rollout ‖ π_θ) and the share of tokens with π_θ / π_rollout outside [0.9, 1.1]; NaN unless ``measure``."""
    if not measure:
        return {name: torch.tensor(math.nan, device=log_probs.device) for name in MISMATCH}
    ratio = (log_probs - rollout.log_probs).exp()  # [N, T]
    outside = (ratio < 0.9) | (ratio > 1.1)
    return {"mismatch_kl": masked_mean(k3_kl(rollout.log_probs, log_probs), rollout.mask),
            "mismatch_ratio_outside": masked_mean(outside.float(), rollout.mask)}

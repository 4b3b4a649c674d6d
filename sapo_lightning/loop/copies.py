"""π_old and π_ref as one object: the module asks it to build, shard, refresh and evaluate them."""

from __future__ import annotations

from contextlib import AbstractContextManager
from typing import Any

import torch
from torch import Tensor, nn

from sapo_lightning.loop.frozen import evaluating, freeze, refresh
from sapo_lightning.loop.sharding import data_parallel_mesh, shard_with_copies
from sapo_lightning.loop.slices import micro_batch_slices
from sapo_lightning.policies import Policy
from sapo_lightning.rollout import Rollout, take


class FrozenPolicies:
    """π_old and π_ref of a module's live policy: built, sharded, refreshed and evaluated here.

    The copies are the host module's ``old_policy`` and ``ref_policy`` attributes, so that their
    state-dict keys (``old_policy.*``, ``ref_policy.*``) are the checkpoint's. π_old is a frozen copy
    unless :meth:`keep_old_copy` says it is refreshed before every rollout (then it is the live
    policy); π_ref exists only with ``reference`` (a KL penalty).

    Args:
        host: The module holding ``policy``, ``old_policy`` and ``ref_policy``.
        reference: Keep a reference copy of the initial policy.
    """

    def __init__(self, host: nn.Module, reference: bool) -> None:
        self.host = host
        self.reference = reference
        self.keep_old = True  # until OldPolicySync, which a fit requires, decides
        self.sharded = False
        host.old_policy = None
        host.ref_policy = None

    def keep_old_copy(self, keep: bool) -> None:
        self.keep_old = keep

    def build(self, mesh=None) -> None:
        """Make the copies a fit needs (evaluation samples from π_θ only), then shard all three over ``mesh``;
        before any strategy wraps the policy, and before a checkpoint is restored into the copies."""
        host = self.host
        try:
            fitting = host.trainer.state.fn == "fit"
        except RuntimeError:  # not attached to a Trainer: built from Python, for training
            fitting = True
        if fitting and self.keep_old and host.old_policy is None:
            host.old_policy = freeze(host.policy)
        if fitting and self.reference and host.ref_policy is None:
            host.ref_policy = freeze(host.policy)
        if mesh is not None and not self.sharded:
            host.old_policy, host.ref_policy = shard_with_copies(
                host.policy, (host.old_policy, host.ref_policy), data_parallel_mesh(mesh))
            self.sharded = True

    def sync_old(self) -> None:
        """π_old ← π_θ."""
        refresh(self.host.old_policy, self.host.policy)

    def behaviour(self) -> AbstractContextManager[Policy]:
        """π_old, to sample from."""
        return evaluating(self.host.old_policy, self.host.policy)

    @torch.no_grad()
    def reference_log_probs(self, queries: Any, rollout: Rollout, micro_batch_size: int | None) -> Tensor | None:
        """π_ref's log-probs ``[N, T]`` of the rollout's responses, micro-batch by micro-batch (None: no reference)."""
        if self.host.ref_policy is None:
            return None
        with evaluating(self.host.ref_policy, self.host.policy) as reference:
            return log_probs(reference, queries, rollout, micro_batch_slices(len(rollout.responses), micro_batch_size))

    @torch.no_grad()
    def old_log_probs(self, queries: Any, rollout: Rollout, chunks: list[slice]) -> Tensor:
        """π_old's log-probs ``[N, T]`` of the rollout's responses, scored chunk by chunk (the rows of ``chunks``)."""
        with self.behaviour() as behaviour:
            return log_probs(behaviour, queries, rollout, chunks)

    def eval(self) -> None:
        """Full copies stay in eval mode whatever the module's mode."""
        for frozen in (self.host.old_policy, self.host.ref_policy):
            if isinstance(frozen, Policy):
                frozen.eval()


def log_probs(policy: Policy, queries: Any, rollout: Rollout, chunks: list[slice]) -> Tensor:
    """``policy``'s log-probs ``[N, T]`` of the rollout's responses, one ``score`` per chunk of rows."""
    return torch.cat([policy.score(take(queries, rows), rollout.responses[rows],
                                   attention=take(rollout.attention, rows)).log_probs for rows in chunks])

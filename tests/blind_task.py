"""Test-only task: the seed task, blind to some queries, so that some groups' rewards are all equal."""

from __future__ import annotations

import torch

from sapo_lightning.tasks import FixedTarget, Rewards


class Blind(FixedTarget):
    """FixedTarget whose reward is 0 for every response to a query with first feature <= ``sighted``.

    Such a query's group has all-equal rewards (advantages 0, no gradient): with ``sighted`` 0
    about half the groups, with a large value every one. ``reward_calls`` counts the training
    rewards computed (one per sampling round; evaluation uses ``reward`` alone).

    Args:
        sighted: Queries whose first feature is above this are rewarded as in FixedTarget.
    """

    def __init__(self, target: list[int], vocab_size: int = 10, sighted: float = 0.0) -> None:
        super().__init__(target, vocab_size)
        self.sighted = sighted
        self.reward_calls = 0

    def reward(self, queries: torch.Tensor, responses: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        return torch.where(queries[:, 0] > self.sighted, super().reward(queries, responses, mask), 0.0)  # [N]

    def rewards(self, queries: torch.Tensor, rollout) -> Rewards:
        self.reward_calls += 1
        return super().rewards(queries, rollout)

"""DAPO's dynamic sampling: the rollout batch keeps only groups whose rewards differ, from as many draws as it takes.

A group whose G rewards are all equal has advantages exactly 0: it adds no gradient, only
noise to the batch's size. The module draws more prompts (a round of B more groups) while
fewer than B informative groups are kept, up to ``max_sampling_rounds``; :func:`keep_informative`
then makes the batch trained on from those rounds.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import torch
from torch import Tensor

from sapo_lightning.advantages import all_equal
from sapo_lightning.policies import Rollout, concat_queries, concat_rollouts, take, take_rollout
from sapo_lightning.tasks import Rewards


class Draw(NamedTuple):
    """One sampling round: groups of G responses to B queries, and their rewards."""

    queries: Any  # [B * G, ...], each query G times in a row
    rollout: Rollout  # [B * G, T] each
    rewards: Rewards  # [B * G] each


def informative(draw: Draw, group_size: int) -> Tensor:
    """``[B]`` bool: the group's rewards are not all equal (it carries a gradient)."""
    return ~all_equal(draw.rewards.total.view(-1, group_size))


def keep_informative(draws: list[Draw], batch_size: int, group_size: int, pad_token: int) -> tuple[Draw, int]:
    """The batch trained on and how many informative groups it holds.

    The batch is the first ``batch_size`` informative groups in draw order; when the rounds hold
    fewer, the first non-informative groups drawn fill the remaining slots (their advantages are
    exactly 0: no gradient, while the batch keeps its B·G rows, so mini-batches and micro-batches
    still divide it).
    """
    flags = [(d, g, bool(flag)) for d, draw in enumerate(draws) for g, flag in enumerate(informative(draw, group_size))]
    kept = [(d, g) for d, g, flag in flags if flag][:batch_size]
    picked = kept + [(d, g) for d, g, flag in flags if not flag][: batch_size - len(kept)]
    if picked == [(0, g) for g in range(batch_size)]:  # the first round, whole and in order
        return draws[0], len(kept)
    rows = [(draws[d], slice(g * group_size, (g + 1) * group_size)) for d, g in picked]
    rewards = Rewards(
        torch.cat([draw.rewards.total[r] for draw, r in rows]),
        {name: torch.cat([draw.rewards.terms[name][r] for draw, r in rows]) for name in draws[0].rewards.terms},
    )
    queries = concat_queries([take(draw.queries, r) for draw, r in rows])
    rollout = concat_rollouts([take_rollout(draw.rollout, r) for draw, r in rows], pad_token)
    return Draw(queries, rollout, rewards), len(kept)

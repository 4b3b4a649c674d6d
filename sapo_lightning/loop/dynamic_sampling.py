"""DAPO's dynamic sampling: the rollout batch keeps only groups whose rewards differ, from as many draws as it takes.

A group whose G rewards are all equal has advantages exactly 0: it adds no gradient, only
noise to the batch's size. :class:`GroupFilter` draws more prompts (a round of B more groups) while
fewer than B informative groups are kept on any rank, up to ``max_sampling_rounds``;
:func:`keep_informative` then makes the batch trained on from those rounds.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

import torch
from torch import Tensor

from sapo_lightning.advantages import all_equal
from sapo_lightning.checks import check_int, fail
from sapo_lightning.rollout import Rollout, concat_queries, concat_rollouts, take, take_rollout
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


class GroupFilter:
    """Dynamic sampling of one rollout batch: more rounds of groups until B informative ones are kept.

    Args:
        group_size: Responses per query (G).
        max_rounds: Most sampling rounds, the first included (1: filter, never draw more).
        pad_token: The policy's pad token, to join rollouts of different lengths.
        enabled: Whether the module filters (``filter_groups``); a group of one response cannot be filtered.
    """

    def __init__(self, group_size: int, max_rounds: int, pad_token: int, enabled: bool = True) -> None:
        if enabled and group_size < 2:
            fail("filter_groups", f"false with group_size={group_size} (a group of one response has no spread "
                 "to filter on)", enabled)
        self.group_size, self.enabled = group_size, enabled
        self.max_rounds = check_int("max_sampling_rounds", max_rounds, 1)
        self.pad_token = pad_token

    def fill(self, first: Draw, refill: Callable[[int], Any], sample: Callable[[Any], tuple[Any, Rollout]],
             rewards: Callable[[Any, Rollout], Rewards], strategy: Any) -> tuple[Draw, dict[str, Tensor]]:
        """The batch trained on and its counts, from ``first`` and as many more rounds as it takes: round r's
        queries are ``refill(r)``, sampled by ``sample`` and rewarded by ``rewards``. Every rank draws as many
        rounds (sampling may be collective, as under FSDP), until the Lightning ``strategy`` finds no rank short."""
        batch_size = len(first.queries) // self.group_size
        device = first.rewards.total.device
        draws = [first]
        while len(draws) < self.max_rounds:
            short = torch.tensor(float(self.found(draws) < batch_size), device=device)
            if strategy.reduce(short, reduce_op="sum").item() == 0:
                break
            queries, rollout = sample(refill(len(draws)))
            draws.append(Draw(queries, rollout, rewards(queries, rollout)))
        kept, informative_groups = keep_informative(draws, batch_size, self.group_size, self.pad_token)
        counts = torch.tensor([batch_size * len(draws), informative_groups, len(draws)], dtype=torch.float32,
                              device=device)
        return kept, dict(zip(("groups_drawn", "groups_kept", "sampling_rounds"), counts.unbind())) | {
            "reward_drawn": first.rewards.total.mean()}

    def found(self, draws: list[Draw]) -> int:
        """Informative groups in ``draws``."""
        return sum(int(informative(draw, self.group_size).sum()) for draw in draws)

"""Group-relative advantages (GRPO, paper Eq. 2)."""

from __future__ import annotations

from typing import NamedTuple

import torch
from torch import Tensor

from sapo_lightning.checks import check_choice, fail

SCALES = ("group", "none")
EPS = 1e-6


class GroupAdvantages(NamedTuple):
    advantages: Tensor  # [N]
    zero_signal: Tensor  # [N // group_size] bool: the group's rewards are all equal
    std: Tensor  # [N // group_size] the group's reward std (Bessel; NaN for a group of one)


def group_advantages(rewards: Tensor, group_size: int, scale: str = "group") -> Tensor:
    """Advantages of ``rewards`` ``[N]`` laid out in contiguous groups of ``group_size``.

    ``scale="group"``: Â_i = (R_i − mean_g R) / (std_g R + 1e-6), std with Bessel's correction.
    ``scale="none"`` (Dr.GRPO): Â_i = R_i − mean_g R.
    A group whose rewards are all equal gets exactly zero, also in float32 where
    ``R − mean`` would otherwise leave rounding noise divided by a tiny std.
    """
    return group_advantages_with_stats(rewards, group_size, scale).advantages


def group_advantages_with_stats(rewards: Tensor, group_size: int, scale: str = "group") -> GroupAdvantages:
    """:func:`group_advantages` plus which groups carry no signal (all rewards equal) and each group's std."""
    check_group(group_size, scale)
    if rewards.ndim != 1 or rewards.numel() % group_size:
        raise ValueError(f"rewards must be [N] with N a multiple of group_size={group_size}; "
                         f"got {tuple(rewards.shape)}")
    grouped = rewards.view(-1, group_size)  # [B, G]
    zero_signal = all_equal(grouped)  # [B]
    centered = torch.where(zero_signal.unsqueeze(-1), 0.0, grouped - grouped.mean(-1, keepdim=True))  # [B, G]
    std = grouped.std(-1)  # [B]
    if scale == "group":
        centered = centered / (std.unsqueeze(-1) + EPS)
    return GroupAdvantages(centered.reshape(-1), zero_signal, std)


def all_equal(grouped: Tensor) -> Tensor:
    """``[B]`` bool: the rewards of each group ``[B, G]`` are all equal (its advantages are all 0: no gradient)."""
    return (grouped == grouped[:, :1]).all(-1)


def check_group(group_size: int, scale: str) -> None:
    """Refuse a group size or scale the advantage cannot be computed with."""
    check_choice("advantage_scale", scale, SCALES)
    minimum = 2 if scale == "group" else 1  # a std needs two rewards
    if not (isinstance(group_size, int) and not isinstance(group_size, bool) and group_size >= minimum):
        fail("group_size", f"an integer >= {minimum} with advantage_scale={scale!r}", group_size)

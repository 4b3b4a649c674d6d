"""Left padding of tokenized prompts
(the batch type itself, :class:`~sapo_lightning.rollout.Prompts`, is the core's)."""

from __future__ import annotations

import torch
from torch import Tensor


def pad_left(sequences: list[list[int]], pad_id: int) -> tuple[Tensor, Tensor]:
    """Token id lists as ids ``[B, P]`` (P the longest, ``pad_id`` before shorter ones) and mask ``[B, P]``."""
    width = max(map(len, sequences), default=0)
    ids = torch.full((len(sequences), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(sequences), width), dtype=torch.long)
    for row, sequence in enumerate(sequences):
        if sequence:  # an empty slice [-0:] would be the whole row
            ids[row, -len(sequence) :] = torch.tensor(sequence, dtype=torch.long)
            mask[row, -len(sequence) :] = 1
    return ids, mask

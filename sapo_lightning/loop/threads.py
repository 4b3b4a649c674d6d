"""torch's intra-op threads for a run: one for a tiny policy, torch's own count for a real model.

A tiny policy's ops are too small to split across cores; on a machine whose cores are busy with
other work, torch's threads wait on each other at every op, and the shipped demos ran 7-18x slower
with torch's default than with one thread (docs/benchmarks.md#threads). A real model's matrix
products do gain from every core. ``auto`` tells them apart by parameter count.
"""

from __future__ import annotations

import os
from typing import Literal

import torch
from torch import nn

from sapo_lightning.checks import check_int

#: Models with fewer parameters run on one thread under ``auto``: the shipped demos have 1.8k-138k,
#: SmolLM2-135M has 135M (docs/benchmarks.md#threads).
SMALL_MODEL = 10_000_000

Threads = int | Literal["auto"]


def choose_threads(threads: Threads, parameters: int) -> int | None:
    """The thread count to set for a model of ``parameters`` parameters, or None to leave torch's.

    An integer is used as given; ``auto`` is one thread under :data:`SMALL_MODEL` parameters and
    torch's count otherwise, and leaves it alone when ``OMP_NUM_THREADS`` is set.
    """
    if threads != "auto":
        return check_int("threads", threads, 1)
    if os.environ.get("OMP_NUM_THREADS"):
        return None
    return 1 if parameters < SMALL_MODEL else None


def set_threads(threads: Threads, model: nn.Module) -> None:
    """Set torch's intra-op thread count for training or evaluating ``model`` (see :func:`choose_threads`)."""
    count = choose_threads(threads, sum(p.numel() for p in model.parameters()))
    if count is not None:
        torch.set_num_threads(count)

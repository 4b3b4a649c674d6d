"""Aggregation of per-update diagnostics across steps and ranks."""

from __future__ import annotations

import torch
from torch import Tensor
from torchmetrics import Metric


class Diagnostics(Metric):
    """Running mean, min and max of K named scalars, synchronised across ranks.

    One ``update`` takes all K values stacked in one tensor, ``[K]`` for one step or
    ``[S, K]`` for S steps at once, so a caller can batch many steps into one metric call
    (the call itself costs more than a small training step's diagnostics). ``compute``
    reports each name by its suffix: ``*_min`` the minimum, ``*_max`` the maximum, any other
    the mean over all steps. Non-finite values (a mean over an empty selection) are skipped;
    a name with no finite value is left out of the result.
    """

    full_state_update = False

    def __init__(self, names: list[str]) -> None:
        super().__init__()
        self.names = list(names)
        k = len(self.names)
        self.add_state("total", torch.zeros(k, dtype=torch.float64), dist_reduce_fx="sum")
        self.add_state("count", torch.zeros(k, dtype=torch.float64), dist_reduce_fx="sum")
        self.add_state("low", torch.full((k,), float("inf"), dtype=torch.float64), dist_reduce_fx="min")
        self.add_state("high", torch.full((k,), float("-inf"), dtype=torch.float64), dist_reduce_fx="max")
        self._reduce = torch.tensor([2 if n.endswith("_max") else 1 if n.endswith("_min") else 0 for n in names])

    def update(self, values: Tensor) -> None:  # values: [K] or [S, K]
        values = values.to(torch.float64).view(-1, len(self.names))  # [S, K]
        finite = torch.isfinite(values)
        self.total += torch.where(finite, values, 0.0).sum(0)
        self.count += finite.sum(0)
        self.low = torch.minimum(self.low, torch.where(finite, values, float("inf")).amin(0))
        self.high = torch.maximum(self.high, torch.where(finite, values, float("-inf")).amax(0))

    def compute(self) -> dict[str, Tensor]:
        reduce = self._reduce.to(self.total.device)
        value = torch.where(reduce == 2, self.high, torch.where(reduce == 1, self.low, self.total / self.count))
        keep = (self.count > 0).tolist()
        return {name: v for name, v, k in zip(self.names, value.float(), keep) if k}

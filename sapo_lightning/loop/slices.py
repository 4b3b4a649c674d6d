"""How a rollout batch's rows are cut: into mini-batches (one optimizer step each) and micro-batches (one pass each)."""

from __future__ import annotations

from torch import Tensor

from sapo_lightning.objectives import micro_batch_share


def micro_batch_slices(n: int, size: int | None) -> list[slice]:
    """Consecutive row slices of at most ``size`` rows covering ``n`` rows (None: one slice, the whole)."""
    if size is None or size >= n:
        return [slice(None)]
    return [slice(start, start + size) for start in range(0, n, size)]


def mini_batch_slices(n: int, parts: int) -> list[slice]:
    """The ``parts`` consecutive, equal row slices of ``n`` rows (each of whole groups when ``parts`` divides
    the batch's queries)."""
    if parts == 1:
        return [slice(None)]
    size = n // parts
    return [slice(start, start + size) for start in range(0, n, size)]


def update_slices(n: int, parts: int, size: int | None) -> list[slice]:
    """The rows of every micro-batch of every mini-batch, in order, as slices of the whole batch's ``n`` rows."""
    slices = []
    for rows in mini_batch_slices(n, parts):
        start, stop, _ = rows.indices(n)
        slices += [slice(start + chunk.indices(stop - start)[0], start + chunk.indices(stop - start)[1])
                   for chunk in micro_batch_slices(stop - start, size)]
    return slices


#: per mini-batch: its rows, its micro-batches' rows within it, and each one's weight in its loss
Plan = list[tuple[slice, list[slice], list[Tensor | None]]]


def update_plan(mask: Tensor, parts: int, size: int | None, aggregation: str) -> Plan:
    """The :data:`Plan` of a rollout batch with loss mask ``mask`` ``[N, T]`` cut into ``parts`` mini-batches."""
    return [(rows, *micro_batch_plan(mask[rows], size, aggregation)) for rows in mini_batch_slices(len(mask), parts)]


def micro_batch_plan(mask: Tensor, size: int | None, aggregation: str) -> tuple[list[slice], list[Tensor | None]]:
    """A mini-batch's micro-batch slices and each one's weight in its loss (``[None]``: one chunk, the whole),
    from its response mask ``[n, T]``."""
    chunks = micro_batch_slices(len(mask), size)
    if len(chunks) == 1:
        return chunks, [None]
    return chunks, [micro_batch_share(aggregation, mask[rows], mask) for rows in chunks]

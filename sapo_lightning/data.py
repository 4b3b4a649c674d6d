"""The DataModule: per-step query batches, one reproducible stream per rank."""

from __future__ import annotations

import functools
from collections.abc import Iterator
from typing import Any

import torch
from lightning.pytorch import LightningDataModule
from torch.utils.data import DataLoader, IterableDataset

from sapo_lightning.checks import check_int
from sapo_lightning.seeds import REFILL_STREAM, ROLLOUT_STREAM, derive_seed
from sapo_lightning.tasks import Task


class QueryStream(IterableDataset):
    """Endless batches ``{"queries": ..., "index": i, "seed": s, "refill": f}`` for i = start, start+1, ...

    Batch i is a pure function of (seed, rank, world size, i): the task draws its queries
    (:meth:`Task.train_batch`), and ``seed`` seeds the rollout sampling of that batch. Any
    restart, same data. ``refill(round)`` draws more queries for batch i (the module's dynamic
    sampling asks for them when groups carry no signal): :meth:`refill`.
    """

    def __init__(self, task: Task, batch_size: int, seed: int, rank: int, world_size: int, start: int = 0) -> None:
        self.task, self.batch_size, self.seed, self.start = task, batch_size, seed, start
        self.rank, self.world_size = rank, world_size

    def __iter__(self) -> Iterator[dict]:
        index = self.start
        while True:
            yield {
                "queries": self.task.train_batch(index, self.batch_size, self.seed, self.rank, self.world_size),
                "index": index,
                "seed": derive_seed(self.seed, self.rank, index, ROLLOUT_STREAM),
                "refill": functools.partial(self.refill, index),
            }
            index += 1

    def refill(self, index: int, round: int) -> Any:
        """``batch_size`` more queries for batch ``index``, sampling round ``round`` >= 1: the task's batch
        ``index`` under a seed of its own per round, so a pure function of (seed, rank, index, round)."""
        seed = derive_seed(self.seed, REFILL_STREAM, round)
        return self.task.train_batch(index, self.batch_size, seed, self.rank, self.world_size)


class QueryDataModule(LightningDataModule):
    """Training batches from the task, a fixed validation set and a held-out test set.

    Each training step takes ``batch_size`` queries per rank from the task; each query then
    gets ``model.group_size`` sampled responses. Validation (and ``test``) decode greedily on
    the task's fixed evaluation queries (the same set on every rank, sharded by Lightning).

    The position in the training stream is this module's checkpointed state, so a resumed
    run continues with the batch after the last one it trained on.

    Args:
        task: What to learn: queries and rewards (class_path + init_args).
        batch_size: Queries per optimizer step and rank (seed: 8).
        val_size: Number of fixed validation queries, and of test queries (a task with its own
            validation set may use fewer).
        val_batch_size: Queries per validation batch; null: all at once.
        seed: Seed of the query and rollout streams; None takes torch's initial seed, which
            ``seed_everything`` set.
    """

    def __init__(
        self, task: Task, batch_size: int = 8, val_size: int = 64, val_batch_size: int | None = None,
        seed: int | None = None,
    ) -> None:
        super().__init__()
        self.task = task
        self.batch_size = check_int("batch_size", batch_size, 1)
        self.val_size = check_int("val_size", val_size, 1)
        self.val_batch_size = check_int("val_batch_size", val_batch_size, 1, allow_none=True)
        self.seed = check_int("seed", seed, 0, allow_none=True)
        self.next_batch = 0  # index of the next training batch

    def setup(self, stage: str) -> None:
        if self.seed is None:
            self.seed = torch.initial_seed()

    def train_dataloader(self) -> DataLoader:
        rank, world = (self.trainer.global_rank, self.trainer.world_size) if self.trainer else (0, 1)
        stream = QueryStream(self.task, self.batch_size, self.seed, rank, world, self.next_batch)
        return DataLoader(stream, batch_size=None)

    def on_after_batch_transfer(self, batch: Any, dataloader_idx: int) -> Any:
        if self.trainer is not None and self.trainer.training:
            self.next_batch = batch["index"] + 1
        return batch

    def state_dict(self) -> dict[str, Any]:
        return {"next_batch": self.next_batch, "seed": self.seed}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.next_batch = state_dict["next_batch"]
        self.seed = state_dict.get("seed", self.seed)  # a run seeded at random resumes on its own stream

    def val_dataloader(self) -> DataLoader:
        return self._eval_dataloader("val")

    def test_dataloader(self) -> DataLoader:
        return self._eval_dataloader("test")

    def _eval_dataloader(self, stage: str) -> DataLoader:
        rows = self.task.eval_rows(stage, self.val_size, self.seed)
        collate = self.task.collate
        return DataLoader(rows, batch_size=self.val_batch_size or len(rows),
                          collate_fn=lambda r: {"queries": collate(r)})

"""The DataModule: per-step query batches, one reproducible stream per rank."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import torch
from lightning.pytorch import LightningDataModule
from torch.utils.data import DataLoader, IterableDataset, TensorDataset

from sapo_lightning.checks import check_int
from sapo_lightning.tasks import Task

_MASK = (1 << 63) - 1


def derive_seed(*keys: int) -> int:
    """Mix integer keys (seed, rank, step, stream...) into one 63-bit seed (splitmix64)."""
    x = 0x9E3779B97F4A7C15
    for key in keys:
        x = (x ^ (key & 0xFFFFFFFFFFFFFFFF)) * 0xBF58476D1CE4E5B9 & 0xFFFFFFFFFFFFFFFF
        x = (x ^ (x >> 31)) * 0x94D049BB133111EB & 0xFFFFFFFFFFFFFFFF
        x ^= x >> 29
    return x & _MASK


QUERY_STREAM, ROLLOUT_STREAM, VALIDATION_STREAM, TEST_STREAM = 0, 1, 2, 3


class QueryStream(IterableDataset):
    """Endless batches ``{"queries": [B, D], "index": i, "seed": s}`` for i = start, start+1, ...

    Batch i is a pure function of (seed, rank, i): the queries come from their own generator,
    and ``seed`` seeds the rollout sampling of that batch. Any rank, any restart, same data.
    """

    def __init__(self, task: Task, batch_size: int, seed: int, rank: int, start: int = 0) -> None:
        self.task, self.batch_size, self.seed, self.rank, self.start = task, batch_size, seed, rank, start

    def __iter__(self) -> Iterator[dict]:
        generator = torch.Generator()
        index = self.start
        while True:
            generator.manual_seed(derive_seed(self.seed, self.rank, index, QUERY_STREAM))
            yield {
                "queries": self.task.sample_queries(self.batch_size, generator),
                "index": index,
                "seed": derive_seed(self.seed, self.rank, index, ROLLOUT_STREAM),
            }
            index += 1


class QueryDataModule(LightningDataModule):
    """Random queries for training, a fixed validation set and a held-out test set.

    Each training step draws ``batch_size`` fresh queries per rank; each query then gets
    ``model.group_size`` sampled responses. Validation (and ``test``) decode greedily on
    ``val_size`` queries drawn once from the seed (the same set on every rank, sharded by
    Lightning); the test queries come from a stream of their own.

    The position in the training stream is this module's checkpointed state, so a resumed
    run continues with the batch after the last one it trained on.

    Args:
        task: What to learn: queries and rewards (class_path + init_args).
        batch_size: Queries per optimizer step and rank (seed: 8).
        val_size: Number of fixed validation queries, and of test queries.
        seed: Seed of the query and rollout streams; None takes torch's initial seed, which
            ``seed_everything`` set.
    """

    def __init__(self, task: Task, batch_size: int = 8, val_size: int = 64, seed: int | None = None) -> None:
        super().__init__()
        self.task = task
        self.batch_size = check_int("batch_size", batch_size, 1)
        self.val_size = check_int("val_size", val_size, 1)
        self.seed = check_int("seed", seed, 0, allow_none=True)
        self.next_batch = 0  # index of the next training batch

    def setup(self, stage: str) -> None:
        if self.seed is None:
            self.seed = torch.initial_seed()

    def train_dataloader(self) -> DataLoader:
        rank = self.trainer.global_rank if self.trainer else 0
        return DataLoader(QueryStream(self.task, self.batch_size, self.seed, rank, self.next_batch), batch_size=None)

    def on_after_batch_transfer(self, batch: Any, dataloader_idx: int) -> Any:
        if self.trainer is not None and self.trainer.training:
            self.next_batch = batch["index"] + 1
        return batch

    def state_dict(self) -> dict[str, Any]:
        return {"next_batch": self.next_batch}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.next_batch = state_dict["next_batch"]

    def val_dataloader(self) -> DataLoader:
        return self._fixed_queries(VALIDATION_STREAM)

    def test_dataloader(self) -> DataLoader:
        return self._fixed_queries(TEST_STREAM)

    def _fixed_queries(self, stream: int) -> DataLoader:
        generator = torch.Generator().manual_seed(derive_seed(self.seed, stream))
        queries = self.task.sample_queries(self.val_size, generator)
        return DataLoader(TensorDataset(queries), batch_size=self.val_size)

"""The DataModule: per-step query batches, one reproducible stream per rank."""

from __future__ import annotations

import os
from collections.abc import Iterator

import torch
from lightning.pytorch import LightningDataModule
from torch.utils.data import DataLoader, IterableDataset, TensorDataset

from sapo_lightning.checks import ConfigError
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


QUERY_STREAM, ROLLOUT_STREAM, VALIDATION_STREAM = 0, 1, 2


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
    """Random queries for training and a fixed validation set.

    Each training step draws ``batch_size`` fresh queries per rank; each query then gets
    ``model.group_size`` sampled responses. Validation decodes greedily on ``val_size``
    queries drawn once from the seed (the same set on every rank, sharded by Lightning).

    Args:
        task: What to learn: queries and rewards (class_path + init_args).
        batch_size: Queries per optimizer step and rank (seed: 8).
        val_size: Number of fixed validation queries.
        seed: Seed of the query and rollout streams; None takes the run's ``seed_everything``.
    """

    def __init__(self, task: Task, batch_size: int = 8, val_size: int = 64, seed: int | None = None) -> None:
        super().__init__()
        if not isinstance(batch_size, int) or batch_size < 1:
            raise ConfigError(f"batch_size must be an integer >= 1; got {batch_size!r}")
        if not isinstance(val_size, int) or val_size < 1:
            raise ConfigError(f"val_size must be an integer >= 1; got {val_size!r}")
        self.task = task
        self.batch_size = batch_size
        self.val_size = val_size
        self._seed = seed

    @property
    def seed(self) -> int:
        return self._seed if self._seed is not None else int(os.environ.get("PL_GLOBAL_SEED", 0))

    def train_dataloader(self) -> DataLoader:
        trainer = self.trainer
        rank = trainer.global_rank if trainer else 0
        # A resumed run continues the stream where the interrupted one stopped.
        start = getattr(trainer.lightning_module, "rollouts_done", 0) if trainer else 0
        stream = QueryStream(self.task, self.batch_size, self.seed, rank, start)
        return DataLoader(stream, batch_size=None)

    def val_dataloader(self) -> DataLoader:
        generator = torch.Generator().manual_seed(derive_seed(self.seed, VALIDATION_STREAM))
        queries = self.task.sample_queries(self.val_size, generator)
        return DataLoader(TensorDataset(queries), batch_size=self.val_size)

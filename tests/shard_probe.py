"""Test-only callback: what one FSDP rank held, written to ``<out>/rank<R>.pt`` when training ends."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from lightning.pytorch import Callback, LightningModule, Trainer


def local(module: torch.nn.Module) -> torch.Tensor:
    """This rank's shard of every parameter, flattened (the whole tensor for an unsharded one)."""
    return torch.cat([getattr(p, "to_local", lambda p=p: p)().detach().flatten() for p in module.parameters()]).cpu()


def full(module: torch.nn.Module) -> torch.Tensor:
    """Every parameter gathered from all ranks (a collective: every rank calls it at the same point)."""
    return torch.cat([getattr(p, "full_tensor", lambda p=p: p)().detach().flatten() for p in module.parameters()]).cpu()


class ShardProbe(Callback):
    """Per batch: the queries and this rank's shard of π_old it samples from; the logged train
    reward; at the end the shards and the gathered weights of both policies, and the metrics."""

    def __init__(self, out: str) -> None:
        self.out = Path(out)
        self.queries: list[torch.Tensor] = []
        self.old_shard: list[torch.Tensor] = []
        self.train_reward: dict[int, torch.Tensor] = {}

    def on_train_batch_start(self, trainer: Trainer, pl_module: LightningModule, batch: Any, batch_idx: int) -> None:
        self.queries.append(batch["queries"].cpu().clone())
        self.old_shard.append(local(pl_module.old_policy))

    def on_train_batch_end(self, trainer: Trainer, pl_module: LightningModule, *args: Any) -> None:
        if "train/reward" in trainer.callback_metrics:
            self.train_reward[trainer.global_step] = trainer.callback_metrics["train/reward"].cpu().clone()

    def on_train_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self.out.mkdir(parents=True, exist_ok=True)
        for module in pl_module.policy.modules():  # FSDP2 keeps the root gathered after a no-grad forward
            if hasattr(module, "reshard"):
                module.reshard()
        params = list(pl_module.policy.parameters())
        torch.save(
            {
                "dtensor": [type(p).__name__ == "DTensor" for p in params],
                "local_numel": sum(getattr(p, "to_local", lambda p=p: p)().numel() for p in params),
                "full_numel": sum(p.numel() for p in params),
                "queries": torch.stack(self.queries),  # [batches, B, D]
                "old_shard": torch.stack(self.old_shard),  # [batches, local P]
                "policy_shard": local(pl_module.policy),
                "policy": full(pl_module.policy),
                "old_policy": full(pl_module.old_policy),
                "train_reward": self.train_reward,
                "metrics": {k: v.cpu().clone() for k, v in trainer.callback_metrics.items()},
            },
            self.out / f"rank{trainer.global_rank}.pt",
        )

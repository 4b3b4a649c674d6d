"""Test-only callback: what one DDP rank saw, written to ``<out>/rank<R>.pt`` when training ends."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from lightning.pytorch import Callback, LightningModule, Trainer


def flat(module: torch.nn.Module) -> torch.Tensor:
    return torch.cat([p.detach().flatten() for p in module.parameters()]).cpu()


class RankProbe(Callback):
    """Records the step training starts at; per batch the queries and the old policy it samples
    from (so after the syncs of earlier batches), the logged train reward, and the step and the
    task's ``reward_calls`` (a test task's count of sampling rounds, if it keeps one) at its end;
    at the end both policies and all metrics."""

    def __init__(self, out: str) -> None:
        self.out = Path(out)
        self.queries: list[torch.Tensor] = []
        self.old_policy: list[torch.Tensor] = []
        self.train_reward: dict[int, torch.Tensor] = {}
        self.batch_ends: list[tuple[int, int | None]] = []  # (global_step, reward_calls) after each batch
        self.start_step = -1

    def on_train_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self.start_step = trainer.global_step

    def on_train_batch_start(self, trainer: Trainer, pl_module: LightningModule, batch: Any, batch_idx: int) -> None:
        queries = batch["queries"]  # a tensor, or Prompts (their token ids)
        self.queries.append((queries if isinstance(queries, torch.Tensor) else queries.input_ids).cpu().clone())
        self.old_policy.append(flat(pl_module.old_policy))

    def on_train_batch_end(self, trainer: Trainer, pl_module: LightningModule, *args: Any) -> None:
        self.batch_ends.append((trainer.global_step, getattr(pl_module.task, "reward_calls", None)))
        if "train/reward" in trainer.callback_metrics:
            self.train_reward[trainer.global_step] = trainer.callback_metrics["train/reward"].cpu().clone()

    def on_train_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self.out.mkdir(parents=True, exist_ok=True)
        metrics = {k: v.cpu().clone() for k, v in trainer.callback_metrics.items()}
        torch.save(
            {
                "start_step": self.start_step,
                "end_step": trainer.global_step,
                "queries": torch.stack(self.queries),  # [batches, B, D]
                "old_policy": torch.stack(self.old_policy),  # [batches, P]
                "policy": flat(pl_module.policy),  # [P]
                "final_old_policy": flat(pl_module.old_policy),  # [P]
                "train_reward": self.train_reward,
                "batch_ends": self.batch_ends,
                "metrics": metrics,
            },
            self.out / f"rank{trainer.global_rank}.pt",
        )

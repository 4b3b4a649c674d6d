"""The callback that refreshes the behaviour (old) policy."""

from __future__ import annotations

from typing import Any

from lightning.pytorch import Callback, LightningModule, Trainer

from sapo_lightning.checks import ConfigError


class OldPolicySync(Callback):
    """Copy ``policy`` into ``old_policy`` every ``every_n_steps`` optimizer steps.

    Rollouts are sampled from ``old_policy``; between syncs the data grows stale, which is
    what the ratio r = π_θ / π_old and the objective's gate or clip act on. The sync runs at
    the end of the batch that reaches a multiple of N optimizer steps (with several updates
    per rollout, the first batch end at or past it). Its state is checkpointed.

    Args:
        every_n_steps: Optimizer steps between syncs (seed: 10). 1 keeps rollouts on-policy
            at the first update of each batch.
    """

    def __init__(self, every_n_steps: int = 10) -> None:
        if not isinstance(every_n_steps, int) or every_n_steps < 1:
            raise ConfigError(f"every_n_steps must be an integer >= 1; got {every_n_steps!r}")
        self.every_n_steps = every_n_steps
        self.last_sync_step = 0

    def on_train_batch_end(self, trainer: Trainer, pl_module: LightningModule, *args: Any) -> None:
        step = trainer.global_step
        if step // self.every_n_steps > self.last_sync_step // self.every_n_steps:
            pl_module.sync_old_policy()
            self.last_sync_step = step

    def state_dict(self) -> dict[str, Any]:
        return {"every_n_steps": self.every_n_steps, "last_sync_step": self.last_sync_step}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.last_sync_step = state_dict["last_sync_step"]

"""The callback that refreshes the behaviour (old) policy."""

from __future__ import annotations

from typing import Any

from lightning.pytorch import Callback, LightningModule, Trainer

from sapo_lightning.checks import check_int
from sapo_lightning.schedule import crossed_multiple


class OldPolicySync(Callback):
    """Copy ``policy`` into ``old_policy`` every ``every_n_steps`` optimizer steps.

    Rollouts are sampled from ``old_policy``; between syncs the data grows stale, which is
    what the ratio r = π_θ / π_old and the objective's gate or clip act on. The sync runs at
    the end of the batch that reaches a multiple of N optimizer steps (with several updates
    per rollout, the first batch end at or past it; see :func:`crossed_multiple`). It keeps no
    state: ``global_step`` decides, so a resumed run syncs where the uninterrupted one did.

    Args:
        every_n_steps: Optimizer steps between syncs (seed: 10). 1 keeps rollouts on-policy
            at the first update of each batch. At most ``model.updates_per_rollout``, π_old is
            refreshed before every rollout: then no copy is kept, and rollouts are sampled from
            the policy itself in eval mode under no_grad (the same result without a second
            model in memory or in checkpoints).
    """

    def __init__(self, every_n_steps: int = 10) -> None:
        self.every_n_steps = check_int("every_n_steps", every_n_steps, 1)

    def setup(self, trainer: Trainer, pl_module: LightningModule, stage: str) -> None:
        # Refreshed before every rollout, π_old equals π_θ when it samples: no copy is needed.
        pl_module.keep_old_copy(self.every_n_steps > pl_module.updates_per_rollout)

    def on_train_batch_end(self, trainer: Trainer, pl_module: LightningModule, *args: Any) -> None:
        if crossed_multiple(trainer.global_step, pl_module.updates_per_rollout, self.every_n_steps):
            pl_module.sync_old_policy()

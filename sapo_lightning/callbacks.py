"""The callbacks the CLI adds: the old-policy sync and a progress bar that redraws a few times a second."""

from __future__ import annotations

import math
import time
from collections.abc import Iterable
from typing import Any, Protocol, runtime_checkable

from lightning.pytorch import Callback, LightningModule, Trainer
from lightning.pytorch.callbacks import TQDMProgressBar

from sapo_lightning.checks import ConfigError, check_int, fail
from sapo_lightning.loop.schedule import crossed_multiple


@runtime_checkable
class SyncsOldPolicy(Protocol):
    """What :class:`OldPolicySync` calls on the module it serves (:class:`~sapo_lightning.RLModule` has it)."""

    steps_per_rollout: int  # optimizer steps per rollout batch

    def keep_old_copy(self, keep: bool) -> None:
        """Keep π_old as a frozen copy (True), or sample from the live policy (False)."""

    def sync_old_policy(self) -> None:
        """π_old ← π_θ."""


class OldPolicySync(Callback):
    """Copy ``policy`` into ``old_policy`` every ``every_n_steps`` optimizer steps.

    Rollouts are sampled from ``old_policy``; between syncs the data grows stale, which is
    what the ratio r = π_θ / π_old and the objective's gate or clip act on. The sync runs at
    the end of the batch that reaches a multiple of N optimizer steps (with several optimizer
    steps per rollout, the first batch end at or past it; see :func:`crossed_multiple`). It keeps no
    state: ``global_step`` decides, so a resumed run syncs where the uninterrupted one did.

    Args:
        every_n_steps: Optimizer steps between syncs (seed: 10). 1 keeps rollouts on-policy
            at the first step of each batch. At most the module's ``steps_per_rollout``
            (``model.updates_per_rollout`` x ``model.mini_batches``), π_old is
            refreshed before every rollout: then no copy is kept, and rollouts are sampled from
            the policy itself in eval mode under no_grad (the same result without a second
            model in memory or in checkpoints).
    """

    def __init__(self, every_n_steps: int = 10) -> None:
        self.every_n_steps = check_int("every_n_steps", every_n_steps, 1)

    def setup(self, trainer: Trainer, pl_module: LightningModule, stage: str) -> None:
        if not isinstance(pl_module, SyncsOldPolicy):
            raise TypeError(f"OldPolicySync needs a module with keep_old_copy, sync_old_policy and steps_per_rollout "
                            f"(sapo_lightning.callbacks.SyncsOldPolicy); got {type(pl_module).__name__}")
        # Refreshed before every rollout, π_old equals π_θ when it samples: no copy is needed.
        pl_module.keep_old_copy(self.every_n_steps > pl_module.steps_per_rollout)

    def on_train_batch_end(self, trainer: Trainer, pl_module: LightningModule, *args: Any) -> None:
        if crossed_multiple(trainer.global_step, pl_module.steps_per_rollout, self.every_n_steps):
            pl_module.sync_old_policy()


def require_old_policy_sync(callbacks: Iterable[Callback]) -> None:
    """Refuse to fit without an :class:`OldPolicySync`: π_old would stay the initial policy, silently."""
    if not any(isinstance(callback, OldPolicySync) for callback in callbacks):
        raise ConfigError("trainer.callbacks must include sapo_lightning.callbacks.OldPolicySync, which refreshes "
                          "π_old every N steps (sapo-lightning fit adds it as `sync`); got none")


class ProgressBar(TQDMProgressBar):
    """Lightning's tqdm bar, redrawn at most every ``refresh_interval`` seconds (the CLI's default bar).

    Lightning's bars (tqdm, or rich when it is installed) redraw after every batch: at the seed
    size that is hundreds of redraws a second, each rendering the line and the logged metrics,
    which a person cannot read and which cost the run time (see docs/benchmarks.md). This one
    skips the redraw of a training batch that ends less than ``refresh_interval`` after the last
    redraw; the last batch of the run is always drawn, and so are the validation and test bars.

    It counts rollout batches, ``max_steps / steps_per_rollout`` in all (Lightning's bar takes
    ``max_steps``, optimizer steps, and stopped at 20/40 with two per batch), and a resumed run's bar
    starts at the batches already done with that total (Lightning's showed ``31/?``: it sets the
    total at an epoch's start, which a run resumed mid-epoch skips). The ETA is tqdm's: the batches
    left over the mean rate since the bar started, validation pauses so far included; validations not
    yet run are not (before the first one it is short by their cost).

    Args:
        refresh_interval: Least seconds between two redraws of the training bar; 0 redraws at
            every batch.
    """

    def __init__(self, refresh_interval: float = 0.5, process_position: int = 0, leave: bool = False) -> None:
        super().__init__(refresh_rate=1, process_position=process_position, leave=leave)
        if not refresh_interval >= 0:
            fail("refresh_interval", "a number of seconds >= 0", refresh_interval)
        self.refresh_interval = refresh_interval
        self._last_draw = -math.inf

    @property
    def total_train_batches(self) -> int | float:
        """Rollout batches of the whole run, from step 0, when ``max_steps`` bounds it; else Lightning's count."""
        trainer = self.trainer
        if trainer.max_steps > 0:
            per_batch = getattr(trainer.lightning_module, "steps_per_rollout", 1)
            return min(trainer.num_training_batches, math.ceil(trainer.max_steps / per_batch))
        return super().total_train_batches

    def on_train_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        super().on_train_start(trainer, pl_module)
        if trainer.global_step > 0 and self.train_progress_bar is not None:  # resumed: no epoch start resets it
            done = trainer.global_step // getattr(pl_module, "steps_per_rollout", 1)
            total = self.total_train_batches
            self.train_progress_bar.total = None if math.isinf(total) else total  # None: tqdm's "?"
            self.train_progress_bar.initial = self.train_progress_bar.n = done  # the rate counts this run's batches
            self.train_progress_bar.set_description(f"Epoch {trainer.current_epoch}")

    def on_train_batch_end(self, trainer: Trainer, pl_module: LightningModule, outputs: Any, batch: Any,
                           batch_idx: int) -> None:
        now = time.monotonic()
        last = trainer.global_step >= trainer.max_steps > 0 or batch_idx + 1 == trainer.num_training_batches
        if now - self._last_draw < self.refresh_interval and not last:
            return
        self._last_draw = now
        super().on_train_batch_end(trainer, pl_module, outputs, batch, batch_idx)

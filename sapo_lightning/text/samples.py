"""A TensorBoard text panel of what the policy writes during training."""

from __future__ import annotations

from typing import Any

import torch
from lightning.pytorch import Callback, LightningModule, Trainer
from lightning.pytorch.loggers import TensorBoardLogger

from sapo_lightning.checks import check_int, fail
from sapo_lightning.loop.schedule import crossed_multiple


class TextSamples(Callback):
    """Every ``every_n_steps`` optimizer steps, a few (prompt, completion, reward) rows as a TensorBoard text panel.

    The completions are sampled from the current policy for the first ``num_samples``
    prompts of the batch that just trained (so they show what the policy writes now, not the
    stale rollout), rewarded by the task, and written under the tag ``samples`` by rank 0.
    Sampling on one rank only: not for a policy sharded across ranks (FSDP).

    Args:
        every_n_steps: Optimizer steps between panels.
        num_samples: Prompts shown per panel.
    """

    def __init__(self, every_n_steps: int = 50, num_samples: int = 4) -> None:
        self.every_n_steps = check_int("every_n_steps", every_n_steps, 1)
        self.num_samples = check_int("num_samples", num_samples, 1)

    def setup(self, trainer: Trainer, pl_module: LightningModule, stage: str) -> None:
        if not hasattr(pl_module.task, "sample_texts"):
            fail("trainer.callbacks", "free of TextSamples unless the task is a text task (PromptTask)",
                 type(pl_module.task).__name__)

    @torch.no_grad()
    def on_train_batch_end(
        self, trainer: Trainer, pl_module: LightningModule, outputs: Any, batch: Any, *args: Any
    ) -> None:
        due = crossed_multiple(trainer.global_step, pl_module.steps_per_rollout, self.every_n_steps)
        loggers = [logger for logger in trainer.loggers if isinstance(logger, TensorBoardLogger)]
        if not (due and trainer.is_global_zero and loggers):
            return
        task, queries = pl_module.task, batch["queries"][: self.num_samples]
        generator = torch.Generator(device=pl_module.device).manual_seed(batch["seed"])
        queries, rollout = task.sample(pl_module.policy, queries, generator)
        rewards = task.rewards(queries, rollout)
        rows = ["| prompt | completion | reward |", "|---|---|---|"]
        for (prompt, completion), reward in zip(task.sample_texts(queries, rollout), rewards.total.tolist()):
            rows.append(f"| {_cell(prompt)} | {_cell(completion)} | {reward:.3f} |")
        for logger in loggers:
            logger.experiment.add_text("samples", "\n".join(rows), global_step=trainer.global_step)


def _cell(text: str) -> str:
    """Text inside a Markdown table cell: pipes escaped, line breaks kept."""
    return text.replace("|", "\\|").replace("\n", "<br>") or " "

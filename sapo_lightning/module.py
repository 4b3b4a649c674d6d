"""The LightningModule: the RL loop (sample, reward, advantages, updates) around one injected objective.

What the loop leans on lives in :mod:`sapo_lightning.loop`: π_old / π_ref in ``copies``, the step
guard in ``guard``, dynamic sampling, row slicing, evaluation, diagnostics and checkpoint contents.
Every argument is documented in docs/configuration.md.
"""

from __future__ import annotations

from collections.abc import Callable
from contextlib import nullcontext
from typing import Any, Literal

import torch
from lightning.pytorch import LightningModule, Trainer
from lightning.pytorch.cli import OptimizerCallable
from lightning.pytorch.utilities import move_data_to_device
from torch import Tensor

from sapo_lightning.advantages import check_group, group_advantages_with_stats
from sapo_lightning.callbacks import require_old_policy_sync
from sapo_lightning.checks import check_int, check_number, check_optimizer, check_schedule
from sapo_lightning.loop.checkpoint_state import drop_frozen_weights, fit_to_run
from sapo_lightning.loop.copies import FrozenPolicies
from sapo_lightning.loop.dynamic_sampling import Draw, GroupFilter
from sapo_lightning.loop.evaluation import EvalMetrics, evaluate
from sapo_lightning.loop.guard import StepGuard
from sapo_lightning.loop.metrics import Diagnostics, combine_micro_batches, log_train_diagnostics, rollout_diagnostics
from sapo_lightning.loop.slices import micro_batch_slices, update_plan
from sapo_lightning.loop.update_data import OldLogProbs, UpdateData, mismatch_diagnostics
from sapo_lightning.objectives import Objective, aggregate, k3_kl, masked_mean
from sapo_lightning.policies import Policy
from sapo_lightning.rollout import Rollout, concat_queries, concat_rollouts, take
from sapo_lightning.rollout_correction import RolloutCorrection
from sapo_lightning.tasks import Task


class RLModule(LightningModule):
    """Group-relative policy optimization with an injected objective (SAPO by default).

    B queries get G responses each from π_old; rewards become group-relative advantages; the batch is
    split into ``mini_batches`` parts of whole groups, one optimizer step each, passed over
    ``updates_per_rollout`` times. The objective's diagnostics are logged under ``train/``, whatever it is.
    A fit needs :class:`~sapo_lightning.callbacks.OldPolicySync`. Every argument in full: docs/configuration.md.

    Args:
        policy: Policy class and its own arguments; the task supplies vocabulary and lengths.
        objective: The loss (``SAPO``, or a baseline) with its hyperparameters.
        task: Queries and rewards; linked from ``data.task`` by the CLI.
        group_size: Responses sampled per query (G).
        updates_per_rollout: Passes over the rollout batch's mini-batches.
        mini_batches: Parts (M) of whole groups a rollout batch is split into, one optimizer step each.
        filter_groups: Dynamic sampling: keep only groups whose rewards differ, drawing more queries.
        max_sampling_rounds: Most sampling rounds per rollout batch with ``filter_groups``.
        entropy_coef: Weight c of an entropy bonus −c·H (0: none).
        advantage_scale: ``group`` divides by the group's std; ``none`` keeps R − mean.
        optimizer: Optimizer class and arguments for the policy.
        max_grad_norm: Clip the gradient norm to this value; None disables clipping.
        pass_k: Also log ``val/pass@k/...`` from k samples per evaluation query.
        micro_batch_size: Responses per forward/backward pass (None: all at once).
        beta: Weight of a k3 KL penalty to the initial policy (0: no reference).
        max_nonfinite_steps: Non-finite optimizer steps in a row that stop the run (None: never).
        recompute_old_log_probs: Score each rollout with π_old in the update's own precision and micro-batches.
        rollout_correction: Truncated or masked importance sampling from the sampler to π_old (None: off).
    """

    def __init__(
        self,
        policy: Callable[[Task], Policy],
        objective: Objective,
        task: Task,
        group_size: int = 8,
        updates_per_rollout: int = 1,
        mini_batches: int = 1,
        filter_groups: bool = False,
        max_sampling_rounds: int = 4,
        entropy_coef: float = 0.0,
        advantage_scale: Literal["group", "none"] = "group",
        optimizer: OptimizerCallable = torch.optim.Adam,
        max_grad_norm: float | None = None,
        pass_k: int | None = None,
        micro_batch_size: int | None = None,
        beta: float = 0.0,
        max_nonfinite_steps: int | None = 3,
        recompute_old_log_probs: bool = False,
        rollout_correction: RolloutCorrection | None = None,
    ) -> None:
        super().__init__()
        check_group(group_size, advantage_scale)
        self.save_hyperparameters(ignore=["task"])
        self.automatic_optimization = False
        self.task, self.objective, self.group_size, self.advantage_scale = task, objective, group_size, advantage_scale
        self.filter_groups, self.pass_k = filter_groups, check_int("pass_k", pass_k, 1, allow_none=True)
        self.updates_per_rollout = check_int("updates_per_rollout", updates_per_rollout, 1)
        self.mini_batches = check_int("mini_batches", mini_batches, 1)
        self.entropy_coef = check_number("entropy_coef", entropy_coef, 0)
        check_optimizer(optimizer)
        self.optimizer_factory = optimizer
        self.micro_batch_size = check_int("micro_batch_size", micro_batch_size, 1, allow_none=True)
        self.beta = check_number("beta", beta, 0)
        self.guard = StepGuard(max_nonfinite_steps, max_grad_norm)
        self.policy = policy(task)
        self.frozen = FrozenPolicies(self, reference=self.beta > 0)  # π_old and π_ref: old_policy, ref_policy
        self.old_log_probs = OldLogProbs(self, recompute_old_log_probs, rollout_correction)  # π_old's, corrected
        self.group_filter = GroupFilter(group_size, max_sampling_rounds, self.policy.pad_token, filter_groups)
        self.train_diagnostics = Diagnostics()
        self.eval_metrics = EvalMetrics()

    @property
    def steps_per_rollout(self) -> int:
        """Optimizer steps per rollout batch (S): ``updates_per_rollout`` passes over ``mini_batches`` parts."""
        return self.updates_per_rollout * self.mini_batches

    # -- the loop ------------------------------------------------------------------------
    def training_step(self, batch: dict[str, Any], batch_idx: int) -> None:
        generator = torch.Generator(device=self.device).manual_seed(batch["seed"])
        with torch.no_grad():
            queries, rollout = self.sample(batch["queries"], generator)  # [N, ...], N = B * G
            rewards = self.task.rewards(queries, rollout)  # [N]
            sampling = {}
            if self.filter_groups:  # dynamic sampling: more rounds of queries until B groups carry a signal
                (queries, rollout, rewards), sampling = self.group_filter.fill(
                    Draw(queries, rollout, rewards), batch["refill"], lambda more: self.sample(more, generator),
                    self.task.rewards, self.trainer.strategy)
            groups = group_advantages_with_stats(rewards.total, self.group_size, self.advantage_scale)
            ref_log_probs = self.frozen.reference_log_probs(queries, rollout, self.micro_batch_size)  # [N, T] or None
            data, correction = self.old_log_probs.prepare(queries, rollout, groups.advantages, ref_log_probs)
            plan = update_plan(data.mask, self.mini_batches, self.micro_batch_size, self.objective.aggregation)
        rollout_stats = rollout_diagnostics(rewards, groups, rollout) | sampling | correction
        for update in range(self.updates_per_rollout):  # the first step is on-policy, the later ones stale
            for index, (rows, chunks, shares) in enumerate(plan):
                metrics = self.update(data.take(rows), chunks, shares, update == index == 0)
                self.train_diagnostics.record(rollout_stats | metrics)
                log_train_diagnostics(self, self.train_diagnostics, {"nonfinite_steps": self.guard.skipped})

    def sample(self, queries: Any, generator: torch.Generator) -> tuple[Any, Rollout]:
        """G responses (or episodes) per query from π_old, micro-batch by micro-batch: the queries they answer,
        and the rollout."""
        queries = move_data_to_device(queries, self.device).repeat_interleave(self.group_size, 0)
        with self.frozen.behaviour() as behaviour:
            parts = [self.task.sample(behaviour, take(queries, rows), generator)
                     for rows in micro_batch_slices(len(queries), self.micro_batch_size)]
        return concat_queries([q for q, _ in parts]), concat_rollouts([r for _, r in parts], self.policy.pad_token)

    def update(self, data: UpdateData, chunks: list[slice], shares: list[Tensor | None],
               first: bool) -> dict[str, Tensor]:
        """One optimizer step on a mini-batch (``first``: its rollout batch's first): each chunk's gradient
        accumulates, then the guarded step; its diagnostics."""
        optimizer = self.optimizers()
        optimizer.zero_grad(set_to_none=True)
        losses, parts = [], []
        for index, (rows, share) in enumerate(zip(chunks, shares)):
            # under DDP the gradients are all-reduced once, at the last chunk's backward
            with optimizer.toggle_model(sync_grad=index == len(chunks) - 1) if len(chunks) > 1 else nullcontext():
                loss, metrics = self.accumulate(data.take(rows), share, first)
            losses.append(loss)
            parts.append(metrics)
        grad_norm = self.guard.step(optimizer, losses)  # skipped when a loss or the gradient norm is not finite
        return (parts[0] if len(parts) == 1 else combine_micro_batches(parts, shares)) | {"grad_norm": grad_norm}

    def accumulate(self, data: UpdateData, share: Tensor | None, first: bool) -> tuple[Tensor, dict[str, Tensor]]:
        """Backward of one micro-batch's loss, weighted by its ``share`` of the mini-batch's (None: the
        whole mini-batch); the loss (unweighted, detached) and its diagnostics."""
        bonus, rollout, mask = self.entropy_coef > 0, data.rollout, data.mask
        scores = self.policy.score(data.queries, rollout.responses, entropy_grad=bonus, attention=rollout.attention)
        out = self.objective(scores.log_probs, data.old_log_probs, data.advantages, mask)
        loss, metrics = out.loss, {"loss": out.loss.detach(), "entropy": masked_mean(scores.entropy.detach(), mask)}
        metrics |= mismatch_diagnostics(scores.log_probs.detach(), rollout, first)  # the first step of a rollout only
        if bonus:
            term = -self.entropy_coef * aggregate(scores.entropy, mask, self.objective.aggregation)
            loss, metrics["entropy_bonus"] = loss + term, term.detach()
        if data.ref_log_probs is not None:
            kl = k3_kl(scores.log_probs, data.ref_log_probs)  # [n, T]
            loss = loss + self.beta * aggregate(kl, mask, self.objective.aggregation)
            metrics["ref_kl"] = masked_mean(kl.detach(), mask)
        self.manual_backward(loss if share is None else loss * share)
        return loss.detach(), metrics | out.metrics

    def on_before_optimizer_step(self, optimizer: torch.optim.Optimizer) -> None:
        self.guard.inspect(self, optimizer)  # inside optimizer.step(), after any AMP unscale: the true gradients

    # -- the run around it: checks, π_old / π_ref, checkpoints ---------------------------------
    def check_trainer(self, trainer: Trainer, datamodule: Any = None) -> None:
        """Refuse a Trainer (and data) this loop cannot run with (called by ``setup``; the CLI calls it
        before writing, when the data module is not yet attached to the Trainer)."""
        batch_size = getattr(datamodule or trainer.datamodule, "batch_size", None)
        check_schedule(trainer.max_steps, batch_size, self.updates_per_rollout, self.mini_batches, self.group_size,
                       self.micro_batch_size)
        require_old_policy_sync(trainer.callbacks)

    def setup(self, stage: str) -> None:
        if stage == "fit":
            self.check_trainer(self.trainer)

    def keep_old_copy(self, keep: bool) -> None:
        """π_old a frozen copy (lagged), or the live policy refreshed before every rollout (OldPolicySync calls it)."""
        self.frozen.keep_old_copy(keep)

    def sync_old_policy(self) -> None:
        """π_old ← π_θ (called by :class:`~sapo_lightning.callbacks.OldPolicySync`)."""
        self.frozen.sync_old()

    def configure_model(self) -> None:
        self.frozen.build(self.device_mesh)

    def train(self, mode: bool = True) -> RLModule:
        super().train(mode)
        self.frozen.eval()
        return self

    def configure_optimizers(self) -> torch.optim.Optimizer:
        # the trainable parameters only: with LoRA, the adapters (the frozen base gets no state)
        return self.optimizer_factory([p for p in self.policy.parameters() if p.requires_grad])

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        checkpoint.update(self.guard.state_dict())
        if not self.frozen.sharded:  # a sharded (FSDP) checkpoint keeps every weight: it loads strictly
            drop_frozen_weights(checkpoint, self.policy)

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        self.guard.load_state_dict(checkpoint)
        fit_to_run(checkpoint, self.state_dict(), self.policy, self.old_policy, self.ref_policy)

    # -- evaluation: greedy decoding (and pass@k) of fixed queries; means over the set at x = global_step ----------
    def validation_step(self, batch: dict[str, Any], batch_idx: int) -> None:
        self.eval_metrics.log(self, evaluate(self.policy, self.task, batch["queries"], self.pass_k, batch_idx), "val")

    def test_step(self, batch: dict[str, Any], batch_idx: int) -> None:
        self.eval_metrics.log(self, evaluate(self.policy, self.task, batch["queries"], self.pass_k, batch_idx), "test")

    def on_validation_epoch_end(self) -> None:
        self.eval_metrics.log_epoch(self, "val")

    def on_test_epoch_end(self) -> None:
        self.eval_metrics.log_epoch(self, "test")

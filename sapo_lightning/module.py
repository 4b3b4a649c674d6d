"""The LightningModule: old/new policy pair, rollouts, advantages and one injected objective."""

from __future__ import annotations

import copy
import math
from collections.abc import Callable
from typing import Any, Literal

import torch
from lightning.pytorch import LightningModule
from lightning.pytorch.cli import OptimizerCallable
from torch import Tensor
from torchmetrics import MeanMetric

from sapo_lightning.advantages import check_group, group_advantages_with_stats
from sapo_lightning.checks import ConfigError
from sapo_lightning.metrics import Diagnostics
from sapo_lightning.objectives import Objective, masked_mean
from sapo_lightning.policies import Policy
from sapo_lightning.tasks import Task

#: Diagnostics the module itself records, before the objective's own.
MODULE_METRICS = ("reward", "reward_std", "zero_adv_frac", "loss", "entropy", "grad_norm")
#: Updates whose diagnostics are queued before a metric update, if no log step comes first.
PENDING_STEPS = 64


class RLModule(LightningModule):
    """Group-relative policy optimization with an injected objective (SAPO by default).

    Each training batch holds ``batch_size`` queries. Every query gets ``group_size``
    responses sampled from the frozen ``old_policy``, whose log-probs are kept as the
    constant π_old. Rewards become group-relative advantages, then the policy takes
    ``updates_per_rollout`` optimizer steps on ``objective(log_probs, old_log_probs,
    advantages, mask)``. The module never looks at which objective it holds: it logs
    whatever diagnostics the objective returns under ``train/``.

    Args:
        policy: Policy class and its own arguments; the task supplies vocabulary and lengths.
        objective: The loss (``SAPO``, or a baseline) with its hyperparameters.
        task: Rewards; linked from ``data.task`` by the CLI.
        group_size: Responses sampled per query (G); advantages are relative within a group.
        updates_per_rollout: Optimizer steps on each rollout batch. Only the first can be
            on-policy; the later ones are where a gate or clip acts.
        advantage_scale: ``group`` divides by the group's std (GRPO, SAPO); ``none`` keeps
            R − mean (Dr.GRPO).
        optimizer: Optimizer class and arguments (``lr`` among them) for the policy.
        max_grad_norm: Clip the gradient norm to this value; None disables clipping.
    """

    def __init__(
        self,
        policy: Callable[[Task], Policy],
        objective: Objective,
        task: Task,
        group_size: int = 8,
        updates_per_rollout: int = 1,
        advantage_scale: Literal["group", "none"] = "group",
        optimizer: OptimizerCallable = torch.optim.Adam,
        max_grad_norm: float | None = None,
    ) -> None:
        super().__init__()
        check_group(group_size, advantage_scale)
        if not isinstance(updates_per_rollout, int) or updates_per_rollout < 1:
            raise ConfigError(f"updates_per_rollout must be an integer >= 1; got {updates_per_rollout!r}")
        if max_grad_norm is not None and not max_grad_norm > 0:
            raise ConfigError(f"max_grad_norm must be > 0 or null; got {max_grad_norm!r}")
        self.save_hyperparameters(ignore=["task"])
        self.automatic_optimization = False
        self.task = task
        self.objective = objective
        self.group_size = group_size
        self.updates_per_rollout = updates_per_rollout
        self.advantage_scale = advantage_scale
        self.max_grad_norm = max_grad_norm
        self.policy = policy(task)
        self.old_policy = copy.deepcopy(self.policy).requires_grad_(False).eval()
        self.optimizer_factory = optimizer
        _check_optimizer(optimizer)
        self.train_diagnostics: Diagnostics | None = None  # built at the first update
        self._pending: list[Tensor] = []  # diagnostics of the updates since the last flush, flat
        self.val_reward = MeanMetric()
        self.val_exact_match = MeanMetric()

    # -- state ---------------------------------------------------------------------------
    @property
    def rollouts_done(self) -> int:
        """Rollout batches consumed so far; the data stream resumes from here."""
        return self.global_step // self.updates_per_rollout

    @torch.no_grad()
    def sync_old_policy(self) -> None:
        """π_old ← π_θ (called by :class:`~sapo_lightning.callbacks.OldPolicySync`)."""
        self.old_policy.load_state_dict(self.policy.state_dict())

    def train(self, mode: bool = True) -> RLModule:
        super().train(mode)
        self.old_policy.eval()  # the behaviour policy always samples in eval mode
        return self

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return self.optimizer_factory(self.policy.parameters())

    # -- training ------------------------------------------------------------------------
    def training_step(self, batch: dict[str, Any], batch_idx: int) -> None:
        queries = batch["queries"].repeat_interleave(self.group_size, 0)  # [N, ...], N = B * G
        generator = torch.Generator(device=queries.device).manual_seed(batch["seed"])
        with torch.no_grad():
            rollout = self.old_policy.sample(queries, generator)  # [N, T] each
            rewards = self.task.reward(queries, rollout.responses, rollout.mask)  # [N]
            advantages, zero_signal, group_std = group_advantages_with_stats(rewards, self.group_size, self.advantage_scale)
            rollout_stats = [rewards.mean(), group_std.mean(), zero_signal.float().mean()]

        optimizer = self.optimizers()
        for _ in range(self.updates_per_rollout):
            scores = self.policy.score(queries, rollout.responses)  # [N, T] each
            out = self.objective(scores.log_probs, rollout.log_probs, advantages, rollout.mask)
            optimizer.zero_grad(set_to_none=True)
            self.manual_backward(out.loss)
            grad_norm = self._clip_gradients(optimizer)
            optimizer.step()
            with torch.no_grad():
                entropy = masked_mean(scores.entropy, rollout.mask)
                self._record(rollout_stats + [out.loss.detach(), entropy, grad_norm], out.metrics)

        if self.trainer._logger_connector.should_update_logs:  # same cadence as Lightning's
            self._log_train()

    def _clip_gradients(self, optimizer: Any) -> Tensor:
        """Gradient norm before clipping; clips through Lightning when ``max_grad_norm`` is set."""
        grads = [p.grad for p in self.policy.parameters() if p.grad is not None]
        # ||g|| = ||(||g_1||, ..., ||g_P||)||: one foreach kernel, not get_total_norm's per-call grouping.
        norm = torch.linalg.vector_norm(torch.stack(torch._foreach_norm(grads)))
        if self.max_grad_norm is not None:
            self.clip_gradients(optimizer, gradient_clip_val=self.max_grad_norm, gradient_clip_algorithm="norm")
        return norm

    def _record(self, module_values: list[Tensor], objective_metrics: dict[str, Tensor]) -> None:
        """Queue one update's diagnostics; :meth:`_flush` hands them to the metric in one call."""
        if self.train_diagnostics is None:
            names = list(MODULE_METRICS) + list(objective_metrics)
            self.train_diagnostics = Diagnostics(names).to(self.device)
        self._pending += module_values
        self._pending += objective_metrics.values()
        if len(self._pending) >= PENDING_STEPS * len(self.train_diagnostics.names):
            self._flush()

    def _flush(self) -> None:
        """One batched metric update for every queued step (a metric call per step costs more
        than all the diagnostics of a seed-size step)."""
        if self._pending:
            self.train_diagnostics.update(torch.stack(self._pending))  # [S * K] -> [S, K] in update
            self._pending.clear()

    def _log_train(self) -> None:
        self._flush()
        values = self.train_diagnostics.compute()  # synchronised across ranks
        self.train_diagnostics.reset()
        metrics = {f"train/{k}": v for k, v in values.items()}
        # What self.log_dict(metrics, on_step=True) writes (same loggers, step, logged_metrics and
        # callback_metrics) without its ResultCollection, which costs a copy of every key's state
        # per call and a pass over every registered key per batch: a fifth of a seed-size step.
        self.trainer._logger_connector.log_metrics(metrics)
        self.trainer.callback_metrics.update(metrics)
        self.log("reward", values["reward"], prog_bar=True, logger=False)

    # -- validation ----------------------------------------------------------------------
    def validation_step(self, batch: list[Tensor], batch_idx: int) -> None:
        (queries,) = batch
        rollout = self.policy.sample(queries, greedy=True)
        self.val_reward.update(self.task.reward(queries, rollout.responses, rollout.mask))
        self.val_exact_match.update(self.task.exact_match(queries, rollout.responses, rollout.mask).float())
        self.log("val/reward", self.val_reward, on_epoch=True, prog_bar=True)
        self.log("val/exact_match", self.val_exact_match, on_epoch=True, prog_bar=True)


def _check_optimizer(optimizer: OptimizerCallable) -> None:
    """Build the optimizer once on a dummy parameter, so that a bad ``lr`` fails before any run starts."""
    try:
        probe = optimizer([torch.nn.Parameter(torch.zeros(1))])
    except (TypeError, ValueError) as err:
        hint = " (lr must be a finite number > 0)" if "learning rate" in str(err) else ""
        raise ConfigError(f"model.optimizer: {err}{hint}") from None
    for group in probe.param_groups:
        lr = group.get("lr")
        if lr is not None and not (math.isfinite(float(lr)) and float(lr) > 0):
            raise ConfigError(f"lr must be a finite number > 0; got {lr!r}")

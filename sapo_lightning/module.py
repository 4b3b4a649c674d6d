"""The LightningModule: old/new policy pair, rollouts, advantages and one injected objective."""

from __future__ import annotations

import copy
import math
from collections.abc import Callable
from typing import Any, Literal

import torch
from lightning.pytorch import LightningModule, Trainer
from lightning.pytorch.cli import OptimizerCallable
from torch import Tensor, nn
from torchmetrics import MeanMetric

from sapo_lightning.advantages import check_group, group_advantages_with_stats
from sapo_lightning.checks import ConfigError, check_int, check_positive, fail
from sapo_lightning.metrics import Diagnostics
from sapo_lightning.objectives import Objective, masked_mean
from sapo_lightning.policies import Policy
from sapo_lightning.tasks import Task


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
        self.save_hyperparameters(ignore=["task"])
        self.automatic_optimization = False
        self.task = task
        self.objective = objective
        self.group_size = group_size
        self.updates_per_rollout = check_int("updates_per_rollout", updates_per_rollout, 1)
        self.advantage_scale = advantage_scale
        self.max_grad_norm = check_positive("max_grad_norm", max_grad_norm, allow_none=True)
        self.optimizer_factory = optimizer
        _check_optimizer(optimizer)
        self.policy = policy(task)
        self.old_policy = copy.deepcopy(self.policy).requires_grad_(False).eval()
        self.train_diagnostics = Diagnostics()
        self.eval_metrics = nn.ModuleDict(
            {f"{stage}_{name}": MeanMetric() for stage in ("val", "test") for name in ("reward", "exact_match")}
        )
        self.grad_norm = torch.tensor(math.nan)  # of the last update, set in on_before_optimizer_step

    # -- the loop's invariants and state ---------------------------------------------------
    def check_trainer(self, trainer: Trainer) -> None:
        """Refuse a Trainer this loop cannot run with (called by ``setup``; the CLI calls it before writing)."""
        max_steps, updates = trainer.max_steps, self.updates_per_rollout
        if max_steps > 0 and max_steps % updates:
            fail("trainer.max_steps", f"a multiple of model.updates_per_rollout={updates} "
                 f"(a rollout batch makes {updates} optimizer steps)", max_steps)

    def setup(self, stage: str) -> None:
        if stage == "fit":
            self.check_trainer(self.trainer)

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
            rollout = self.old_policy.sample(queries, generator)  # [N, T] each, log-probs of π_old
            rewards = self.task.reward(queries, rollout.responses, rollout.mask)  # [N]
            groups = group_advantages_with_stats(rewards, self.group_size, self.advantage_scale)
            rollout_stats = {
                "reward": rewards.mean(),
                "reward_std": groups.std.mean(),
                "zero_adv_frac": groups.zero_signal.float().mean(),
            }

        optimizer = self.optimizers()
        for _ in range(self.updates_per_rollout):  # the first update is on-policy, the later ones stale
            scores = self.policy.score(queries, rollout.responses)  # [N, T] each
            out = self.objective(scores.log_probs, rollout.log_probs, groups.advantages, rollout.mask)
            optimizer.zero_grad(set_to_none=True)
            self.manual_backward(out.loss)
            optimizer.step()  # runs on_before_optimizer_step: gradient norm and clipping
            self.train_diagnostics.record({
                **rollout_stats,
                "loss": out.loss.detach(),
                "entropy": masked_mean(scores.entropy.detach(), rollout.mask),
                "grad_norm": self.grad_norm,
                **out.metrics,
            })
        self.log_diagnostics()

    def on_before_optimizer_step(self, optimizer: torch.optim.Optimizer) -> None:
        # Called inside optimizer.step(), after any AMP unscale: norm and clip see the true gradients.
        grads = [p.grad for p in self.policy.parameters() if p.grad is not None]
        self.grad_norm = torch.nn.utils.get_total_norm(grads).detach()
        if self.max_grad_norm is not None:
            self.clip_gradients(optimizer, gradient_clip_val=self.max_grad_norm, gradient_clip_algorithm="norm")

    def log_diagnostics(self) -> None:
        """Every ``trainer.log_every_n_steps`` rollout batches: the diagnostics' mean/min/max since the last log."""
        batches = self.global_step // self.updates_per_rollout  # rollout batches done, this one included
        every = self.trainer.log_every_n_steps
        if not every or batches % every:
            return
        values = self.train_diagnostics.pop()  # synchronised across ranks
        self.log("train/reward", values["reward"], prog_bar=True, logger=False)  # bar and monitors
        # Straight to the loggers: self.log would keep every key in the epoch's ResultCollection,
        # walked again on every batch. The step is the batch counter, as for self.log.
        metrics = {f"train/{name}": value.item() for name, value in values.items()} | {"epoch": self.current_epoch}
        for logger in self.loggers:
            logger.log_metrics(metrics, step=batches - 1)

    # -- evaluation ----------------------------------------------------------------------
    def validation_step(self, batch: list[Tensor], batch_idx: int) -> None:
        self._evaluate(batch, "val")

    def test_step(self, batch: list[Tensor], batch_idx: int) -> None:
        self._evaluate(batch, "test")

    def _evaluate(self, batch: list[Tensor], stage: str) -> None:
        """Greedy decoding: mean reward and share of exactly right responses, over the whole set."""
        (queries,) = batch
        rollout = self.policy.sample(queries, greedy=True)
        reward, exact = self.eval_metrics[f"{stage}_reward"], self.eval_metrics[f"{stage}_exact_match"]
        reward.update(self.task.reward(queries, rollout.responses, rollout.mask))
        exact.update(self.task.exact_match(queries, rollout.responses, rollout.mask).float())
        self.log(f"{stage}/reward", reward, on_epoch=True, prog_bar=True)
        self.log(f"{stage}/exact_match", exact, on_epoch=True, prog_bar=True)


def _check_optimizer(optimizer: OptimizerCallable) -> None:
    """Build the optimizer once on a dummy parameter, so that a bad ``lr`` fails before any run starts."""
    try:
        probe = optimizer([torch.nn.Parameter(torch.zeros(1))])
    except (TypeError, ValueError) as err:
        hint = " (lr must be a finite number > 0)" if "learning rate" in str(err) else ""
        raise ConfigError(f"optimizer: {err}{hint}") from None
    for group in probe.param_groups:
        if group.get("lr") is not None:
            check_positive("lr", float(group["lr"]))

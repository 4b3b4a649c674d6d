"""The LightningModule: old/new policy pair, rollouts, advantages and one injected objective."""

from __future__ import annotations

import copy
import math
from collections.abc import Callable
from typing import Any, Literal

import torch
from lightning.pytorch import LightningModule, Trainer
from lightning.pytorch.cli import OptimizerCallable
from lightning.pytorch.plugins.precision import Precision
from torch import Tensor, nn
from torchmetrics import MeanMetric

from sapo_lightning.advantages import GroupAdvantages, check_group, group_advantages_with_stats
from sapo_lightning.checks import ConfigError, check_int, check_positive, fail
from sapo_lightning.metrics import Diagnostics
from sapo_lightning.objectives import Objective, masked_mean
from sapo_lightning.policies import Policy, Rollout
from sapo_lightning.tasks import Rewards, Task


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
        pass_k: Also sample k responses per evaluation query and log ``val/pass@k/...``: the
            share of queries with at least one exactly right response (null: greedy only).
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
        pass_k: int | None = None,
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
        self.pass_k = check_int("pass_k", pass_k, 1, allow_none=True)
        self.eval_metrics = nn.ModuleDict()  # "val/<name>" -> MeanMetric, made at the first evaluation
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
        generator = torch.Generator(device=self.device).manual_seed(batch["seed"])
        with torch.no_grad():
            rollout = self.old_policy.sample(queries, generator)  # [N, T] each, log-probs of π_old
            rewards = self.task.rewards(queries, rollout.responses, rollout.mask)  # total [N], terms [N] each
            groups = group_advantages_with_stats(rewards.total, self.group_size, self.advantage_scale)
            rollout_stats = rollout_diagnostics(rewards, groups, rollout)

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
        params = [p for group in optimizer.param_groups for p in group["params"]]
        norm = torch.nn.utils.get_total_norm([p.grad for p in params if p.grad is not None])
        self.grad_norm = norm.detach().to(self.device)  # CPU if no gradient
        if self.max_grad_norm is None:
            return
        if type(self.trainer.precision_plugin) is Precision:
            # What Lightning's clip_gradients does here (clip_grad_norm_ over the optimizer's parameters),
            # bit for bit, with the norm just taken instead of a second one (~1% of a transformer step).
            torch.nn.utils.clip_grads_with_norm_(params, self.max_grad_norm, norm)
        else:  # AMP, FSDP, DeepSpeed ...: the precision plugin's own clipping
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
    def validation_step(self, batch: dict[str, Any], batch_idx: int) -> None:
        self._evaluate(batch["queries"], batch_idx, "val")

    def test_step(self, batch: dict[str, Any], batch_idx: int) -> None:
        self._evaluate(batch["queries"], batch_idx, "test")

    def _evaluate(self, queries: Any, batch_idx: int, stage: str) -> None:
        """Greedy decoding, and with ``pass_k`` k samples per query: means over the whole set."""
        rollout = self.policy.sample(queries, greedy=True)
        values = self.task.evaluate(queries, rollout.responses, rollout.mask)  # name -> [B]
        if self.pass_k:
            repeated = queries.repeat_interleave(self.pass_k, 0)  # k samples of each query, side by side
            samples = self.policy.sample(repeated, torch.Generator(device=self.device).manual_seed(batch_idx))
            sampled = self.task.evaluate(repeated, samples.responses, samples.mask)
            for name in ("exact_match", *(n for n in sampled if n.startswith("accuracy/"))):
                values[f"pass@{self.pass_k}/{name}"] = sampled[name].view(-1, self.pass_k).amax(-1)  # [B]
        for name, value in values.items():
            key = f"{stage}/{name}"
            if key not in self.eval_metrics:  # a task's names are known at its first evaluation
                self.eval_metrics[key] = MeanMetric(nan_strategy="ignore").to(self.device)  # NaN: does not apply
            self.eval_metrics[key].update(value)
            self.log(key, self.eval_metrics[key], on_epoch=True, prog_bar=name in ("reward", "exact_match"),
                     metric_attribute=f"eval_metrics.{key}")


def rollout_diagnostics(rewards: Rewards, groups: GroupAdvantages, rollout: Rollout) -> dict[str, Tensor]:
    """What one rollout batch looked like: rewards, their spread, response lengths."""
    lengths = rollout.mask.sum(-1).float()  # [N]
    stats = {
        "reward": rewards.total.mean(),
        "reward_std": groups.std.mean(),
        "zero_adv_frac": groups.zero_signal.float().mean(),
        "completion_len": lengths.mean(),
        "completion_len_max": lengths.max(),
    }
    if rollout.truncated is not None:
        stats["truncated_frac"] = rollout.truncated.float().mean()
    return stats | {f"rewards/{name}": term.nanmean() for name, term in rewards.terms.items()}


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

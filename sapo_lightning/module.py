"""The LightningModule: the RL loop (sample, reward, advantages, updates) around one injected objective.

What the loop leans on lives beside it: π_old / π_ref copies in :mod:`~sapo_lightning.frozen`, a
checkpoint's contents in :mod:`~sapo_lightning.checkpoint_state`, config checks in
:mod:`~sapo_lightning.checks`, FSDP in :mod:`~sapo_lightning.sharding`, the non-finite guard in
:mod:`~sapo_lightning.nonfinite`.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from contextlib import nullcontext
from typing import Any, Literal

import torch
from lightning.pytorch import LightningModule, Trainer
from lightning.pytorch.cli import OptimizerCallable
from lightning.pytorch.plugins.precision import Precision
from lightning.pytorch.utilities import move_data_to_device
from torch import Tensor, nn
from torchmetrics import MeanMetric

from sapo_lightning.advantages import GroupAdvantages, check_group, group_advantages_with_stats
from sapo_lightning.callbacks import require_old_policy_sync
from sapo_lightning.checkpoint_state import drop_frozen_weights, fit_to_run
from sapo_lightning.checks import check_int, check_number, check_optimizer, check_positive, check_schedule, fail
from sapo_lightning.dynamic_sampling import Draw, informative, keep_informative
from sapo_lightning.frozen import Frozen, evaluating, freeze, refresh
from sapo_lightning.metrics import Diagnostics, combine_micro_batches
from sapo_lightning.nonfinite import NonFiniteGuard
from sapo_lightning.objectives import Objective, aggregate, k3_kl, masked_mean, micro_batch_share
from sapo_lightning.policies import Policy, Rollout, concat_rollouts, take, take_rollout
from sapo_lightning.sharding import data_parallel_mesh, shard_with_copies
from sapo_lightning.tasks import Rewards, Task


class RLModule(LightningModule):
    """Group-relative policy optimization with an injected objective (SAPO by default).

    Each training batch holds ``batch_size`` queries. Every query gets ``group_size``
    responses sampled from the frozen ``old_policy``, whose log-probs are kept as the
    constant π_old. Rewards become group-relative advantages over the whole batch; the batch
    is then split into ``mini_batches`` parts of whole groups, each one optimizer step on
    ``objective(log_probs, old_log_probs, advantages, mask)``, and the pass over the parts is
    made ``updates_per_rollout`` times: :attr:`steps_per_rollout` optimizer steps per rollout
    batch. The module never looks at which objective it holds: it logs whatever diagnostics
    the objective returns under ``train/``.

    A fit needs :class:`~sapo_lightning.callbacks.OldPolicySync` among the Trainer's callbacks
    (``sapo-lightning fit`` adds it as ``sync``): it decides when π_old ← π_θ.

    Args:
        policy: Policy class and its own arguments; the task supplies vocabulary and lengths.
        objective: The loss (``SAPO``, or a baseline) with its hyperparameters.
        task: Rewards; linked from ``data.task`` by the CLI.
        group_size: Responses sampled per query (G); advantages are relative within a group.
        updates_per_rollout: Passes (epochs) over the rollout batch's mini-batches, as TRL's
            ``num_iterations`` and verl's ``ppo_epochs``. Only the first step of a rollout can be
            on-policy; the later ones are where a gate or clip acts.
        mini_batches: Parts (M) each rollout batch is split into, each of data.batch_size / M
            queries' groups and one optimizer step (the paper: 4; TRL's ``steps_per_generation``,
            verl's batch / ``ppo_mini_batch_size``). Must divide data.batch_size.
        filter_groups: Dynamic sampling (DAPO): drop the groups whose rewards are all equal
            (no gradient) and draw more queries until the batch holds data.batch_size groups
            that carry a signal, or ``max_sampling_rounds`` is reached (then the first groups
            without signal fill the batch). Logs ``train/groups_drawn``, ``train/groups_kept``,
            ``train/sampling_rounds`` and ``train/reward_drawn`` (the first round's reward).
        max_sampling_rounds: Most sampling rounds of data.batch_size queries per rollout batch
            with ``filter_groups``, the first one included (1: filter, never draw more).
        entropy_coef: Weight c of an entropy bonus: the loss gets −c·H, the policy's entropy
            per token aggregated as the objective's loss; logged as ``train/entropy_bonus``.
            0 (default): none, and the entropy stays a diagnostic without gradient.
        advantage_scale: ``group`` divides by the group's std (GRPO, SAPO); ``none`` keeps
            R − mean (Dr.GRPO).
        optimizer: Optimizer class and arguments (``lr`` among them) for the policy.
        max_grad_norm: Clip the gradient norm to this value; None disables clipping.
        pass_k: Also sample k responses per evaluation query and log ``val/pass@k/...``: the
            share of queries with at least one exactly right response (null: greedy only).
        micro_batch_size: Responses per forward/backward pass (null: all at once). Sampling,
            scoring and each update run in chunks of this size and the gradients accumulate,
            so an optimizer step is its mini-batch's for every aggregation; peak memory
            follows the chunk. Must divide a mini-batch's responses, B·G / M.
        beta: Weight of a KL penalty to the reference policy (the initial weights; with LoRA
            the base model), k3 estimator per token, aggregated as the objective's loss;
            logged as ``train/ref_kl``. 0 (default) builds no reference.
        max_nonfinite_steps: Optimizer steps in a row with a non-finite loss or gradient norm
            that stop the run (exit 1; its checkpoints keep the last finite weights). Each such
            step is skipped: weights and optimizer state stay as they were, it still counts in
            ``global_step``, and ``train/nonfinite_steps`` counts it. Null: skip, never stop.
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
    ) -> None:
        super().__init__()
        check_group(group_size, advantage_scale)
        self.save_hyperparameters(ignore=["task"])
        self.automatic_optimization = False
        self.task = task
        self.objective = objective
        self.group_size = group_size
        self.updates_per_rollout = check_int("updates_per_rollout", updates_per_rollout, 1)
        self.mini_batches = check_int("mini_batches", mini_batches, 1)
        if filter_groups and group_size < 2:
            fail("filter_groups", f"false with group_size={group_size} (a group of one response has no spread "
                 "to filter on)", filter_groups)
        self.filter_groups = filter_groups
        self.max_sampling_rounds = check_int("max_sampling_rounds", max_sampling_rounds, 1)
        self.entropy_coef = check_number("entropy_coef", entropy_coef, 0)
        self.advantage_scale = advantage_scale
        self.max_grad_norm = check_positive("max_grad_norm", max_grad_norm, allow_none=True)
        check_optimizer(optimizer)
        self.optimizer_factory = optimizer
        self.micro_batch_size = check_int("micro_batch_size", micro_batch_size, 1, allow_none=True)
        self.beta = check_number("beta", beta, 0)
        self.guard = NonFiniteGuard(max_nonfinite_steps)
        self.policy = policy(task)
        # π_old and π_ref (see sapo_lightning.frozen), built by configure_model once the run is known
        self.old_policy: Frozen = None
        self.ref_policy: Frozen = None
        self.keep_old_copy(True)  # until OldPolicySync, which a fit requires, decides
        self._sharded = False  # by configure_model, under ModelParallelStrategy (FSDP2)
        self.train_diagnostics = Diagnostics()
        self.pass_k = check_int("pass_k", pass_k, 1, allow_none=True)
        self.eval_metrics = nn.ModuleDict()  # "val/<name>" -> MeanMetric, made at the first evaluation
        self.grad_norm = torch.tensor(math.nan)  # of the last update, set in on_before_optimizer_step
        self.loss_finite = torch.tensor(True)  # of the update being stepped, read by on_before_optimizer_step

    @property
    def steps_per_rollout(self) -> int:
        """Optimizer steps per rollout batch (S): ``updates_per_rollout`` passes over ``mini_batches`` parts."""
        return self.updates_per_rollout * self.mini_batches

    # -- the loop ------------------------------------------------------------------------
    def training_step(self, batch: dict[str, Any], batch_idx: int) -> None:
        generator = torch.Generator(device=self.device).manual_seed(batch["seed"])
        with torch.no_grad():
            (queries, rollout, rewards), sampling = self.draw(batch, generator)  # [N, ...], N = B * G
            groups = group_advantages_with_stats(rewards.total, self.group_size, self.advantage_scale)
            ref_log_probs = self.reference_log_probs(queries, rollout, self.micro_batches(len(queries)))  # [N, T]
            # per mini-batch: its rows, its micro-batches' rows within it, and each one's weight in its loss
            plan = [(rows, *self.chunk_shares(rollout.mask[rows])) for rows in self.mini_batch_rows(len(queries))]
        rollout_stats = rollout_diagnostics(rewards, groups, rollout) | sampling
        for _ in range(self.updates_per_rollout):  # the first step is on-policy, the later ones stale
            for rows, chunks, shares in plan:
                metrics = self.update(take(queries, rows), take_rollout(rollout, rows), groups.advantages[rows],
                                      take(ref_log_probs, rows), chunks, shares)
                self.train_diagnostics.record(rollout_stats | metrics)
                self.log_diagnostics()

    def draw(self, batch: dict[str, Any], generator: torch.Generator) -> tuple[Draw, dict[str, Tensor]]:
        """The rollout batch (queries repeated G times, responses from π_old, rewards) and, with
        ``filter_groups``, what its dynamic sampling took (see :mod:`~sapo_lightning.dynamic_sampling`)."""
        queries = batch["queries"].repeat_interleave(self.group_size, 0)  # [N, ...]
        rollout = self.sample_rollout(queries, self.micro_batches(len(queries)), generator)  # [N, T] each
        first = Draw(queries, rollout, self.task.rewards(queries, rollout.responses, rollout.mask))
        if not self.filter_groups:
            return first, {}
        size, draws = len(batch["queries"]), [first]
        # every rank draws as many rounds (sampling may be collective, as under FSDP): until none is short
        while len(draws) < self.max_sampling_rounds and self.short_on_any_rank(draws, size):
            more = move_data_to_device(batch["refill"](len(draws)), self.device).repeat_interleave(self.group_size, 0)
            extra = self.sample_rollout(more, self.micro_batches(len(more)), generator)  # the same generator, on
            draws.append(Draw(more, extra, self.task.rewards(more, extra.responses, extra.mask)))
        kept, informative_groups = keep_informative(draws, size, self.group_size, self.policy.pad_token)
        counts = torch.tensor([size * len(draws), informative_groups, len(draws)], dtype=torch.float32, device=self.device)
        return kept, dict(zip(("groups_drawn", "groups_kept", "sampling_rounds"), counts.unbind())) | {
            "reward_drawn": first.rewards.total.mean()}

    def short_on_any_rank(self, draws: list[Draw], size: int) -> bool:
        """Whether any rank holds fewer than ``size`` informative groups in its ``draws``."""
        found = sum(int(informative(draw, self.group_size).sum()) for draw in draws)
        short = torch.tensor(float(found < size), device=self.device)
        return self.trainer.strategy.reduce(short, reduce_op="sum").item() > 0

    def sample_rollout(self, queries: Any, chunks: list[slice], generator: torch.Generator) -> Rollout:
        """Responses sampled from π_old, chunk by chunk, with the log-probs of the distribution sampled from."""
        with evaluating(self.old_policy, self.policy) as behaviour:
            rollouts = [behaviour.sample(take(queries, rows), generator) for rows in chunks]
        return concat_rollouts(rollouts, self.policy.pad_token)

    def reference_log_probs(self, queries: Any, rollout: Rollout, chunks: list[slice]) -> Tensor | None:
        """π_ref's log-probs of the rollout's responses, [N, T] (None: no KL penalty)."""
        if self.ref_policy is None:
            return None
        with evaluating(self.ref_policy, self.policy) as reference:
            return torch.cat([reference.score(take(queries, rows), rollout.responses[rows]).log_probs for rows in chunks])

    def update(
        self, queries: Any, rollout: Rollout, advantages: Tensor, ref_log_probs: Tensor | None,
        chunks: list[slice], shares: list[Tensor | float | None],
    ) -> dict[str, Tensor]:
        """One optimizer step on a mini-batch: each chunk's gradient accumulates, then the step (skipped
        when the loss or the gradient norm is not finite); the update's diagnostics."""
        optimizer = self.optimizers()
        optimizer.zero_grad(set_to_none=True)
        losses, parts = [], []
        for index, (rows, share) in enumerate(zip(chunks, shares)):
            # under DDP the gradients are all-reduced once, at the last chunk's backward
            with optimizer.toggle_model(sync_grad=index == len(chunks) - 1) if len(chunks) > 1 else nullcontext():
                loss, metrics = self.accumulate(take(queries, rows), take_rollout(rollout, rows), advantages[rows],
                                                take(ref_log_probs, rows), share)
            losses.append(loss)
            parts.append(metrics)
        self.loss_finite = torch.stack(losses).isfinite().all()
        optimizer.step()  # runs on_before_optimizer_step: gradient norm, non-finite guard, clipping
        metrics = parts[0] if len(parts) == 1 else combine_micro_batches(parts, shares)
        return metrics | {"grad_norm": self.grad_norm}

    def accumulate(
        self, queries: Any, rollout: Rollout, advantages: Tensor, ref_log_probs: Tensor | None,
        share: Tensor | float | None,
    ) -> tuple[Tensor, dict[str, Tensor]]:
        """Backward of one micro-batch's loss, weighted by its ``share`` of the mini-batch's (None: the
        whole mini-batch); the loss (unweighted, detached) and its diagnostics."""
        bonus = self.entropy_coef > 0
        scores = self.policy.score(queries, rollout.responses, entropy_grad=bonus)  # [n, T] each
        out = self.objective(scores.log_probs, rollout.log_probs, advantages, rollout.mask)
        loss = out.loss
        metrics = {"loss": out.loss.detach(), "entropy": masked_mean(scores.entropy.detach(), rollout.mask)}
        if bonus:
            term = -self.entropy_coef * aggregate(scores.entropy, rollout.mask, self.objective.aggregation)
            loss = loss + term
            metrics["entropy_bonus"] = term.detach()
        if ref_log_probs is not None:
            kl = k3_kl(scores.log_probs, ref_log_probs)  # [n, T]
            loss = loss + self.beta * aggregate(kl, rollout.mask, self.objective.aggregation)
            metrics["ref_kl"] = masked_mean(kl.detach(), rollout.mask)
        self.manual_backward(loss if share is None else loss * share)
        return loss.detach(), metrics | out.metrics

    def micro_batches(self, n: int) -> list[slice]:
        """Consecutive row slices of at most ``micro_batch_size`` rows covering ``n`` rows."""
        size = self.micro_batch_size
        if size is None or size >= n:
            return [slice(None)]
        return [slice(start, start + size) for start in range(0, n, size)]

    def mini_batch_rows(self, n: int) -> list[slice]:
        """The ``mini_batches`` consecutive row slices of ``n`` rows, each of whole groups."""
        if self.mini_batches == 1:
            return [slice(None)]
        size = n // self.mini_batches
        return [slice(start, start + size) for start in range(0, n, size)]

    def chunk_shares(self, mask: Tensor) -> tuple[list[slice], list[Tensor | float | None]]:
        """A mini-batch's micro-batch rows and each one's weight in its loss (None: one chunk, the whole)."""
        chunks = self.micro_batches(len(mask))
        if len(chunks) == 1:
            return chunks, [None]
        return chunks, [micro_batch_share(self.objective.aggregation, mask[rows], mask) for rows in chunks]

    def on_before_optimizer_step(self, optimizer: torch.optim.Optimizer) -> None:
        # Called inside optimizer.step(), after any AMP unscale: norm, guard and clip see the true gradients.
        params = [p for group in optimizer.param_groups for p in group["params"]]
        norm = torch.nn.utils.get_total_norm([p.grad for p in params if p.grad is not None]).detach()
        if hasattr(norm, "full_tensor"):  # FSDP2: a DTensor over the sharded gradients
            norm = norm.full_tensor()
        self.grad_norm = norm.to(self.device)  # CPU if no gradient
        if not self.guard.admit(self.step_is_finite(), self.global_step + 1):
            optimizer.zero_grad(set_to_none=True)  # no gradient: the optimizer's step changes no weight, no state
            return
        if self.max_grad_norm is None:
            return
        if type(self.trainer.precision_plugin) is Precision:
            # What Lightning's clip_gradients does here (clip_grad_norm_ over the optimizer's parameters),
            # bit for bit, with the norm just taken instead of a second one (~1% of a transformer step).
            torch.nn.utils.clip_grads_with_norm_(params, self.max_grad_norm, norm)
        else:  # AMP, FSDP, DeepSpeed ...: the precision plugin's own clipping
            self.clip_gradients(optimizer, gradient_clip_val=self.max_grad_norm, gradient_clip_algorithm="norm")

    def step_is_finite(self) -> bool:
        """Whether the step's loss and gradient norm are finite on every rank, so that all ranks skip alike.
        Under a gradient scaler (16-mixed) an overflowing gradient is the scaler's to skip (at a lower
        scale, as in any AMP run): only the loss is judged."""
        finite = self.loss_finite.to(self.device)
        if getattr(self.trainer.precision_plugin, "scaler", None) is None:
            finite = finite & self.grad_norm.isfinite()
        refusals = self.trainer.strategy.reduce((~finite).float(), reduce_op="sum")  # ranks with a non-finite value
        return refusals.item() == 0

    def log_diagnostics(self) -> None:
        """Every ``trainer.log_every_n_steps`` optimizer steps: the diagnostics' mean/min/max since the last
        log, and the skipped steps of the run so far, at x = global_step − 1 (the first step is 0)."""
        every = self.trainer.log_every_n_steps
        if not every or self.global_step % every:
            return
        values = self.train_diagnostics.pop()  # synchronised across ranks
        if "reward" in values:  # left out when every reward since the last log was NaN
            self.log("train/reward", values["reward"], prog_bar=True, logger=False)  # bar and monitors
        # Straight to the loggers: self.log would keep every key in the epoch's ResultCollection,
        # walked again on every batch.
        metrics = {f"train/{name}": value.item() for name, value in values.items()}
        metrics |= {"train/nonfinite_steps": self.guard.skipped, "epoch": self.current_epoch}
        for logger in self.loggers:
            logger.log_metrics(metrics, step=self.global_step - 1)


    # -- the run around it: checks, π_old / π_ref, sharding, checkpoints -----------------------
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
        """Whether π_old is a frozen copy (lagged) or the live policy itself (refreshed before every
        rollout, so equal to π_θ when it samples); called by :class:`~sapo_lightning.callbacks.OldPolicySync`."""
        self._keep_old_copy = keep

    def sync_old_policy(self) -> None:
        """π_old ← π_θ (called by :class:`~sapo_lightning.callbacks.OldPolicySync`)."""
        refresh(self.old_policy, self.policy)

    def configure_model(self) -> None:
        # Before any strategy wraps the policy, and before a checkpoint is restored into the copies.
        try:
            fitting = self.trainer.state.fn == "fit"  # evaluation samples from π_θ only
        except RuntimeError:  # not attached to a Trainer: built from Python, for training
            fitting = True
        if fitting:
            if self._keep_old_copy and self.old_policy is None:
                self.old_policy = freeze(self.policy)
            if self.beta > 0 and self.ref_policy is None:
                self.ref_policy = freeze(self.policy)
        if self.device_mesh is not None and not self._sharded:
            self.old_policy, self.ref_policy = shard_with_copies(
                self.policy, (self.old_policy, self.ref_policy), data_parallel_mesh(self.device_mesh))
            self._sharded = True

    def train(self, mode: bool = True) -> RLModule:
        super().train(mode)
        for frozen in (self.old_policy, self.ref_policy):
            if isinstance(frozen, Policy):
                frozen.eval()  # a frozen copy always evaluates in eval mode
        return self

    def configure_optimizers(self) -> torch.optim.Optimizer:
        # the trainable parameters only: with LoRA, the adapters (the frozen base gets no state)
        return self.optimizer_factory([p for p in self.policy.parameters() if p.requires_grad])

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        checkpoint["nonfinite_steps"] = self.guard.skipped
        if not self._sharded:  # a sharded (FSDP) checkpoint keeps every weight: it loads strictly
            drop_frozen_weights(checkpoint, self.policy)

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        self.guard.skipped = checkpoint.get("nonfinite_steps", 0)
        fit_to_run(checkpoint, self.state_dict(), self.policy, self.old_policy, self.ref_policy)

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

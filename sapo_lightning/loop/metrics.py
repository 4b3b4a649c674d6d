"""What a rollout batch looked like, and the aggregation of per-update diagnostics across steps and ranks."""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor
from torchmetrics import Metric

from sapo_lightning.advantages import GroupAdvantages
from sapo_lightning.rollout import Rollout
from sapo_lightning.tasks import Rewards

MEAN, MIN, MAX = 0, 1, 2


def reduction(name: str) -> int:
    """How a diagnostic combines across updates, micro-batches and ranks: by its name's suffix."""
    return MAX if name.endswith("_max") else MIN if name.endswith("_min") else MEAN


def combine_micro_batches(parts: list[dict[str, Tensor]], shares: list[Tensor | float]) -> dict[str, Tensor]:
    """One update's diagnostics from its micro-batches': ``_min`` / ``_max`` names by min / max, the
    others by the mean weighted by each micro-batch's share of the loss, skipping non-finite values."""
    combined = {}
    weights = torch.stack([torch.as_tensor(w, dtype=torch.float32) for w in shares]).to(parts[0]["loss"].device)  # [C]
    for name in parts[0]:
        values = torch.stack([part[name].float() for part in parts])  # [C]
        kind = reduction(name)
        if kind == MIN:
            combined[name] = values.amin()
        elif kind == MAX:
            combined[name] = values.amax()
        else:
            finite = torch.isfinite(values)
            w = torch.where(finite, weights, 0.0)
            combined[name] = torch.where(finite, values, 0.0).mul(w).sum() / w.sum()  # NaN if none is finite
    return combined


class Diagnostics(Metric):
    """Running mean, min and max of named scalars, synchronised across ranks.

    ``record({name: scalar})`` adds one update's values; the names are fixed by the first call.
    Records are queued and handed to ``update`` in one ``[S, K]`` tensor every ``flush_every``
    updates and at ``pop``, because a metric call per small training step costs more than the
    step's diagnostics. ``pop`` returns the aggregate since the last ``pop`` and starts anew:
    names ending in ``_min`` give the minimum, ``_max`` the maximum, any other the mean.
    Non-finite values (a mean over an empty selection) are skipped; a name with no finite
    value is left out of the result.

    Args:
        flush_every: Updates queued before one batched metric update.
    """

    full_state_update = False

    def __init__(self, flush_every: int = 64) -> None:
        super().__init__()
        self.flush_every = flush_every
        self.names: list[str] = []
        self.queue: list[Tensor] = []  # scalars of the queued updates, in ``names`` order

    def record(self, values: dict[str, Tensor]) -> None:
        if not self.names:
            self._add_states(list(values), next(iter(values.values())).device)
        self.queue += [values[name] for name in self.names]
        if len(self.queue) >= self.flush_every * len(self.names):
            self.flush()

    def flush(self) -> None:
        if self.queue:
            self.update(torch.stack(self.queue))
            self.queue.clear()

    def pop(self) -> dict[str, Tensor]:
        """The aggregate of every update since the last ``pop`` (synchronised across ranks), then reset."""
        self.flush()
        values = self.compute()
        self.reset()
        return values

    def _add_states(self, names: list[str], device: torch.device) -> None:
        self.names = names
        k = len(names)
        zeros = torch.zeros(k, dtype=torch.float64, device=device)
        self.add_state("total", zeros.clone(), dist_reduce_fx="sum")
        self.add_state("count", zeros.clone(), dist_reduce_fx="sum")
        self.add_state("low", torch.full_like(zeros, float("inf")), dist_reduce_fx="min")
        self.add_state("high", torch.full_like(zeros, float("-inf")), dist_reduce_fx="max")
        self.reduce_kind = torch.tensor([reduction(n) for n in names])

    def update(self, values: Tensor) -> None:  # values: [S * K] or [S, K]
        values = values.to(torch.float64).view(-1, len(self.names))  # [S, K]
        finite = torch.isfinite(values)
        self.total += torch.where(finite, values, 0.0).sum(0)
        self.count += finite.sum(0)
        self.low = torch.minimum(self.low, torch.where(finite, values, float("inf")).amin(0))
        self.high = torch.maximum(self.high, torch.where(finite, values, float("-inf")).amax(0))

    def compute(self) -> dict[str, Tensor]:
        kind = self.reduce_kind.to(self.total.device)
        value = torch.where(kind == MAX, self.high, torch.where(kind == MIN, self.low, self.total / self.count))
        keep = (self.count > 0).tolist()
        return {name: v for name, v, k in zip(self.names, value.float(), keep) if k}


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
    if rollout.episodes is not None:
        stats |= episode_diagnostics(rollout)
    return stats | {f"rewards/{name}": term.nanmean() for name, term in rewards.terms.items()}


def log_train_diagnostics(module: Any, diagnostics: Diagnostics, extra: dict[str, float]) -> None:
    """Every ``trainer.log_every_n_steps`` optimizer steps of ``module``: the diagnostics' mean/min/max since the
    last log, and ``extra`` values, as ``train/<name>`` at x = global_step: the optimizer steps done, the axis of
    ``val/*`` and of the checkpoints' names (``step=10.ckpt`` holds the weights after the point at x = 10)."""
    every = module.trainer.log_every_n_steps
    if not every or module.global_step % every:
        return
    values = diagnostics.pop()  # synchronised across ranks
    if "reward" in values:  # left out when every reward since the last log was NaN
        module.log("train/reward", values["reward"], prog_bar=True, logger=False)  # bar and monitors
    # Straight to the loggers: self.log would keep every key in the epoch's ResultCollection, walked again
    # on every batch.
    metrics = {f"train/{name}": value.item() for name, value in values.items()}
    metrics |= {f"train/{name}": value for name, value in extra.items()} | {"epoch": module.current_epoch}
    for logger in module.loggers:
        logger.log_metrics(metrics, step=module.global_step)


def episode_diagnostics(rollout: Rollout) -> dict[str, Tensor]:
    """What the episodes of a rollout looked like: turns, how they ended, the environment's share of the
    transcripts' tokens, and the mean step reward of each turn (over the episodes that reached it)."""
    episodes = rollout.episodes
    stats = {"turns": episodes.turns.float().mean(),
             "env_token_frac": (rollout.attention & ~rollout.mask).sum() / rollout.attention.sum().clamp(min=1)}
    for index, ending in enumerate(episodes.ENDINGS):
        stats[f"ended_{ending}"] = (episodes.ended == index).float().mean()
    for turn in range(episodes.turn_rewards.shape[1]):
        stats[f"turn_reward/{turn + 1}"] = episodes.turn_rewards[:, turn].nanmean()
    return stats

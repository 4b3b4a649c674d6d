"""Evaluation: greedy decoding of the validation or test queries, and pass@k from k samples per query."""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn
from torchmetrics import MeanMetric

from sapo_lightning.policies import Policy
from sapo_lightning.tasks import Task


def evaluate(policy: Policy, task: Task, queries: Any, pass_k: int | None, seed: int) -> dict[str, Tensor]:
    """Per-query values ``[B]`` to average over the set: the task's values of the greedy responses and, with
    ``pass_k``, ``pass@k/<name>``, the share of queries with at least one of k sampled responses exactly
    right (for ``exact_match`` and each ``accuracy/<name>``); the k samples are drawn from ``seed``."""
    prompts, rollout = task.sample(policy, queries, greedy=True)
    values = task.evaluate(prompts, rollout)  # name -> [B]
    if pass_k:
        repeated = queries.repeat_interleave(pass_k, 0)  # k samples of each query, side by side
        generator = torch.Generator(device=rollout.responses.device).manual_seed(seed)
        sampled = task.evaluate(*task.sample(policy, repeated, generator))
        for name in ("exact_match", *(n for n in sampled if n.startswith("accuracy/"))):
            values[f"pass@{pass_k}/{name}"] = sampled[name].view(-1, pass_k).amax(-1)  # [B]
    return values


class EvalMetrics(nn.ModuleDict):
    """``<stage>/<name>`` -> a :class:`~torchmetrics.MeanMetric` over the whole set, made at a name's first value.

    The progress bar, the callbacks (a checkpoint monitor) and the results table of ``validate`` and ``test``
    read the means through ``module.log``. In a fit the loggers get them at the epoch's end at x = global_step,
    the axis of ``train/*``, so that a validation after 10 optimizer steps is the point at 10, as
    ``step=10.ckpt`` (Lightning's own logging would put it at its count of training batches)."""

    def log(self, module: Any, values: dict[str, Tensor], stage: str) -> None:
        """Add each value ``[B]`` (NaN: does not apply, left out) to its mean, logged as ``<stage>/<name>``."""
        for name, value in values.items():
            key = f"{stage}/{name}"
            if key not in self:  # a task's names are known at its first evaluation
                self[key] = MeanMetric(nan_strategy="ignore").to(value.device)
            self[key].update(value)
            module.log(key, self[key], on_epoch=True, prog_bar=name in ("reward", "exact_match"),
                       logger=module.trainer.state.fn != "fit", metric_attribute=f"eval_metrics.{key}")

    def log_epoch(self, module: Any, stage: str) -> None:
        """In a fit, the ``stage`` means (synchronised across ranks) to the module's loggers at x = global_step; none
        in the sanity check before training."""
        if module.trainer.state.fn != "fit" or module.trainer.sanity_checking:
            return
        values = {key: metric.compute().item() for key, metric in self.items()
                  if key.startswith(f"{stage}/") and metric.update_called}
        for logger in module.loggers:
            logger.log_metrics(values, step=module.global_step)

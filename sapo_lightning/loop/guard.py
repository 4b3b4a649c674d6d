"""The step guard: gradient norm, the non-finite decision shared by every rank, the skip, and clipping.

One NaN step would poison the weights and every later checkpoint. Each optimizer step goes through
:meth:`StepGuard.step`; inside ``optimizer.step()``, after any AMP unscale, Lightning's
``on_before_optimizer_step`` hands the optimizer to :meth:`StepGuard.inspect`, which takes the true
gradient norm, asks every rank whether its loss and norm are finite, and either skips the step (no
gradient: the weights and the optimizer state stay those of the last good step, so any checkpoint
holds finite values) or clips the gradients. K refused steps in a row stop the run.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from lightning.pytorch import LightningModule
from lightning.pytorch.plugins.precision import Precision
from torch import Tensor

from sapo_lightning.checks import RunFailed, check_int, check_positive


class NonFiniteTraining(RunFailed):
    """Too many optimizer steps in a row had a non-finite loss or gradient norm (the CLI exits 1)."""


class StepGuard:
    """Guards every optimizer step of a module under manual optimization.

    Args:
        max_nonfinite_steps: Non-finite steps in a row that stop the run; None never stops.
        max_grad_norm: Clip the gradient norm to this value; None disables clipping.
    """

    def __init__(self, max_nonfinite_steps: int | None = 3, max_grad_norm: float | None = None) -> None:
        self.max_in_a_row = check_int("max_nonfinite_steps", max_nonfinite_steps, 1, allow_none=True)
        self.max_grad_norm = check_positive("max_grad_norm", max_grad_norm, allow_none=True)
        self.skipped = 0  # refused steps over the run (checkpointed)
        self.in_a_row = 0
        self._loss_finite: Tensor | None = None  # of the step in flight, from step() to inspect()
        self._norm = torch.tensor(math.nan)

    def step(self, optimizer: Any, losses: list[Tensor]) -> Tensor:
        """``optimizer.step()`` for the gradients accumulated from ``losses``; the gradient norm before clipping."""
        self._loss_finite = torch.stack(losses).isfinite().all()
        optimizer.step()  # runs the module's on_before_optimizer_step, hence inspect()
        self._loss_finite = None
        return self._norm

    def inspect(self, module: LightningModule, optimizer: torch.optim.Optimizer) -> None:
        """Norm, guard and clip of the step in flight (called in ``on_before_optimizer_step``)."""
        params = [p for group in optimizer.param_groups for p in group["params"]]
        norm = torch.nn.utils.get_total_norm([p.grad for p in params if p.grad is not None]).detach()
        if hasattr(norm, "full_tensor"):  # FSDP2: a DTensor over the sharded gradients
            norm = norm.full_tensor()
        self._norm = norm.to(module.device)  # CPU if no gradient
        if not self.admit(self.finite_on_every_rank(module), module.global_step + 1):
            optimizer.zero_grad(set_to_none=True)  # no gradient: the optimizer's step changes no weight, no state
            return
        if self.max_grad_norm is None:
            return
        if type(module.trainer.precision_plugin) is Precision:
            # What Lightning's clip_gradients does here (clip_grad_norm_ over the optimizer's parameters),
            # bit for bit, with the norm just taken instead of a second one (~1% of a transformer step).
            torch.nn.utils.clip_grads_with_norm_(params, self.max_grad_norm, norm)
        else:  # AMP, FSDP, DeepSpeed ...: the precision plugin's own clipping
            module.clip_gradients(optimizer, gradient_clip_val=self.max_grad_norm, gradient_clip_algorithm="norm")

    def finite_on_every_rank(self, module: LightningModule) -> bool:
        """Whether the step's loss and gradient norm are finite on every rank, so that all ranks skip alike.
        Under a gradient scaler (16-mixed) an overflowing gradient is the scaler's to skip (at a lower
        scale, as in any AMP run): only the loss is judged."""
        finite = torch.tensor(True) if self._loss_finite is None else self._loss_finite
        finite = finite.to(module.device)
        if getattr(module.trainer.precision_plugin, "scaler", None) is None:
            finite = finite & self._norm.isfinite()
        refusals = module.trainer.strategy.reduce((~finite).float(), reduce_op="sum")  # ranks with a non-finite value
        return refusals.item() == 0

    def admit(self, finite: bool, step: int) -> bool:
        """Whether optimizer step ``step`` (1 is the first) may change the weights;
        raise at the K-th refusal in a row."""
        if finite:
            self.in_a_row = 0
            return True
        self.skipped += 1
        self.in_a_row += 1
        if self.max_in_a_row is not None and self.in_a_row >= self.max_in_a_row:
            raise NonFiniteTraining(
                f"{self.in_a_row} optimizer steps in a row (the last: step {step}) had a non-finite loss or "
                f"gradient norm (model.max_nonfinite_steps={self.max_in_a_row}); the run stopped, its checkpoints "
                f"hold the weights of the last finite step")
        return False

    def state_dict(self) -> dict[str, int]:
        """What a checkpoint keeps: the refused steps so far (the streak in a row starts anew on resume)."""
        return {"nonfinite_steps": self.skipped}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.skipped = state.get("nonfinite_steps", 0)

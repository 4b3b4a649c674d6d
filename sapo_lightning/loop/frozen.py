"""Frozen policies: the behaviour policy π_old and the reference π_ref, as cheap as each can be.

A frozen policy is one of three things, chosen by :func:`freeze`:

- ``None``: no copy at all; the live policy is evaluated in eval mode under no_grad. Right for
  π_old when it is refreshed before every rollout: it then equals π_θ at sampling time.
- a :class:`WeightSnapshot`: frozen copies of the policy's *trainable* parameters only,
  swapped into the live policy while it evaluates. Right when most weights are frozen (LoRA:
  the snapshot is the adapters, the base model is shared).
- a full deep copy of the policy, frozen: when every weight trains, a swap would need a
  second copy anyway.
"""

from __future__ import annotations

import copy
from collections.abc import Iterator
from contextlib import contextmanager

import torch
from torch import nn

from sapo_lightning.policies import Policy

Frozen = nn.Module | None  # a Policy (full copy), a WeightSnapshot, or None (the live policy)


class WeightSnapshot(nn.Module):
    """Frozen values of a policy's trainable parameters, as buffers (they are checkpointed)."""

    def __init__(self, policy: nn.Module) -> None:
        super().__init__()
        self.names = [name for name, p in policy.named_parameters() if p.requires_grad]
        for index, name in enumerate(self.names):
            self.register_buffer(f"w{index}", policy.get_parameter(name).detach().clone())

    def tensors(self) -> list[torch.Tensor]:
        return [getattr(self, f"w{index}") for index in range(len(self.names))]

    @torch.no_grad()
    def copy_from(self, policy: nn.Module) -> None:
        for name, frozen in zip(self.names, self.tensors()):
            frozen.copy_(policy.get_parameter(name))

    @contextmanager
    def swapped_into(self, policy: nn.Module) -> Iterator[None]:
        """``policy`` with these values in place of its trainable parameters, restored on exit."""
        params = [policy.get_parameter(name) for name in self.names]
        with torch.no_grad():
            live = [p.detach().clone() for p in params]  # trainable weights only: small for adapters
            for p, frozen in zip(params, self.tensors()):
                p.copy_(frozen)
        try:
            yield
        finally:
            with torch.no_grad():
                for p, value in zip(params, live):
                    p.copy_(value)


def freeze(policy: Policy) -> nn.Module:
    """A frozen copy of ``policy``'s current weights: a :class:`WeightSnapshot` when some
    parameters are frozen already (they are shared), else a full deep copy in eval mode."""
    if any(not p.requires_grad for p in policy.parameters()):
        return WeightSnapshot(policy)
    return copy.deepcopy(policy).requires_grad_(False).eval()


@torch.no_grad()
def refresh(frozen: Frozen, policy: Policy) -> None:
    """Copy ``policy``'s current weights into ``frozen`` (nothing to do for the live policy)."""
    if isinstance(frozen, WeightSnapshot):
        frozen.copy_from(policy)
    elif frozen is not None:
        frozen.load_state_dict(policy.state_dict())


@contextmanager
def evaluating(frozen: Frozen, policy: Policy) -> Iterator[Policy]:
    """The policy to evaluate as ``frozen``: under no_grad and in eval mode (no dropout)."""
    if isinstance(frozen, Policy):
        with torch.no_grad():
            yield frozen
        return
    training = policy.training
    policy.eval()
    try:
        with torch.no_grad():
            if frozen is None:
                yield policy
            else:
                with frozen.swapped_into(policy):
                    yield policy
    finally:
        policy.train(training)


def state_from_policy(frozen: Frozen, policy_state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """``frozen``'s state_dict as a copy of the policy whose state_dict is ``policy_state``."""
    if isinstance(frozen, WeightSnapshot):
        return {f"w{index}": policy_state[name] for index, name in enumerate(frozen.names)}
    return {} if frozen is None else dict(policy_state)


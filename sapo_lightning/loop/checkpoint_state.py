"""What an :class:`~sapo_lightning.RLModule` checkpoint holds, and how one is fitted to the run that loads it.

Saving (:func:`drop_frozen_weights`): the policy's frozen weights (a LoRA base model) are rebuilt
from the config, so only what trains is saved, with a checksum of the frozen ones.

Loading (:func:`fit_to_run`): the frozen weights come from the config (refused if they are not
those the checkpoint was trained on); π_old / π_ref entries are dropped if this run keeps no such
copy, or taken from the checkpoint's policy if the saving run kept none (see :mod:`sapo_lightning.loop.frozen`).

State-dict keys are the module's: ``policy.*``, ``old_policy.*``, ``ref_policy.*``.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import nn

from sapo_lightning.checks import fail
from sapo_lightning.loop.frozen import Frozen, state_from_policy


def frozen_names(policy: nn.Module) -> list[str]:
    """State-dict keys of the policy's frozen parameters (a LoRA base model), every name of a shared one."""
    return [f"policy.{name}" for name, p in policy.named_parameters(remove_duplicate=False) if not p.requires_grad]


def frozen_checksum(policy: nn.Module) -> float:
    """Sum of the policy's frozen parameters' entries and of their squares, in float64: a fingerprint."""
    with torch.no_grad():
        frozen = [p.detach().double() for p in policy.parameters() if not p.requires_grad]
        return float(sum(p.sum() + p.square().sum() for p in frozen)) if frozen else 0.0


def drop_frozen_weights(checkpoint: dict[str, Any], policy: nn.Module) -> None:
    """Remove the policy's frozen weights from ``checkpoint`` and record their checksum instead."""
    names = frozen_names(policy)
    if not names:
        return
    for name in names:
        checkpoint["state_dict"].pop(name, None)
    checkpoint["frozen_weights_checksum"] = frozen_checksum(policy)


def fit_to_run(checkpoint: dict[str, Any], own: dict[str, torch.Tensor], policy: nn.Module,
               old_policy: Frozen, ref_policy: Frozen) -> None:
    """Make ``checkpoint["state_dict"]`` load strictly into a module whose state_dict is ``own``."""
    if "state_dict" not in checkpoint:
        return  # a sharded (FSDP) checkpoint: the strategy loads the weights itself
    expected = checkpoint.get("frozen_weights_checksum")
    if expected is not None and not math.isclose(frozen_checksum(policy), expected, rel_tol=1e-9):
        fail("the frozen base weights", "those the checkpoint's adapters were trained on (the same "
             "model path, or the same model_config and seed_everything)",
             f"checksum {frozen_checksum(policy)!r} against the checkpoint's {expected!r}")
    state = checkpoint["state_dict"]
    for key in [k for k in state if k not in own and k.startswith(("old_policy.", "ref_policy."))]:
        del state[key]
    for key in frozen_names(policy):
        state.setdefault(key, own[key])
    policy_state = {key[len("policy."):]: value for key, value in state.items() if key.startswith("policy.")}
    for prefix, frozen in (("old_policy.", old_policy), ("ref_policy.", ref_policy)):
        if not any(key.startswith(prefix) for key in state):
            state.update({prefix + key: value for key, value in state_from_policy(frozen, policy_state).items()})

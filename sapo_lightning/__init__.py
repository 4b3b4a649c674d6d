"""SAPO (Soft Adaptive Policy Optimization, arXiv 2511.20347) and its baselines in PyTorch Lightning.

The names below are imported on first use (PEP 562), not with the package: ``sapo-lightning --help``,
``export`` and other commands that stop on bad input before they need Lightning do not pay its import
(4-5 s on a 2-core machine).
"""

from __future__ import annotations

from importlib import import_module
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from sapo_lightning.advantages import group_advantages
    from sapo_lightning.callbacks import OldPolicySync
    from sapo_lightning.checks import ConfigError
    from sapo_lightning.data import QueryDataModule
    from sapo_lightning.module import RLModule
    from sapo_lightning.objectives import CISPO, GRPO, GSPO, SAPO, Objective, ObjectiveOutput, aggregate
    from sapo_lightning.policies import MLPPolicy, Policy
    from sapo_lightning.rollout import Rollout, Scores
    from sapo_lightning.tasks import FixedTarget, Task

#: public name -> the module that defines it
_HOMES = {
    "group_advantages": "advantages", "OldPolicySync": "callbacks", "ConfigError": "checks",
    "QueryDataModule": "data", "RLModule": "module",
    **dict.fromkeys(["CISPO", "GRPO", "GSPO", "SAPO", "Objective", "ObjectiveOutput", "aggregate"], "objectives"),
    **dict.fromkeys(["MLPPolicy", "Policy"], "policies"), **dict.fromkeys(["Rollout", "Scores"], "rollout"),
    **dict.fromkeys(["FixedTarget", "Task"], "tasks"),
}
__all__ = [
    "CISPO", "GRPO", "GSPO", "SAPO", "ConfigError", "FixedTarget", "MLPPolicy", "Objective", "ObjectiveOutput",
    "OldPolicySync", "Policy", "QueryDataModule", "RLModule", "Rollout", "Scores", "Task", "aggregate",
    "group_advantages",
]


def __getattr__(name: str) -> Any:
    if name not in _HOMES:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(import_module(f"{__name__}.{_HOMES[name]}"), name)
    globals()[name] = value  # found directly from now on
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *__all__})

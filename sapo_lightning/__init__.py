"""SAPO (Soft Adaptive Policy Optimization, arXiv 2511.20347) and its baselines in PyTorch Lightning."""

from sapo_lightning.advantages import group_advantages
from sapo_lightning.callbacks import OldPolicySync
from sapo_lightning.data import QueryDataModule
from sapo_lightning.checks import ConfigError
from sapo_lightning.module import RLModule
from sapo_lightning.objectives import CISPO, GRPO, GSPO, SAPO, Objective, ObjectiveOutput, aggregate
from sapo_lightning.rollout import Rollout, Scores
from sapo_lightning.policies import MLPPolicy, Policy
from sapo_lightning.tasks import FixedTarget, Task

__all__ = [
    "CISPO", "GRPO", "GSPO", "SAPO", "ConfigError", "FixedTarget", "MLPPolicy", "Objective", "ObjectiveOutput",
    "OldPolicySync", "Policy", "QueryDataModule", "RLModule", "Rollout", "Scores", "Task", "aggregate",
    "group_advantages",
]

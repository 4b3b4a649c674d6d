"""Environments: episodes of several turns between the policy and an environment, and adapters to existing ones."""

from sapo_lightning.envs.environment import Environment, Step
from sapo_lightning.envs.task import EnvTask

__all__ = ["EnvTask", "Environment", "Step"]

"""Environments: episodes of several turns between the policy and an environment, and adapters to existing ones."""

from sapo_lightning.envs.environment import Environment, Step

__all__ = ["Environment", "Step"]

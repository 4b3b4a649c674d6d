"""Reinforcement learning on text: prompt datasets, reward functions, causal-LM policies."""

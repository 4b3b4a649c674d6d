"""Reinforcement learning on text: prompt datasets, ``PromptTask``, reward functions, ``TextSamples``.

The causal-LM policy that samples and scores text lives in :mod:`sapo_lightning.lm`.
"""

"""Reinforcement learning on text: prompt datasets, tokenizers and their batches.

Needs the ``[hf]`` extra (``pip install "sapo-lightning[hf]"``): ``transformers`` and ``datasets``.
"""

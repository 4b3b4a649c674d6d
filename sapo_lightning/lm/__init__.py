"""Hugging Face ``transformers`` causal LMs as policies, for token tasks and text tasks alike (the ``[hf]`` extra).

:mod:`~sapo_lightning.lm.model` loads the model (:mod:`~sapo_lightning.lm.attention` is an attention
kernel it can pick), :mod:`~sapo_lightning.lm.prefill` runs a group's shared prompt once,
:mod:`~sapo_lightning.lm.sampling` is the tempered top-k/top-p distribution, and
:mod:`~sapo_lightning.lm.policy` holds :class:`~sapo_lightning.lm.policy.CausalLMPolicy`, the one policy
class built on them. The core (module, tasks, the other policies) never imports this package;
a config names the class.
"""

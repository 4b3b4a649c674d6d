"""Where ``HFCausalLMPolicy`` was: a config that names it fails in one line naming
:class:`~sapo_lightning.lm.policy.CausalLMPolicy`, which serves token tasks and text tasks alike."""

from sapo_lightning.checks import removed

__getattr__ = removed("sapo_lightning.hf.HFCausalLMPolicy", "sapo_lightning.lm.policy.CausalLMPolicy", "0.2.0")

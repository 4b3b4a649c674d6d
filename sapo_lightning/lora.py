"""LoRA adapters on a ``transformers`` causal LM, through PEFT (the ``[peft]`` extra).

Only the adapters train. The rest of the package needs nothing LoRA-specific: a policy whose
base weights are frozen (``requires_grad`` False) gets π_old and π_ref as snapshots of its
trainable weights only, and checkpoints without the frozen weights
(:mod:`sapo_lightning.loop.frozen`, :meth:`~sapo_lightning.module.RLModule.on_save_checkpoint`).
``peft`` is imported only when a policy is given a ``lora`` section.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from typing import Any

from torch import nn

from sapo_lightning.checks import ConfigError, check_int, check_number, fail

INSTALL = 'pip install "sapo-lightning[peft]"'


@dataclass
class LoRA:
    """LoRA adapters (PEFT's ``LoraConfig``): W x + (alpha / r) · B A x on each targeted layer.

    A starts random and B at zero, so the adapted model starts as the base model exactly. Only
    A and B train; the base weights stay frozen, are shared by π_θ, π_old and π_ref, and are
    not written to checkpoints (they are rebuilt from the policy's ``path`` or ``model_config``).

    Args:
        r: Rank of each adapter (>= 1).
        alpha: Scale numerator (> 0): the update is multiplied by alpha / r.
        dropout: Dropout on the adapters' input, in [0, 1). Updates run in train mode while
            rollouts are sampled in eval mode, so dropout > 0 makes π_θ ≠ π_old even on policy
            (ratios ≠ 1 at the first update); keep 0 for exact on-policy ratios.
        target_modules: Names of the layers to adapt, matched against the end of each module's
            name (``q_proj`` adapts every ``...self_attn.q_proj``); linear, embedding and
            convolution layers. null: PEFT's default for the model type (Llama, Qwen2:
            q_proj, v_proj; GPT-2: c_attn).
    """

    r: int = 8
    alpha: float = 16.0
    dropout: float = 0.0
    target_modules: list[str] | None = None


def apply_lora(model: nn.Module, lora: LoRA | dict[str, Any]) -> nn.Module:
    """``model`` wrapped by ``peft.get_peft_model``: adapters on the targeted layers, every other weight frozen."""
    if isinstance(lora, dict):  # from Python; the CLI gives a LoRA
        unknown = sorted(set(lora) - set(LoRA.__dataclass_fields__))
        if unknown:
            fail("lora fields", f"among {', '.join(LoRA.__dataclass_fields__)}", unknown)
        lora = LoRA(**lora)
    check_int("lora.r", lora.r, 1)
    check_number("lora.alpha", lora.alpha, 0, low_open=True)
    check_number("lora.dropout", lora.dropout, 0, 1, high_open=True)
    targets = lora.target_modules
    if targets is not None and (not isinstance(targets, list) or not targets
                                or not all(isinstance(t, str) and t for t in targets)):
        fail("lora.target_modules", "a non-empty list of module names, or null", targets)
    try:
        import peft
    except ImportError:
        raise ConfigError(f"lora needs the peft package: {INSTALL}") from None
    if targets is not None:
        _check_targets(model, targets)
    config = peft.LoraConfig(r=lora.r, lora_alpha=lora.alpha, lora_dropout=lora.dropout, target_modules=targets,
                             task_type="CAUSAL_LM")
    try:
        with warnings.catch_warnings():  # peft asks transformers 5 a question it deprecated: noise for the user
            warnings.filterwarnings("ignore", "`is_gradient_checkpointing` is deprecated", FutureWarning)
            return peft.get_peft_model(model, config)
    except ValueError as err:  # no default target_modules for this model type, among others
        message = " ".join(str(err).split())
        raise ConfigError(f"lora: {message} (set lora.target_modules)") from None


def _check_targets(model: nn.Module, targets: list[str]) -> None:
    """Each target names at least one layer LoRA can adapt, and nothing LoRA cannot."""
    supported = _supported_types()
    modules = dict(model.named_modules())
    available = sorted({name.rsplit(".", 1)[-1] for name, m in modules.items() if isinstance(m, supported)})
    bad = []
    for target in targets:
        matched = [m for name, m in modules.items() if name == target or name.endswith("." + target)]
        if not matched or not all(isinstance(m, supported) for m in matched):
            bad.append(target)
    if bad:
        fail("lora.target_modules", f"names of the model's linear, embedding or convolution layers "
             f"({', '.join(available)})", bad)


def _supported_types() -> tuple[type, ...]:
    from transformers.pytorch_utils import Conv1D  # GPT-2's linear layers

    return nn.Linear, nn.Embedding, nn.Conv1d, nn.Conv2d, nn.Conv3d, Conv1D


def is_peft_model(model: nn.Module) -> bool:
    """Whether ``model`` is a PEFT wrapper (without importing peft when it is not loaded)."""
    return hasattr(model, "peft_config") and callable(getattr(model, "get_base_model", None))


def base_model(model: nn.Module) -> nn.Module:
    """The ``transformers`` model inside a PEFT wrapper (adapter layers in place), or ``model`` itself."""
    return model.get_base_model() if is_peft_model(model) else model

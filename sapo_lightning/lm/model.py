"""The causal LM of a policy: loaded from a directory or built from a config, and what its ``forward`` accepts."""

from __future__ import annotations

import inspect
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import torch
from huggingface_hub.errors import StrictDataclassError  # a dependency of transformers
from transformers import AutoConfig, AutoModelForCausalLM, PreTrainedModel

from sapo_lightning.checks import ConfigError, check_choice, fail
from sapo_lightning.lm import attention as _grouped  # registers the grouped kernel with transformers
from sapo_lightning.lora import LoRA, apply_lora, base_model
from sapo_lightning.pretrained import quiet_loading

DTYPES = ("float32", "bfloat16", "float16")
# torch's fused scaled_dot_product_attention; plain matmuls and a softmax; those without copying shared KV heads
ATTENTION = ("sdpa", "eager", _grouped.NAME)


def load_causal_lm(
    path: str | None,
    model_config: dict[str, Any] | None,
    dtype: str,
    gradient_checkpointing: bool,
    lora: LoRA | dict[str, Any] | None = None,
    attention: str | None = None,
) -> PreTrainedModel:
    """A causal LM from ``path`` (a directory or a hub id, as :func:`~sapo_lightning.pretrained.resolve` returns
    one) or, randomly initialised, from a config mapping; with ``lora``, wrapped by PEFT with only the adapters
    trainable; ``attention`` picks transformers' attention implementation (null: the model's default)."""
    if (path is None) == (model_config is None):
        raise ConfigError(
            f"exactly one of path and model_config must be given; got path={path!r}, model_config={model_config!r}"
        )
    check_choice("dtype", dtype, DTYPES)
    kernel = {} if attention is None else {"attn_implementation": check_choice("attention", attention, ATTENTION)}
    if path is not None:
        try:
            with quiet_loading():
                model = AutoModelForCausalLM.from_pretrained(path, dtype=getattr(torch, dtype), **kernel)
        except OSError as err:  # a directory without a model, or a hub id that cannot be fetched
            fail("path", f"a loadable causal LM ({' '.join(str(err).split())[:200]})", path)
    else:
        model = AutoModelForCausalLM.from_config(_model_config(model_config), dtype=getattr(torch, dtype), **kernel)
    softcap = getattr(model.config, "attn_logit_softcapping", None)
    if attention == _grouped.NAME and softcap is not None:
        fail("attention", f"sdpa or eager for a model that softcaps its attention scores (attn_logit_softcapping="
             f"{softcap})", attention)
    if gradient_checkpointing:
        model.gradient_checkpointing_enable()
    if lora is not None:
        if gradient_checkpointing:  # the frozen embeddings' output must carry a gradient into the checkpoints
            model.enable_input_require_grads()
        model = apply_lora(model, lora)
    return model


def cache_argument(model: PreTrainedModel) -> str:
    """Name of the KV-cache argument of ``model.forward`` and attribute of its output."""
    forward_args = inspect.signature(base_model(model).forward).parameters  # a PEFT wrapper takes **kwargs
    return "cache" if "cache" in forward_args else "past_key_values"  # renamed in transformers 5


def takes_logits_to_keep(model: PreTrainedModel) -> bool:
    """Whether ``model.forward`` can compute the logits of the last positions only (``logits_to_keep``)."""
    return "logits_to_keep" in inspect.signature(base_model(model).forward).parameters


@contextmanager
def weights_cast_once(device: torch.device) -> Iterator[None]:
    """Under autocast, each weight cast to the autocast dtype once for the many forwards of a decode.

    Lightning's precision plugins run autocast with its cast cache off, because the weights may
    change inside a training step: every forward then casts every float32 weight again (on SmolLM2
    in bf16, a quarter of a rollout's time). A decode's weights are fixed, so this turns the cache on
    for its forwards and empties it on the way out. The cast values are the same: nothing else changes.
    """
    if not torch.is_autocast_enabled(device.type):
        yield
        return
    try:
        with torch.autocast(device.type, dtype=torch.get_autocast_dtype(device.type), cache_enabled=True):
            yield
    finally:
        torch.clear_autocast_cache()  # the next decode may run on updated weights


def _model_config(spec: Any) -> Any:
    """The ``transformers`` config a ``model_config`` mapping describes; unknown fields are refused."""
    if not isinstance(spec, dict) or not isinstance(spec.get("model_type"), str):
        fail("model_config", "a mapping with a model_type (llama, gpt2, ...) and that config's fields", spec)
    fields = {key: value for key, value in spec.items() if key != "model_type"}
    try:
        default = AutoConfig.for_model(spec["model_type"])
    except ValueError:
        fail("model_config.model_type", "a transformers model type (llama, gpt2, ...)", spec["model_type"])
    # a config stores unknown keys silently: a misspelt field would leave its default in place
    known = set(default.to_dict()) | set(default.attribute_map) | {"attn_implementation"}
    unknown = sorted(set(fields) - known)
    if unknown:
        fail("model_config fields", f"fields of a {spec['model_type']} config", unknown)
    try:
        return AutoConfig.for_model(spec["model_type"], **fields)
    except (ValueError, TypeError, StrictDataclassError) as err:  # the config class validates its fields
        fail("model_config", f"a valid {spec['model_type']} config ({' '.join(str(err).split())})", fields)

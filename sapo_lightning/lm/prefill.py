"""Prefix sharing: the G responses of a query share its prompt, which runs once and lends its KV cache to all G."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor

from sapo_lightning.lora import base_model


def shared_prompts(prompts: Tensor) -> int:
    """G when ``prompts`` ``[N, ...]`` are groups of G equal consecutive rows (the G responses of each
    query), so that a policy can run each distinct prompt once and repeat its KV cache; else 1."""
    n = prompts.shape[0]
    if n < 2:
        return 1
    rows = prompts.reshape(n, -1)
    group = int((rows[1:] == rows[:-1]).all(-1).long().cumprod(0).sum()) + 1  # length of the first run
    if group == 1 or n % group or not torch.equal(rows, rows[::group].repeat_interleave(group, 0)):
        return 1
    return group


def prompt_group(rows: Tensor, model: torch.nn.Module, share_in_training: bool) -> int:
    """:func:`shared_prompts` of ``rows`` where the model may share them now (always in eval mode), else 1."""
    return shared_prompts(rows) if share_in_training or not model.training else 1


def prefill_once(forward: Callable[..., Any], group: int, cache_arg: str, **inputs: Tensor) -> tuple[Any, Tensor]:
    """``forward(**inputs, use_cache=True)`` on every ``group``-th row only (one per group of equal prompts),
    its KV cache repeated ``group`` times in place for the whole batch; the output and its last-position
    logits ``[N, 1, V]`` for every row."""
    out = forward(**{name: value[::group] for name, value in inputs.items()}, use_cache=True)
    if group > 1:
        getattr(out, cache_arg).batch_repeat_interleave(group)
    return out, out.logits[:, -1:].repeat_interleave(group, 0)


def can_share_prompts_in_training(model: torch.nn.Module) -> bool:
    """False under gradient checkpointing (the model keeps no cache in training) and with dropout (each
    response must draw its own dropout mask on the prompt): in train mode, such a model scores every row whole."""
    inner = base_model(model)
    checkpointing = getattr(inner, "is_activation_checkpointing", None)  # transformers 5; 4.x's name below
    if checkpointing is None:
        checkpointing = getattr(inner, "is_gradient_checkpointing", False)
    dropout = any(isinstance(m, torch.nn.Dropout) and m.p > 0 for m in model.modules())
    dropout |= getattr(getattr(inner, "config", None), "attention_dropout", 0) > 0  # functional, in attention
    return not checkpointing and not dropout

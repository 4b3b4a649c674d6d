"""``grouped``: transformers' eager attention with each key/value head shared by its query group in place.

Eager attention (matmuls and a float32 softmax) first copies every key and value head once per query
head of its group (``repeat_kv``). With grouped-query attention (SmolLM2: 9 query heads on 3
key/value heads) that copy, of the whole KV cache at every decoding step and layer, costs a fifth of
a bf16 rollout on a CPU. Here the G query heads of a group are stacked as G times as many query rows
of their one key/value head instead: the same products and softmax, with nothing copied (tokens and
log-probs equal eager's bit for bit in tests/test_hf.py; gradients differ by the order of a sum).
Registered with transformers' public attention and mask interfaces under :data:`NAME`; a model
loaded with ``attn_implementation=NAME`` runs it in every layer.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn
from transformers import AttentionInterface, AttentionMaskInterface
from transformers.masking_utils import eager_mask

NAME = "grouped"


def grouped_attention(
    module: nn.Module,
    query: Tensor,
    key: Tensor,
    value: Tensor,
    attention_mask: Tensor | None,
    scaling: float,
    dropout: float = 0.0,
    **kwargs,
) -> tuple[Tensor, Tensor]:
    """Attention of ``query`` ``[B, H, q, D]`` on ``key`` / ``value`` ``[B, K, L, D]`` (H = G·K; query head h reads
    key/value head h // G, as ``repeat_kv`` pairs them) under the additive ``attention_mask`` ``[B, 1, q, L]``:
    the output ``[B, q, H, D]`` and the weights ``[B, H, q, L]``, as transformers' eager attention returns them."""
    for name in ("softcap", "s_aux"):  # score transforms eager attention applies and this one does not
        if kwargs.get(name) is not None:
            raise NotImplementedError(f"attention {NAME!r} does not apply {name}: use attention 'eager' for this model")
    b, h, q, d = query.shape
    k = key.shape[1]
    g = h // k
    scores = torch.matmul(query.reshape(b, k, g * q, d), key.transpose(2, 3)) * scaling  # [B, K, G·q, L]
    if attention_mask is not None:
        scores = (scores.view(b, k, g, q, -1) + attention_mask[:, :, None]).view(b, k, g * q, -1)
    weights = nn.functional.softmax(scores, dim=-1, dtype=torch.float32).to(query.dtype)
    weights = nn.functional.dropout(weights, p=dropout, training=module.training)
    out = torch.matmul(weights, value).view(b, h, q, d)  # [B, H, q, D]
    return out.transpose(1, 2).contiguous(), weights.view(b, h, q, -1)


AttentionInterface.register(NAME, grouped_attention)
AttentionMaskInterface.register(NAME, eager_mask)  # the additive float mask eager attention reads

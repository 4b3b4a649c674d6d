"""The distribution a causal-LM policy samples from and scores under: tempered, then top-k, then top-p."""

from __future__ import annotations

import torch
from torch import Tensor

from sapo_lightning.rollout import Scores


def sampling_logits(logits: Tensor, temperature: float, top_k: int, top_p: float) -> Tensor:
    """Float32 logits ``[..., V]`` of the sampling distribution: ``logits / temperature`` with every token
    outside the ``top_k`` highest (0: all) and then outside the nucleus set to -inf.

    The nucleus keeps the fewest highest-probability tokens (of the tempered, top-k distribution)
    whose mass reaches ``top_p``: a token stays iff the mass ranked above it is < ``top_p``, so
    the top token always stays. Ties at the k-th logit stay together, as in ``transformers``.
    """
    logits = logits.float() if temperature == 1.0 else logits.float() / temperature  # x / 1 is x: a pass saved
    if 0 < top_k < logits.shape[-1]:
        kth = logits.topk(top_k, dim=-1).values[..., -1:]  # [..., 1]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if top_p < 1.0:
        ranked, order = logits.sort(dim=-1, descending=True)  # [..., V] each
        probs = ranked.softmax(-1)
        drop = probs.cumsum(-1) - probs >= top_p  # mass ranked above each token, [..., V]
        logits = logits.masked_fill(drop.scatter(-1, order, drop), float("-inf"))
    return logits


def truncated_scores(logits: Tensor, tokens: Tensor, entropy_grad: bool = False) -> Scores:
    """Log-probs of ``tokens`` ``[...]`` and entropies under sampling logits ``[..., V]`` with -inf entries
    (the entropies differentiable with ``entropy_grad``)."""
    log_p = torch.log_softmax(logits, dim=-1)  # [..., V], -inf outside the kept set
    if entropy_grad:  # 0 · log 0 = 0, and so is its gradient
        entropy = -(log_p.exp() * log_p.masked_fill(logits == float("-inf"), 0.0)).sum(-1)
    else:  # a diagnostic: keeps no [..., V] tensor for backward and makes one (p · log p, in place); a token
        with torch.no_grad():  # outside the kept set gives 0 · -inf = NaN there, which nansum counts as 0
            entropy = -log_p.exp().mul_(log_p).nansum(-1)
    return Scores(log_p.gather(-1, tokens.unsqueeze(-1)).squeeze(-1), entropy)


def response_mask(responses: Tensor, stop_ids: Tensor) -> Tensor:
    """``[N, T]`` bool: True up to and including each response's first stop token, False after it."""
    stops = torch.isin(responses, stop_ids).long()  # [N, T]
    return stops.cumsum(-1) - stops == 0

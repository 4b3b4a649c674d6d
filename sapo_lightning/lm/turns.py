"""Transcripts decoded turn by turn: the policy's turns sampled on a KV cache, the environment's tokens appended.

A batch of N transcripts is one rectangular ``[N, S]`` block of token ids with an attention mask:
each row's real tokens are where its mask is 1, and the holes (mask 0) are where a row waited while
others were still sampling, or the left padding of a block of environment tokens. Positions are
counted over the real tokens only, so the model reads every row as its real tokens in order, holes
or none: a transcript scored later without its holes gets the same log-probs.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import torch
from torch import Tensor

from sapo_lightning.lm.model import weights_cast_once
from sapo_lightning.lm.prefill import prompt_group
from sapo_lightning.policies import sample_from_logits


class Turn(NamedTuple):
    """One turn of every transcript."""

    tokens: Tensor  # [N, t] long, the sampled tokens; the pad token where a row was not sampling
    log_probs: Tensor  # [N, t] float, of each sampled token under the sampling distribution; 0 elsewhere
    mask: Tensor  # [N, t] bool, True where a row sampled
    stopped: Tensor  # [N] bool, the row's turn ended at a stop token (else at its budget, or it sat out)


class TurnDecoder:
    """Decodes the turns of N transcripts that start from left-padded prompts ``ids`` / ``attention`` ``[N, P]``.

    With ``reuse_cache`` the model's KV cache carries over from turn to turn: the environment's tokens
    are run on it, not the whole transcript again. Without, each turn starts by running the whole
    transcript so far (what a generation server without prefix caching does); the tokens and
    log-probs are the same up to float error.

    Args:
        policy: The causal-LM policy (its model, sampling distribution, stop and pad tokens).
        ids: Prompt token ids ``[N, P]``, left-padded.
        attention: Their attention mask ``[N, P]`` (1: a real token).
        reuse_cache: Keep the KV cache across turns.
    """

    def __init__(self, policy: Any, ids: Tensor, attention: Tensor, reuse_cache: bool = True) -> None:
        self.policy, self.reuse_cache = policy, reuse_cache
        self.ids, self.attention = ids, attention.long()  # [N, S] each: the transcripts so far
        self.cache: Any = None
        self.cached = 0  # columns of ids the cache holds
        self.next_logits: Tensor | None = None  # [N, V] sampling logits of each row's next token
        self.group = prompt_group(torch.cat([ids, attention], 1), policy.model, False)  # equal prompts run once

    def _positions(self) -> Tensor:
        return (self.attention.cumsum(-1) - 1).clamp(min=0)  # [N, S], counted over real tokens

    def _run(self) -> None:
        """Run the columns the cache lacks; each row's next-token logits from its last real token among them
        (a row with none keeps its logits)."""
        policy, start = self.policy, self.cached
        if self.cached == 0:  # the prompts: left-padded, so every row's last column is real; equal prompts run once
            out, logits = policy._prefill(self.group, input_ids=policy._to_model(self.ids),
                                          attention_mask=self.attention, position_ids=self._positions())
        else:
            if self.cache is None:  # the whole transcript again, logits kept back to the earliest last real token
                start = 0
            width = self.ids.shape[1] - start
            keep = width - int((width - 1 - self.attention[:, start:].flip(-1).argmax(-1)).min())
            cache = {} if self.cache is None else {policy._cache_arg: self.cache}
            out = policy._forward(keep, input_ids=policy._to_model(self.ids[:, start:]), attention_mask=self.attention,
                                  position_ids=self._positions()[:, start:], use_cache=True, **cache)
            logits = out.logits[:, -keep:]  # [N, keep, V_model]
        self.cache, self.cached = getattr(out, policy._cache_arg), self.ids.shape[1]
        new = self.attention[:, start:]  # [N, k]
        k = new.shape[1]
        last = k - 1 - new.flip(-1).argmax(-1)  # [N] each row's last real column among the new ones
        picked = logits[torch.arange(len(new)), (last - (k - logits.shape[1])).clamp(min=0)]  # [N, V_model]
        fresh = policy.sampling_logits(picked)
        has = new.any(-1)
        self.next_logits = fresh if self.next_logits is None else torch.where(has[:, None], fresh, self.next_logits)

    def _append(self, ids: Tensor, attention: Tensor) -> None:
        self.ids = torch.cat([self.ids, ids], 1)
        self.attention = torch.cat([self.attention, attention.long()], 1)

    @torch.no_grad()
    def turn(self, live: Tensor, budget: Tensor, generator: torch.Generator | None, greedy: bool) -> Turn:
        """Sample one turn of the ``live`` rows ``[N]`` bool, each until a stop token or its ``budget`` ``[N]``
        tokens. Every step draws ``[N, V]`` uniforms whether a row samples or not."""
        with weights_cast_once(live.device):
            return self._turn(live, budget, generator, greedy)

    def _turn(self, live: Tensor, budget: Tensor, generator: torch.Generator | None, greedy: bool) -> Turn:
        if self.cached < self.ids.shape[1] or self.next_logits is None:
            if not self.reuse_cache:
                self.cache = None
            self._run()
        n, device = len(live), live.device
        steps = int(budget[live].max()) if bool(live.any()) else 0
        tokens = torch.full((n, steps), self.policy.pad_token, device=device)  # [N, t]
        log_probs = torch.zeros(n, steps, device=device)
        mask = torch.zeros(n, steps, dtype=torch.bool, device=device)
        stopped = torch.zeros(n, dtype=torch.bool, device=device)
        active = live & (budget > 0)
        for t in range(steps):
            token, token_log_prob = sample_from_logits(self.next_logits, generator, greedy)  # [N] each
            tokens[:, t] = torch.where(active, token, tokens[:, t])
            log_probs[:, t] = torch.where(active, token_log_prob, 0.0)
            mask[:, t] = active
            self._append(tokens[:, t : t + 1], active[:, None])
            hit = active & torch.isin(token, self.policy.stop_ids)
            stopped |= hit
            active = active & ~hit & (budget > t + 1)
            if not bool(active.any()):
                tokens, log_probs, mask = tokens[:, : t + 1], log_probs[:, : t + 1], mask[:, : t + 1]
                break
            self._run()  # the next token's logits; the last token of a turn is run with the next block
        return Turn(tokens, log_probs, mask, stopped)

    def extend(self, blocks: list[list[int]]) -> None:
        """Append each row's environment tokens (possibly none), left-padded within the block so that a row's
        last real token is the block's last column."""
        width = max(map(len, blocks), default=0)
        if width == 0:
            return
        ids = torch.full((len(blocks), width), self.policy.pad_token, dtype=torch.long, device=self.ids.device)
        attention = torch.zeros(len(blocks), width, dtype=torch.long, device=self.ids.device)
        for row, block in enumerate(blocks):
            if block:
                ids[row, width - len(block):] = torch.tensor(block, dtype=torch.long)
                attention[row, width - len(block):] = 1
        self._append(ids, attention)

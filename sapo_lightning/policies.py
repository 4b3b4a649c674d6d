"""Policies: networks that sample responses to queries and score given responses.

The LightningModule talks to a policy only through :class:`Policy`'s two methods, so any
network that implements them (an MLP, an autoregressive transformer, a wrapped Hugging Face
causal LM) plugs in unchanged. A policy is built from the task it serves, which fixes the
vocabulary and response length: in a config, give its class and its own arguments only.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
from torch import Tensor, nn

from sapo_lightning.errors import ConfigError
from sapo_lightning.tasks import Task


class Rollout(NamedTuple):
    """Responses sampled for a batch of queries."""

    responses: Tensor  # [N, T] long, padded after EOS
    log_probs: Tensor  # [N, T] float, log-prob of each sampled token under the sampling policy
    mask: Tensor  # [N, T] bool, True for real response tokens (EOS included)


class Scores(NamedTuple):
    """Per-token scores of given responses."""

    log_probs: Tensor  # [N, T] float, log π(y_t | q, y_<t)
    entropy: Tensor  # [N, T] float, entropy of π(· | q, y_<t)


class Policy(nn.Module):
    """Interface between the LightningModule and a network."""

    def sample(self, queries: Tensor, generator: torch.Generator | None = None, greedy: bool = False) -> Rollout:
        """Sample one response per query (argmax tokens when ``greedy``)."""
        raise NotImplementedError

    def score(self, queries: Tensor, responses: Tensor) -> Scores:
        """Log-probs and entropies of ``responses`` ``[N, T]`` given ``queries``; differentiable."""
        raise NotImplementedError


def sample_from_logits(logits: Tensor, generator: torch.Generator | None, greedy: bool) -> tuple[Tensor, Tensor]:
    """Tokens ``[...]`` drawn from ``logits`` ``[..., V]`` and their log-probs ``[...]``.

    Sampling uses the Gumbel-max trick on uniforms from ``generator``, which is exact and
    avoids building a ``torch.distributions`` object (its argument checks cost a share of
    a small step).
    """
    log_p = torch.log_softmax(logits.float(), dim=-1)  # [..., V]
    if greedy:
        tokens = log_p.argmax(-1)
    else:
        u = torch.rand(log_p.shape, generator=generator, device=log_p.device, dtype=log_p.dtype)
        gumbel = -torch.log(-torch.log(u.clamp_min(torch.finfo(u.dtype).tiny)))
        tokens = (log_p + gumbel).argmax(-1)
    return tokens, log_p.gather(-1, tokens.unsqueeze(-1)).squeeze(-1)


def token_scores(logits: Tensor, tokens: Tensor) -> Scores:
    """Log-probs of ``tokens`` ``[...]`` and entropies under ``logits`` ``[..., V]``."""
    log_p = torch.log_softmax(logits.float(), dim=-1)  # [..., V]
    entropy = -(log_p.exp() * log_p).sum(-1)
    return Scores(log_p.gather(-1, tokens.unsqueeze(-1)).squeeze(-1), entropy)


class MLPPolicy(Policy):
    """The seed notebook's network: a query state ``[N, D]`` to logits ``[N, T, V]`` in one pass.

    Every position is emitted at once (no autoregression, no EOS), so every response has
    exactly T = ``task.response_len`` tokens.

    Args:
        task: The task served; sets D = ``task.query_dim``, T and V = ``task.vocab_size``.
        hidden_dim: Width of the single hidden layer (seed: 32).
    """

    def __init__(self, task: Task, hidden_dim: int = 32) -> None:
        super().__init__()
        if not isinstance(hidden_dim, int) or hidden_dim < 1:
            raise ConfigError(f"hidden_dim must be an integer >= 1; got {hidden_dim!r}")
        if task.query_dtype != torch.float32:
            raise ConfigError(f"MLPPolicy needs state queries; task {type(task).__name__} gives token queries")
        self.response_len = task.response_len
        self.vocab_size = task.vocab_size
        self.net = nn.Sequential(
            nn.Linear(task.query_dim, hidden_dim),
            nn.ReLU(),
            nn.Linear(hidden_dim, task.response_len * task.vocab_size),
        )

    def forward(self, queries: Tensor) -> Tensor:
        return self.net(queries).view(-1, self.response_len, self.vocab_size)  # [N, T, V]

    def sample(self, queries: Tensor, generator: torch.Generator | None = None, greedy: bool = False) -> Rollout:
        tokens, log_probs = sample_from_logits(self(queries), generator, greedy)  # [N, T] each
        return Rollout(tokens, log_probs, torch.ones_like(tokens, dtype=torch.bool))

    def score(self, queries: Tensor, responses: Tensor) -> Scores:
        return token_scores(self(queries), responses)

"""Tasks: where queries come from and how responses are rewarded."""

from __future__ import annotations

import torch
from torch import Tensor

from sapo_lightning.errors import ConfigError


class Task:
    """A task draws queries and scores responses.

    Attributes every task sets:
        vocab_size: Number of token ids a response may contain.
        response_len: Tokens per response T (the maximum, where responses can end early).
        eos_token: Token id that ends a response, or None for fixed-length responses.
        query_dim: Width of a query: features of a state query, or tokens of a token query.
        query_dtype: ``torch.float32`` for state queries, ``torch.long`` for token queries.
    """

    vocab_size: int
    response_len: int
    eos_token: int | None = None
    query_dim: int
    query_dtype: torch.dtype = torch.float32

    def sample_queries(self, n: int, generator: torch.Generator) -> Tensor:
        """``n`` queries ``[n, query_dim]``, drawn from ``generator`` alone."""
        raise NotImplementedError

    def reward(self, queries: Tensor, responses: Tensor, mask: Tensor) -> Tensor:
        """Reward ``[N]`` float of responses ``[N, T]`` (mask ``[N, T]``) to queries ``[N, ...]``."""
        raise NotImplementedError

    def exact_match(self, queries: Tensor, responses: Tensor, mask: Tensor) -> Tensor:
        """``[N]`` bool: the response is entirely correct."""
        raise NotImplementedError


class FixedTarget(Task):
    """The seed notebook's task: produce one fixed token sequence whatever the query.

    Queries are standard-normal state vectors (the seed's "random query states"); the reward
    is the fraction of positions equal to the target, so random play scores 1 / vocab_size.

    Args:
        target: Token ids to produce, e.g. ``[2, 5, 7, 3, 1]``. Its length is the response length.
        vocab_size: Number of token ids; every target token must be below it.
        query_dim: Features per query state; defaults to ``len(target)`` as in the seed.
    """

    def __init__(self, target: list[int], vocab_size: int = 10, query_dim: int | None = None) -> None:
        if not isinstance(vocab_size, int) or vocab_size < 2:
            raise ConfigError(f"vocab_size must be an integer >= 2; got {vocab_size!r}")
        if not target:
            raise ConfigError("target must hold at least one token id; got an empty list")
        bad = [t for t in target if not isinstance(t, int) or not 0 <= t < vocab_size]
        if bad:
            raise ConfigError(f"target tokens must be integers in [0, vocab_size={vocab_size}); got {bad}")
        if query_dim is not None and (not isinstance(query_dim, int) or query_dim < 1):
            raise ConfigError(f"query_dim must be an integer >= 1; got {query_dim!r}")
        self.target = list(target)
        self.vocab_size = vocab_size
        self.response_len = len(target)
        self.query_dim = query_dim or len(target)
        self._target = torch.tensor(self.target)  # [T]

    def sample_queries(self, n: int, generator: torch.Generator) -> Tensor:
        return torch.randn(n, self.query_dim, generator=generator)  # [n, D]

    def _matches(self, responses: Tensor) -> Tensor:
        if self._target.device != responses.device:
            self._target = self._target.to(responses.device)
        return responses == self._target  # [N, T]

    def reward(self, queries: Tensor, responses: Tensor, mask: Tensor) -> Tensor:
        return self._matches(responses).float().mean(-1)  # [N]

    def exact_match(self, queries: Tensor, responses: Tensor, mask: Tensor) -> Tensor:
        return self._matches(responses).all(-1)  # [N]

"""Policies: networks that sample responses to queries and score given responses.

The LightningModule talks to a policy only through :class:`Policy`'s two methods, so any
network that implements them (an MLP, an autoregressive transformer, a wrapped Hugging Face
causal LM) plugs in unchanged. A policy is built from the task it serves, which fixes the
vocabulary and response length: in a config, give its class and its own arguments only.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from contextlib import nullcontext

import torch
from torch import Tensor, nn

from sapo_lightning.checks import check_int, fail
from sapo_lightning.rollout import Rollout, Scores
from sapo_lightning.tasks import Task


class Policy(nn.Module):
    """Interface between the LightningModule and a network.

    ``pad_token`` is the token a rollout holds at the masked positions after a response ends,
    used to pad rollouts sampled in micro-batches to a common length.
    """

    pad_token: int = 0

    def sample(self, queries: Tensor, generator: torch.Generator | None = None, greedy: bool = False) -> Rollout:
        """Sample one response per query (argmax tokens when ``greedy``)."""
        raise NotImplementedError

    def score(self, queries: Tensor, responses: Tensor, entropy_grad: bool = False,
              attention: Tensor | None = None) -> Scores:
        """Log-probs and entropies of ``responses`` ``[N, T]`` given ``queries``. The log-probs are
        differentiable; the entropies only with ``entropy_grad`` (an entropy bonus), since their
        gradient keeps ``[N, T, V]`` tensors for the backward pass. ``attention`` ``[N, T]`` marks the
        tokens of an episode's transcript (a rollout's ``attention``); None: each response ends at its
        first stop token. Only the causal-LM policy, which runs episodes, reads it."""
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
        # log_p + Gumbel noise -log(-log u), in place: no new [N, V] tensor per op (V is 49k for a real model)
        tokens = u.clamp_min_(torch.finfo(u.dtype).tiny).log_().neg_().log_().neg_().add_(log_p).argmax(-1)
    return tokens, log_p.gather(-1, tokens.unsqueeze(-1)).squeeze(-1)


def token_scores(logits: Tensor, tokens: Tensor, entropy_grad: bool = False) -> Scores:
    """Log-probs of ``tokens`` ``[...]`` and entropies under ``logits`` ``[..., V]``
    (differentiable with ``entropy_grad``)."""
    log_p = torch.log_softmax(logits.float(), dim=-1)  # [..., V]
    with nullcontext() if entropy_grad else torch.no_grad():  # a diagnostic keeps no [..., V] tensor for backward
        entropy = -(log_p.exp() * log_p).sum(-1)
    return Scores(log_p.gather(-1, tokens.unsqueeze(-1)).squeeze(-1), entropy)


def check_token_queries(policy: str, task: Task) -> None:
    if task.query_dtype != torch.long:
        fail("model.policy", f"a policy for state queries with task {type(task).__name__}", policy)


@torch.no_grad()
def decode(
    next_logits: Callable[[Tensor | None], Tensor],
    n: int,
    max_new_tokens: int,
    stop_tokens: Sequence[int] | Tensor,
    pad_token: int,
    generator: torch.Generator | None,
    greedy: bool,
    device: torch.device,
    stop_when_done: bool = True,
) -> Rollout:
    """Autoregressive sampling loop shared by the token-by-token policies.

    ``next_logits(None)`` reads the queries and returns the logits ``[N, V]`` of the first
    response token; ``next_logits(tokens)`` appends ``tokens`` ``[N]`` and returns those of the
    next one. They are the logits of the distribution sampled from (tempered, perhaps
    truncated), whose log-probs :meth:`Policy.score` must compute too. A response ends at its
    first token among ``stop_tokens`` (kept and unmasked); its later positions hold
    ``pad_token`` and are masked out. Every step draws ``[N, V]`` uniforms from ``generator``
    whether a row has ended or not, so the draws do not depend on how the logits were
    computed. Decoding stops after ``max_new_tokens`` tokens, or, with ``stop_when_done``,
    once every response has ended. Without stop tokens, every response is ``max_new_tokens``
    long and ``truncated`` is None.
    """
    stops = torch.as_tensor(stop_tokens, dtype=torch.long, device=device)  # [S]
    responses = torch.full((n, max_new_tokens), pad_token, device=device)  # [N, T]
    log_probs = torch.zeros(n, max_new_tokens, device=device)  # [N, T]
    mask = torch.zeros(n, max_new_tokens, dtype=torch.bool, device=device)  # [N, T]
    done = torch.zeros(n, dtype=torch.bool, device=device)  # [N]
    logits = next_logits(None)  # [N, V]
    for t in range(max_new_tokens):
        tokens, token_log_probs = sample_from_logits(logits, generator, greedy)  # [N] each
        live = ~done
        responses[:, t] = torch.where(live, tokens, responses[:, t])
        log_probs[:, t] = torch.where(live, token_log_probs, 0.0)
        mask[:, t] = live
        done |= torch.isin(tokens, stops)
        if t + 1 == max_new_tokens or (stop_when_done and bool(done.all())):
            break
        logits = next_logits(responses[:, t])
    return Rollout(responses, log_probs, mask, ~done if stops.numel() else None)


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
        check_int("hidden_dim", hidden_dim, 1)
        if task.query_dtype != torch.float32:
            fail("model.policy", f"a policy for token queries with task {type(task).__name__}", "MLPPolicy")
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

    def score(self, queries: Tensor, responses: Tensor, entropy_grad: bool = False,
              attention: Tensor | None = None) -> Scores:
        return token_scores(self(queries), responses, entropy_grad)

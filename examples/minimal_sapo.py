"""SAPO in plain PyTorch: the algorithm without the framework (one file, CleanRL-style).

    python examples/minimal_sapo.py                    # prints reward as it learns; solved at step 100
    python examples/minimal_sapo.py --tau-neg 1.2 --steps 1000

The seed task: an MLP policy must emit the fixed target [2, 5, 7, 3, 1] (vocabulary 10) from a
random query state. Each step draws `batch_size` queries, samples `group_size` responses per
query from the frozen old policy, turns the rewards into group-relative advantages and takes
one Adam step on the SAPO loss. Every `sync_every` steps the old policy becomes the policy.
The math is written out in docs/math.md.

This file imports only torch, and it is `sapo-lightning fit --config configs/sapo.yaml` bit
for bit: same initialisation order, same query and rollout streams, the same float operations
in the same order. tests/test_benchmarks.py checks that both reach identical parameters.
"""

from __future__ import annotations

import argparse
import copy
from dataclasses import dataclass, fields

import torch
from torch import nn

TARGET = [2, 5, 7, 3, 1]  # the response every query should get
QUERIES, ROLLOUTS, VALIDATION = 0, 1, 2  # ids of the three random streams


@dataclass
class Args:  # the values of configs/sapo.yaml
    seed: int = 0
    steps: int = 500  # optimizer steps
    vocab_size: int = 10
    hidden_dim: int = 32
    batch_size: int = 8  # queries per step
    group_size: int = 8  # responses per query (G)
    lr: float = 1e-3
    tau_pos: float = 1.0  # gate temperature where the advantage is > 0
    tau_neg: float = 1.05  # gate temperature where the advantage is <= 0
    sync_every: int = 10  # steps between copies of the policy into the old policy
    val_every: int = 50  # steps between greedy evaluations (and printed lines)
    val_size: int = 64  # fixed validation queries


def derive_seed(*keys: int) -> int:
    """Mix integer keys (seed, rank, batch, stream) into one 63-bit seed (splitmix64)."""
    x = 0x9E3779B97F4A7C15
    for key in keys:
        x = (x ^ (key & 0xFFFFFFFFFFFFFFFF)) * 0xBF58476D1CE4E5B9 & 0xFFFFFFFFFFFFFFFF
        x = (x ^ (x >> 31)) * 0x94D049BB133111EB & 0xFFFFFFFFFFFFFFFF
        x ^= x >> 29
    return x & ((1 << 63) - 1)


def sample(logits: torch.Tensor, generator: torch.Generator | None) -> tuple[torch.Tensor, torch.Tensor]:
    """Tokens [N, T] from softmax(logits [N, T, V]) and their log-probs; greedy without a generator."""
    log_p = torch.log_softmax(logits, dim=-1)
    if generator is None:
        tokens = log_p.argmax(-1)
    else:  # Gumbel-max: argmax(log p + Gumbel noise) is an exact sample of p
        u = torch.rand(log_p.shape, generator=generator)
        gumbel = -torch.log(-torch.log(u.clamp_min(torch.finfo(u.dtype).tiny)))
        tokens = (log_p + gumbel).argmax(-1)
    return tokens, log_p.gather(-1, tokens.unsqueeze(-1)).squeeze(-1)


def group_advantages(rewards: torch.Tensor, group_size: int) -> torch.Tensor:
    """Â_i = (R_i - mean_group R) / (std_group R + 1e-6); exactly 0 for a group of equal rewards."""
    grouped = rewards.view(-1, group_size)  # [B, G]
    no_signal = (grouped == grouped[:, :1]).all(-1, keepdim=True)  # [B, 1]
    centered = torch.where(no_signal, 0.0, grouped - grouped.mean(-1, keepdim=True))
    return (centered / (grouped.std(-1, keepdim=True) + 1e-6)).view(-1)  # [N]


def sapo_loss(log_probs, old_log_probs, advantages, tau_pos: float, tau_neg: float) -> torch.Tensor:
    """-mean_i mean_t f(r_{i,t}) Â_i, f(r) = (4/τ) σ(τ(r - 1)); the gate w = ∂f/∂r = sech²(τ(r - 1)/2)."""
    ratio = torch.exp((log_probs - old_log_probs).clamp(-20.0, 20.0))  # r = π_θ / π_old, [N, T]
    adv = advantages.unsqueeze(-1)  # [N, 1]
    tau = torch.where(adv > 0, tau_pos, tau_neg)  # [N, 1]
    f = (4 / tau) * torch.sigmoid(tau * (ratio - 1))  # the soft gate f(r): 2/τ on-policy, slope 1 there
    return ((-f * adv).sum(-1) / ratio.shape[-1]).mean()  # seq-mean-token-mean (all T tokens real)


def train(args: Args, log=print, on_step=None) -> nn.Module:
    """Run the loop; returns the trained policy. ``on_step(step)`` is called as each step starts."""
    torch.manual_seed(args.seed)  # only the initial weights come from the global generator
    T, V = len(TARGET), args.vocab_size
    target = torch.tensor(TARGET)
    policy = nn.Sequential(nn.Linear(T, args.hidden_dim), nn.ReLU(), nn.Linear(args.hidden_dim, T * V))
    old_policy = copy.deepcopy(policy).requires_grad_(False)  # π_old: samples, never trained
    optimizer = torch.optim.Adam(policy.parameters(), lr=args.lr)
    logits = lambda net, queries: net(queries).view(-1, T, V)  # noqa: E731  all T tokens in one pass
    val_queries = torch.randn(args.val_size, T, generator=torch.Generator().manual_seed(
        derive_seed(args.seed, VALIDATION)))
    query_generator, recent_rewards = torch.Generator(), []
    for step in range(1, args.steps + 1):
        if on_step is not None:
            on_step(step)
        batch = step - 1  # batch b of rank 0 depends only on (seed, 0, b)
        query_generator.manual_seed(derive_seed(args.seed, 0, batch, QUERIES))
        queries = torch.randn(args.batch_size, T, generator=query_generator)  # [B, T] random states
        queries = queries.repeat_interleave(args.group_size, 0)  # [N, T], N = B * G
        with torch.no_grad():  # rollout: sample from π_old, reward, advantages
            rollout_generator = torch.Generator().manual_seed(derive_seed(args.seed, 0, batch, ROLLOUTS))
            responses, old_log_probs = sample(logits(old_policy, queries), rollout_generator)  # [N, T] each
            rewards = (responses == target).float().mean(-1)  # [N]: share of positions right
            advantages = group_advantages(rewards, args.group_size)  # [N]
            recent_rewards.append(rewards.mean())
        log_p = torch.log_softmax(logits(policy, queries), dim=-1)  # [N, T, V]
        log_probs = log_p.gather(-1, responses.unsqueeze(-1)).squeeze(-1)  # log π_θ, [N, T]
        loss = sapo_loss(log_probs, old_log_probs, advantages, args.tau_pos, args.tau_neg)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        if step % args.sync_every == 0:
            old_policy.load_state_dict(policy.state_dict())  # π_old <- π_θ
        if step % args.val_every == 0:
            with torch.no_grad():
                greedy, _ = sample(logits(policy, val_queries), None)
                correct = greedy == target  # [val_size, T]
                val_reward, exact = correct.float().mean(-1).mean(), correct.all(-1).float().mean()
            if log is not None:
                train_reward = torch.stack(recent_rewards).mean()
                log(f"step {step:5d}  train reward {train_reward:.3f}  "
                    f"val reward {val_reward:.3f}  val exact match {exact:.3f}")
            recent_rewards.clear()
    return policy


def parse_args() -> Args:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    for field in fields(Args):
        parser.add_argument(f"--{field.name.replace('_', '-')}", type=type(field.default), default=field.default)
    return Args(**vars(parser.parse_args()))


if __name__ == "__main__":
    train(parse_args())

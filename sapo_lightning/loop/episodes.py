"""Episodes of several turns, token in and token out: the loop that lets a policy and N environments talk.

Every episode advances turn by turn, all N together: the policy samples a turn (until its end-of-turn
token or ``max_new_tokens``), the environment answers the decoded turn, and its reply is appended as
tokens, through the chat template, to the very tokens the policy sampled. Nothing the policy sampled
is ever decoded and re-encoded: only the environment's text is tokenized. An episode ends when its
environment says ``done``, after ``max_turns`` turns, or when its next tokens would pass
``max_episode_tokens`` (truncated).

The rollout that comes out holds, per episode, everything after the first prompt with the holes of
the batch squeezed out: ``mask`` is the policy's tokens (the loss's), ``attention`` every token.
"""

from __future__ import annotations

import math
from typing import Any, NamedTuple, Protocol

import torch
from torch import Tensor

from sapo_lightning.rollout import Episodes, Rollout


class Limits(NamedTuple):
    max_turns: int  # policy turns per episode
    max_new_tokens: int  # tokens per turn
    max_episode_tokens: int  # tokens per episode, the first prompt included


class Decoder(Protocol):
    """What the loop needs of a policy: :class:`~sapo_lightning.lm.turns.TurnDecoder`."""

    ids: Tensor  # [N, S]
    attention: Tensor  # [N, S]

    def turn(self, live: Tensor, budget: Tensor, generator: torch.Generator | None, greedy: bool) -> Any: ...

    def extend(self, blocks: list[list[int]]) -> None: ...


class Talk(Protocol):
    """What the loop needs of a task: the environments' answers and their tokens
    (see :class:`~sapo_lightning.envs.EnvTask`)."""

    def step(self, row: int, turn: int, tokens: list[int]) -> tuple[str, Any]:
        """Row ``row``'s environment's answer to its ``turn``-th turn (1 is the first), whose tokens are
        ``tokens``: the turn as text and a :class:`~sapo_lightning.envs.Step`."""

    def reply(self, row: int, step: Any, stopped: bool) -> list[int]:
        """The tokens that follow a turn (``stopped``: it ended at its end-of-turn token): the template's, then
        the environment's message ``step.observation`` in its role, then the next turn's opening."""


def run_episodes(decoder: Decoder, talk: Talk, transcripts: list[list[dict[str, str]]], environments: list[Any],
                 limits: Limits, pad_token: int, generator: torch.Generator | None, greedy: bool) -> Rollout:
    """Run N episodes from the decoder's prompts to their ends; ``transcripts`` (the first messages) grow with
    every turn. The rollout of their tokens after the prompts, with :class:`~sapo_lightning.rollout.Episodes`."""
    n, device = decoder.ids.shape[0], decoder.ids.device
    prompt_width = decoder.ids.shape[1]
    live = torch.ones(n, dtype=torch.bool, device=device)
    ended = torch.full((n,), Episodes.ENDINGS.index("max_turns"), dtype=torch.long, device=device)
    turns = torch.zeros(n, dtype=torch.long, device=device)
    step_reward = torch.zeros(n, device=device)
    turn_rewards = torch.full((n, limits.max_turns), math.nan, device=device)
    masks, log_probs = [], []  # per appended block of columns: [N, k] policy mask and log-probs
    for turn in range(1, limits.max_turns + 1):
        room = limits.max_episode_tokens - decoder.attention.sum(-1)  # [N] tokens left in each episode
        truncate(live & (room <= 0), live, ended)
        if not bool(live.any()):
            break
        sampled = decoder.turn(live, room.clamp(max=limits.max_new_tokens), generator, greedy)
        masks.append(sampled.mask)
        log_probs.append(sampled.log_probs)
        turns += live.long()
        cut = live & ~sampled.stopped & (sampled.mask.sum(-1) == room)  # the episode's tokens ran out mid-turn
        truncate(cut, live, ended)
        blocks: list[list[int]] = [[] for _ in range(n)]
        for row in live.nonzero().flatten().tolist():
            text, step = talk.step(row, turn, sampled.tokens[row][sampled.mask[row]].tolist())
            transcripts[row].append({"role": "assistant", "content": text})
            step_reward[row] += step.reward
            turn_rewards[row, turn - 1] = step.reward
            if step.done:
                live[row] = False
                ended[row] = Episodes.ENDINGS.index("done")
            elif turn < limits.max_turns:
                blocks[row] = talk.reply(row, step, bool(sampled.stopped[row]))
                transcripts[row].append({"role": step.role, "content": step.observation or ""})
        if turn == limits.max_turns:
            break
        over = live & (torch.tensor([len(b) for b in blocks], device=device)
                       >= limits.max_episode_tokens - decoder.attention.sum(-1))  # no room for the reply and one token
        for row in over.nonzero().flatten().tolist():
            blocks[row] = []
        truncate(over, live, ended)
        if bool(live.any()):
            decoder.extend(blocks)
            width = max(map(len, blocks))
            masks.append(torch.zeros(n, width, dtype=torch.bool, device=device))
            log_probs.append(torch.zeros(n, width, device=device))
    episodes = Episodes(step_reward, turns, ended, turn_rewards, transcripts, environments)
    return squeeze(decoder, prompt_width, masks, log_probs, pad_token, episodes)


def truncate(rows: Tensor, live: Tensor, ended: Tensor) -> None:
    """End the episodes of ``rows`` ``[N]`` bool as truncated (in place)."""
    ended[rows] = Episodes.ENDINGS.index("truncated")
    live &= ~rows


def squeeze(decoder: Decoder, prompt_width: int, masks: list[Tensor], log_probs: list[Tensor], pad_token: int,
            episodes: Episodes) -> Rollout:
    """The transcripts after the prompts with their holes removed: each row's tokens first, in order, then padding."""
    ids, attention = decoder.ids[:, prompt_width:], decoder.attention[:, prompt_width:].bool()  # [N, S']
    n, device = ids.shape[0], ids.device
    mask = torch.cat(masks, 1) if masks else torch.zeros(n, 0, dtype=torch.bool, device=device)
    log_prob = torch.cat(log_probs, 1) if log_probs else torch.zeros(n, 0, device=device)
    order = torch.sort((~attention).long(), dim=1, stable=True).indices  # real columns first, in order
    length = max(int(attention.sum(-1).max()), 1) if ids.shape[1] else 1
    take = order[:, :length]

    def gathered(t: Tensor) -> Tensor:
        if t.shape[1] == 0:
            return torch.zeros(n, length, dtype=t.dtype, device=device)
        return t.gather(1, take)

    kept = gathered(attention)
    pad = decoder.ids.new_full((n, length), pad_token)
    responses = torch.where(kept, gathered(ids), pad)
    return Rollout(responses, torch.where(kept, gathered(log_prob), 0.0), gathered(mask) & kept,
                   episodes.ended == Episodes.ENDINGS.index("truncated"), kept, episodes)

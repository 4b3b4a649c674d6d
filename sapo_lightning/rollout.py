"""What the loop passes around: a batch of prompts, the responses sampled for it, and their scores.

These types are the core's: tasks make queries, policies make rollouts and scores, and the
loop slices and joins them (:func:`take`, :func:`take_rollout`, :func:`concat_queries`,
:func:`concat_rollouts`) for micro-batches, mini-batches and dynamic sampling.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, NamedTuple

import torch
from torch import Tensor


@dataclass(eq=False)
class Prompts:
    """A batch of tokenized prompts, left-padded.

    Left padding puts every prompt's last token in the last column, so generation continues
    all prompts from the same position.
    """

    input_ids: Tensor  # [B, P] long, left-padded with the tokenizer's pad id
    attention_mask: Tensor  # [B, P] long, 1 for real tokens, 0 for padding
    texts: list[str]  # each prompt as text, after the chat template (what the policy reads)
    columns: dict[str, list]  # the dataset's other columns, by name, one value per prompt

    def __len__(self) -> int:
        return len(self.texts)

    def repeat_interleave(self, repeats: int, dim: int = 0) -> Prompts:
        """Each prompt ``repeats`` times in place (a, a, b, b for 2), as ``Tensor.repeat_interleave`` on dim 0."""
        if dim != 0:
            raise ValueError(f"Prompts repeat along the batch dimension 0; got dim={dim}")

        def repeat(values: list) -> list:
            return [value for value in values for _ in range(repeats)]

        return Prompts(
            self.input_ids.repeat_interleave(repeats, 0),
            self.attention_mask.repeat_interleave(repeats, 0),
            repeat(self.texts),
            {name: repeat(values) for name, values in self.columns.items()},
        )

    def to(self, device: torch.device | str) -> Prompts:
        """The same prompts with their tensors on ``device`` (Lightning moves batches this way)."""
        return Prompts(self.input_ids.to(device), self.attention_mask.to(device), self.texts, self.columns)

    @classmethod
    def cat(cls, parts: list[Prompts]) -> Prompts:
        """The batches one after another, left-padded to the widest; the added columns are masked out
        (attention 0, id 0), so no position or attention of a prompt changes."""
        width = max(part.input_ids.shape[1] for part in parts)

        def padded(t: Tensor) -> Tensor:  # [b, P_part] -> [b, width]
            return torch.nn.functional.pad(t, (width - t.shape[1], 0), value=0)

        columns = {name: [v for part in parts for v in part.columns[name]] for name in parts[0].columns}
        return cls(torch.cat([padded(p.input_ids) for p in parts]),
                   torch.cat([padded(p.attention_mask) for p in parts]),
                   [text for part in parts for text in part.texts], columns)

    def __getitem__(self, index: slice) -> Prompts:
        """The prompts of a slice of the batch."""
        if not isinstance(index, slice):
            raise TypeError(f"Prompts are indexed by a slice; got {type(index).__name__}")
        columns = {name: values[index] for name, values in self.columns.items()}
        return Prompts(self.input_ids[index], self.attention_mask[index], self.texts[index], columns)



class Rollout(NamedTuple):
    """Responses sampled for a batch of queries: one completion each, or one episode's transcript each.

    In an episode (:class:`~sapo_lightning.envs.EnvTask`) a response is everything after the first
    prompt: the policy's turns and the environment's replies, token for token as the policy read them.
    ``mask`` is then the policy's tokens only (what trains), ``attention`` every token of the transcript.
    """

    responses: Tensor  # [N, T] long, padded after the end
    log_probs: Tensor  # [N, T] float, log-prob of each sampled token under the sampling policy; 0 off the mask
    mask: Tensor  # [N, T] bool, True for tokens the policy sampled (EOS included): the loss's tokens
    truncated: Tensor | None = None  # [N] bool, cut at the length bound before its end; None: fixed length
    attention: Tensor | None = None  # [N, T] bool, True for every token of a transcript; None: the mask
    episodes: Episodes | None = None  # what each episode's environment said and did; None: one turn


class Scores(NamedTuple):
    """Per-token scores of given responses."""

    log_probs: Tensor  # [N, T] float, log π(y_t | q, y_<t)
    entropy: Tensor  # [N, T] float, entropy of π(· | q, y_<t); differentiable only when scored with entropy_grad


def take(values: Any, rows: slice) -> Any:
    """Rows of a batch (a tensor, Prompts or None); the whole batch for ``slice(None)``."""
    return values if values is None or rows == slice(None) else values[rows]


def take_rollout(rollout: Rollout, rows: slice) -> Rollout:
    return rollout if rows == slice(None) else Rollout(*(None if t is None else t[rows] for t in rollout))


@dataclass(eq=False)
class Episodes:
    """What happened in each of N episodes, beside its tokens (a :class:`Rollout`'s ``episodes``)."""

    step_reward: Tensor  # [N] float, the sum of the environment's step rewards
    turns: Tensor  # [N] long, the policy's turns
    ended: Tensor  # [N] long, how the episode ended: an index into ENDINGS
    turn_rewards: Tensor  # [N, K] float, each turn's step reward; NaN after the last turn
    transcripts: list[list[dict[str, str]]]  # each episode's messages {role, content}, the first prompt's included
    environments: list[Any]  # each episode's environment object, as the episode left it

    ENDINGS = ("done", "max_turns", "truncated")

    def __len__(self) -> int:
        return len(self.transcripts)

    def __getitem__(self, rows: slice) -> Episodes:
        if not isinstance(rows, slice):
            raise TypeError(f"Episodes are indexed by a slice; got {type(rows).__name__}")
        return Episodes(self.step_reward[rows], self.turns[rows], self.ended[rows], self.turn_rewards[rows],
                        self.transcripts[rows], self.environments[rows])

    @classmethod
    def cat(cls, parts: list[Episodes]) -> Episodes:
        width = max(part.turn_rewards.shape[1] for part in parts)
        turn_rewards = [torch.nn.functional.pad(p.turn_rewards, (0, width - p.turn_rewards.shape[1]), value=math.nan)
                        for p in parts]
        return cls(*(torch.cat([getattr(p, name) for p in parts]) for name in ("step_reward", "turns", "ended")),
                   torch.cat(turn_rewards), [t for p in parts for t in p.transcripts],
                   [e for p in parts for e in p.environments])


def concat_queries(parts: list[Any]) -> Any:
    """One batch of queries from consecutive parts: tensors concatenated, Prompts by ``Prompts.cat``."""
    return torch.cat(parts) if isinstance(parts[0], Tensor) else type(parts[0]).cat(parts)


def concat_rollouts(rollouts: list[Rollout], pad_token: int) -> Rollout:
    """One rollout from the rollouts of consecutive micro-batches, padded to the longest one."""
    if len(rollouts) == 1:
        return rollouts[0]
    length = max(r.responses.shape[1] for r in rollouts)

    def padded(t: Tensor, value: float | bool) -> Tensor:  # [n, T_chunk] -> [n, length]
        return torch.nn.functional.pad(t, (0, length - t.shape[1]), value=value)

    truncated = None if any(r.truncated is None for r in rollouts) else torch.cat([r.truncated for r in rollouts])
    attention = None if rollouts[0].attention is None else torch.cat([padded(r.attention, False) for r in rollouts])
    episodes = None if rollouts[0].episodes is None else Episodes.cat([r.episodes for r in rollouts])
    return Rollout(
        torch.cat([padded(r.responses, pad_token) for r in rollouts]),
        torch.cat([padded(r.log_probs, 0.0) for r in rollouts]),
        torch.cat([padded(r.mask, False) for r in rollouts]),
        truncated,
        attention,
        episodes,
    )



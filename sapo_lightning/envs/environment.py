"""The environment protocol: an episode is a conversation between the policy and an :class:`Environment`."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Protocol, runtime_checkable


@dataclass(frozen=True)
class Step:
    """What the environment answers to one policy turn.

    Attributes:
        observation: Text given back to the policy as the next message; None: an empty message.
        reward: This turn's reward; an episode's reward is the sum over its turns.
        done: The episode is over: no more turns.
        role: The message's role in the chat template: ``user``, or ``tool`` for a tool's result (as the
            user's where the template has no tool role).
    """

    observation: str | None = None
    reward: float = 0.0
    done: bool = False
    role: str = "user"


@runtime_checkable
class Environment(Protocol):
    """One episode's environment: built fresh for every episode, so it may keep state.

    ``reset(row)`` gets the dataset row of the episode and returns the first user message;
    ``step(completion)`` gets the policy's decoded turn (its text, without the end-of-turn token)
    and returns a :class:`Step`.
    """

    def reset(self, row: dict[str, Any]) -> str: ...

    def step(self, completion: str) -> Step: ...

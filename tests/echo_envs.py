"""Small environments for the episode tests (tests/ is on sys.path under pytest: ``echo_envs.Counting``)."""

from __future__ import annotations

from sapo_lightning.envs import Step


class Counting:
    """Answers every turn with its number and what it heard; done after the row's ``turns`` (else never).

    Keeps every completion it was given in ``heard``, so a test can check it saw its own episode only.
    """

    def __init__(self, reward_per_turn: float = 0.25) -> None:
        self.reward_per_turn = reward_per_turn
        self.heard: list[str] = []
        self.row: dict | None = None

    def reset(self, row: dict) -> str:
        self.row = row
        return f"talk about {row['topic']}"

    def step(self, completion: str) -> Step:
        self.heard.append(completion)
        done = len(self.heard) >= (self.row.get("turns") or 99)
        return Step(f"turn {len(self.heard)}: {len(completion)} chars", self.reward_per_turn * len(completion) / 10,
                    done)


class Raising(Counting):
    def step(self, completion: str) -> Step:
        raise ValueError("the environment broke")


class WrongType(Counting):
    def step(self, completion: str) -> dict:
        return {"observation": "x"}


class NoStep:
    def reset(self, row: dict) -> str:
        return "hi"


def turns_heard(prompts: list[str], completions: list[str], environment: list, transcript: list, **_) -> list[float]:
    """A reward function over episodes: the turns the environment heard
    (reads the environment and transcript columns)."""
    assert all(t[-1]["content"] == c for t, c in zip(transcript, completions) if t[-1]["role"] == "assistant")
    return [float(len(env.heard)) for env in environment]

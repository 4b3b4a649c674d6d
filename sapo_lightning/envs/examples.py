"""Example environments: small, deterministic, and enough for a real model to learn something in a few turns."""

from __future__ import annotations

from typing import Any

from sapo_lightning.envs.environment import Step
from sapo_lightning.text.rewards import final_number


class Retry:
    """Answer a question; a wrong answer is told so and may be tried again.

    ``reset`` asks the row's ``prompt``; a turn whose final number (:func:`~sapo_lightning.text.rewards.final_number`)
    equals the row's ``answer`` ends the episode with reward 1; any other gets ``feedback`` and reward 0,
    until the task's ``max_turns``. A model that repeats its wrong answer never gets there: later turns
    matter only if it learns to revise.

    Args:
        feedback: The message after a wrong answer.
        prompt_column: The row's question.
        answer_column: The row's reference answer.
    """

    def __init__(self, feedback: str = "That is wrong. Try again: reply with only the number.",
                 prompt_column: str = "prompt", answer_column: str = "answer") -> None:
        self.feedback, self.prompt_column, self.answer_column = feedback, prompt_column, answer_column
        self.target: Any = None

    def reset(self, row: dict[str, Any]) -> str:
        self.target = final_number(row[self.answer_column])
        return str(row[self.prompt_column])

    def step(self, completion: str) -> Step:
        if final_number(completion) == self.target:
            return Step(reward=1.0, done=True)
        return Step(self.feedback)

"""The non-finite guard: a step with a non-finite loss or gradient norm changes nothing; K in a row stop the run.

One NaN step would poison the weights and every later checkpoint. The module asks the guard at
each optimizer step (all ranks with the same answer); a step it refuses is skipped, so the weights
and the optimizer state stay those of the last good step, and any checkpoint holds finite values.
"""

from __future__ import annotations

from sapo_lightning.checks import check_int


class NonFiniteTraining(RuntimeError):
    """Too many optimizer steps in a row had a non-finite loss or gradient norm (the CLI exits 1)."""


class NonFiniteGuard:
    """Counts the refused steps (``skipped``, over the run) and stops after ``max_in_a_row`` in a row.

    Args:
        max_in_a_row: Non-finite steps in a row that stop the run; None never stops.
    """

    def __init__(self, max_in_a_row: int | None = 3) -> None:
        self.max_in_a_row = check_int("max_nonfinite_steps", max_in_a_row, 1, allow_none=True)
        self.skipped = 0
        self.in_a_row = 0

    def admit(self, finite: bool, step: int) -> bool:
        """Whether optimizer step ``step`` (1 is the first) may change the weights; raise at the K-th refusal in a row."""
        if finite:
            self.in_a_row = 0
            return True
        self.skipped += 1
        self.in_a_row += 1
        if self.max_in_a_row is not None and self.in_a_row >= self.max_in_a_row:
            raise NonFiniteTraining(
                f"{self.in_a_row} optimizer steps in a row (the last: step {step}) had a non-finite loss or "
                f"gradient norm (model.max_nonfinite_steps={self.max_in_a_row}); the run stopped, its checkpoints "
                f"hold the weights of the last finite step")
        return False

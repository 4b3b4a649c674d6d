"""When something periodic is due: a pure function of the optimizer step, shared by the callbacks."""

from __future__ import annotations


def crossed_multiple(global_step: int, steps_per_rollout: int, every_n_steps: int) -> bool:
    """True at the end of a batch whose optimizer steps took ``global_step`` onto or past a multiple of N.

    A rollout batch makes ``steps_per_rollout`` (S) optimizer steps, so the batch that just
    ended covered steps (global_step − S, global_step]. With S = 1 this is ``global_step % N == 0``;
    with S > 1 and N not a multiple of S it fires at the first batch end at or past each multiple.
    It depends on nothing but its arguments, so a resumed run fires where the uninterrupted one did.
    """
    return global_step // every_n_steps > (global_step - steps_per_rollout) // every_n_steps

"""Test-only callback: what one rank's process still holds at interpreter exit, written to ``<out>/rank<R>.json``."""

from __future__ import annotations

import atexit
import json
from pathlib import Path

import torch
from lightning.pytorch import Callback, LightningModule, Trainer


class ExitProbe(Callback):
    """At exit (an ``atexit`` handler, registered at setup, so also after a run that raised): whether a process
    group is still initialized, and the names of the process's native threads (Linux, ``/proc``)."""

    def __init__(self, out: str) -> None:
        self.out = Path(out)

    def setup(self, trainer: Trainer, pl_module: LightningModule, stage: str) -> None:
        atexit.register(self.record, trainer.global_rank)

    def record(self, rank: int) -> None:
        tasks = Path("/proc/self/task")
        threads = sorted((task / "comm").read_text().strip() for task in tasks.iterdir())
        self.out.mkdir(parents=True, exist_ok=True)
        state = {"initialized": torch.distributed.is_initialized(), "threads": threads}
        (self.out / f"rank{rank}.json").write_text(json.dumps(state))

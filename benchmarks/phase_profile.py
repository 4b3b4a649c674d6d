"""Where a training step's time goes: seconds per phase of every step, and torch.profiler's top operators of each
phase of one step.

    python benchmarks/phase_profile.py -- --config configs/smollm2_arithmetic.yaml --config configs/bf16.yaml
    python benchmarks/phase_profile.py --steps 6 --profile-step 4 --top 10 -- --config configs/smollm2_arithmetic.yaml

Everything after ``--`` goes to ``sapo-lightning fit`` (run in this process, without validation or checkpoints,
``--threads`` torch threads). Phases: ``sample`` (π_old's rollout: the policy itself when it is synced every
step, else its frozen copy), ``score`` (the update's forward with gradients), ``backward``
(``manual_backward``) and ``optimizer`` (the optimizer's step, gradient clipping included); ``other`` is the
rest of the step. Each step prints its phases' seconds; step ``--profile-step`` (counted from 0) runs under
``torch.profiler``, and its ``aten::`` operators are charged to the phase whose span they start in: per phase,
their total self CPU seconds and the ``--top`` largest.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from collections import defaultdict
from functools import wraps

import torch
from lightning.pytorch import Callback


class PhaseProfile(Callback):
    """Times the phases of every training step and profiles step ``profile_step`` by operator."""

    def __init__(self, profile_step: int = 3, top: int = 8) -> None:
        self.profile_step, self.top = profile_step, top
        self.phases: dict[str, float] = defaultdict(float)
        self.profiler: torch.profiler.profile | None = None

    def _wrap(self, owner, name: str, phase: str) -> None:
        method = getattr(owner, name)

        @wraps(method)
        def timed(*args, **kwargs):
            start = time.perf_counter()
            with torch.profiler.record_function(f"PHASE {phase}"):
                try:
                    return method(*args, **kwargs)
                finally:
                    self.phases[phase] += time.perf_counter() - start

        setattr(owner, name, timed)

    def on_train_start(self, trainer, pl_module) -> None:
        from sapo_lightning.policies import Policy

        behaviour = pl_module.old_policy if isinstance(pl_module.old_policy, Policy) else pl_module.policy
        self._wrap(behaviour, "sample", "sample")
        self._wrap(pl_module.policy, "score", "score")
        self._wrap(pl_module, "manual_backward", "backward")
        self._wrap(trainer.optimizers[0], "step", "optimizer")

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        self.phases.clear()
        self.start = time.perf_counter()
        if batch_idx == self.profile_step:
            self.profiler = torch.profiler.profile()
            self.profiler.__enter__()

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        total = time.perf_counter() - self.start
        phases = dict(self.phases) | {"other": total - sum(self.phases.values())}
        print(f"step {batch_idx}: {total:.2f} s = " + ", ".join(f"{k} {v:.2f}" for k, v in phases.items()), flush=True)
        if self.profiler is not None:
            self.profiler.__exit__(None, None, None)
            self.print_operators(self.profiler.events())
            self.profiler = None

    def print_operators(self, events) -> None:
        spans = [(e.name.removeprefix("PHASE "), e.time_range.start, e.time_range.end)
                 for e in events if e.name.startswith("PHASE ")]
        by_phase: dict[str, dict[str, float]] = defaultdict(lambda: defaultdict(float))
        for event in events:
            if not event.name.startswith("aten::"):
                continue
            phase = next((name for name, start, end in spans if start <= event.time_range.start <= end), "other")
            by_phase[phase][event.name.removeprefix("aten::")] += event.self_cpu_time_total / 1e6
        for phase, operators in by_phase.items():
            top = sorted(operators.items(), key=lambda item: -item[1])[: self.top]
            print(f"  {phase}: operators {sum(operators.values()):.2f} s; "
                  + ", ".join(f"{name} {seconds:.3f}" for name, seconds in top), flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=5, help="optimizer steps")
    parser.add_argument("--profile-step", type=int, default=3, help="the step run under torch.profiler (from 0)")
    parser.add_argument("--top", type=int, default=8, help="operators printed per phase")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("fit_args", nargs=argparse.REMAINDER, help="-- then the arguments of sapo-lightning fit")
    args = parser.parse_args()
    fit_args = args.fit_args[1:] if args.fit_args[:1] == ["--"] else args.fit_args
    if not fit_args:
        parser.error("give the run's arguments after --, e.g. -- --config configs/smollm2_arithmetic.yaml")
    from sapo_lightning.cli import main as cli

    sys.modules.setdefault("phase_profile", sys.modules[__name__])  # the CLI imports the callback by this name
    sys.argv = sys.argv[:1]  # the CLI reads its arguments from the list below only
    with tempfile.TemporaryDirectory() as root:
        cli(["fit", *fit_args, f"--trainer.max_steps={args.steps}", "--trainer.limit_val_batches=0",
             "--trainer.enable_checkpointing=false", "--trainer.enable_progress_bar=false",
             f"--trainer.default_root_dir={root}", f"--threads={args.threads}",
             "--trainer.callbacks+=phase_profile.PhaseProfile", f"--trainer.callbacks.profile_step={args.profile_step}",
             f"--trainer.callbacks.top={args.top}"])


if __name__ == "__main__":
    main()

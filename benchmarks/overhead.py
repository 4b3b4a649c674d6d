"""Per-optimizer-step cost of ``sapo-lightning fit`` against a plain PyTorch loop with the same math.

    python benchmarks/overhead.py                       # seed size and 4096 sequences per step
    python benchmarks/overhead.py --sizes seed xlarge --no-progress-bar

Both sides run in this process, one after the other, on ``configs/sapo.yaml`` (SAPO, MLP
hidden 32, T=5, V=10, group 8, Adam lr 1e-3, old-policy sync every 10 steps, logging every
10 steps, validation on 64 greedy queries every 50 steps), at 8 queries per step (64
sequences, the seed size), 512 (4096 sequences) and, with ``--sizes xlarge``, 2048 (16384):

- ``fit`` is the real command, ``sapo_lightning.cli.main(["fit", "--config", ...])``: the CLI,
  the TensorBoard logger with every diagnostic, validation, the CLI's atomic (fsync'ed)
  checkpoints every 50 steps, and the progress bar (writing to /dev/null) unless
  ``--no-progress-bar``.
- ``plain`` is the loop one writes by hand, ``examples/minimal_sapo.py`` (torch only): the same
  query stream, rollout, rewards, group advantages, SAPO objective, ``loss.backward()``,
  ``Adam.step()``, the same sync and the same greedy validation, printing nothing.
- ``floor`` is Lightning's own per-step cost: the same Trainer settings, checkpointing and
  DataModule driving a module whose step is one manual-optimization Adam step on a single
  parameter and whose validation does nothing. fit − plain − floor is what the RLModule adds
  beyond the math (its diagnostics, their TensorBoard writes, its validation and checkpoint).
- ``barebones`` is the least Lightning can cost: ``Trainer(barebones=True)`` (no logger, no
  progress bar, no checkpoint, no callback) driving the same one-parameter Adam step, with one
  optimizer step per batch, and again with 50 per batch, each against the same step written
  without Lightning. Its cost beyond that raw step is compared with the *budget* a goal leaves,
  (goal − 1) × plain: a goal whose budget is below it cannot be met by any module run under
  Lightning's loop with one optimizer step per batch. The 50-steps-per-batch run splits it into
  a per-batch part (fetch, batch hooks, loop bookkeeping) and a per-optimizer-step part
  (``manual_backward`` and ``LightningOptimizer.step`` with their hooks).

Timing: a timestamp at the start of every step (for ``fit`` and ``floor``, a callback's
``on_train_batch_start``); the sides run ``--repeats`` times, alternating. The run is cut into
windows of 50 steps, each holding the same periodic work (5 log points, 5 syncs, 1 validation,
1 checkpoint), after a warm-up of one window. A window's time / 50 is a per-step cost with
everything amortised; the table gives the fastest window (the least disturbed by other
processes on a shared machine) and the median window, over all repeats, in wall time and in
CPU time of the process (with one torch thread, the work done: less sensitive to other
processes' load, but blind to waiting, e.g. on the checkpoint's fsync). The last column runs
both sides 50 steps from the same seed and prints the largest parameter difference: 0 means
the two loops do the same math.
"""

from __future__ import annotations

import argparse
import logging
import os
import statistics
import sys
import tempfile
import time
import warnings
from pathlib import Path

import torch
from lightning.pytorch import Callback, LightningModule, Trainer

from sapo_lightning.checkpointing import AtomicCheckpointIO, RunCheckpoint
from sapo_lightning.cli import main
from sapo_lightning.compare.runner import redirect_output
from sapo_lightning.data import QueryDataModule
from sapo_lightning.tasks import FixedTarget

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "examples"))
import minimal_sapo  # noqa: E402  the plain loop: one copy, the example's

CONFIG = ROOT / "configs" / "sapo.yaml"
SIZES = {"seed": 8, "large": 512, "xlarge": 2048}  # queries per step; x group 8 = 64, 4096, 16384 sequences
GOALS = {"seed": 1.25, "large": 1.05, "xlarge": 1.05}
STEPS = {"seed": 3000, "large": 500, "xlarge": 200}
GROUP, TARGET, VOCAB, LR = 8, [2, 5, 7, 3, 1], 10, 1e-3
LOG_EVERY, VAL_EVERY, VAL_SIZE, SEED = 10, 50, 64, 0
WINDOW = VAL_EVERY


class StepClock(Callback):
    """Timestamps of every training batch start of ``fit``, collected in :attr:`stamps`."""

    stamps: list[tuple[float, float]] = []

    def on_train_batch_start(self, *args) -> None:
        StepClock.stamps.append(now())


def now() -> tuple[float, float]:
    """(wall, CPU) seconds: CPU time is this process's, every thread (the TensorBoard writer's too)."""
    return time.perf_counter(), time.process_time()


def plain_loop(batch_size: int, steps: int, stamps: list[tuple[float, float]] | None = None,
               **changes) -> torch.nn.Module:
    """examples/minimal_sapo.py's loop (configs/sapo.yaml's math, no framework) at ``batch_size``, printing nothing.

    ``changes`` override other fields of its ``Args`` (the test changes ``sync_every``).
    """
    args = minimal_sapo.Args(batch_size=batch_size, steps=steps, **changes)
    on_step = None if stamps is None else (lambda step: stamps.append(now()))
    return minimal_sapo.train(args, log=None, on_step=on_step)


class Floor(LightningModule):
    """One Adam step on one parameter per batch, an empty validation: Lightning's loop and nothing else."""

    def __init__(self) -> None:
        super().__init__()
        self.automatic_optimization = False
        self.weight = torch.nn.Parameter(torch.zeros(1))

    def training_step(self, batch: dict, batch_idx: int) -> None:
        optimizer = self.optimizers()
        optimizer.zero_grad()
        self.manual_backward(self.weight.sum())
        optimizer.step()

    def validation_step(self, batch: list, batch_idx: int) -> None:
        pass

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.Adam([self.weight], lr=LR)


def floor(batch_size: int, steps: int, root: str, progress_bar: bool) -> None:
    """configs/sapo.yaml's Trainer settings and DataModule around :class:`Floor`."""
    data = QueryDataModule(FixedTarget(TARGET, vocab_size=VOCAB), batch_size=batch_size, val_size=VAL_SIZE, seed=SEED)
    with redirect_output(os.devnull):
        checkpoint = RunCheckpoint(filename="{step}", save_last=True, every_n_train_steps=VAL_EVERY)  # the CLI's
        trainer = Trainer(
            max_steps=steps, accelerator="cpu", devices=1, val_check_interval=VAL_EVERY, check_val_every_n_epoch=None,
            log_every_n_steps=LOG_EVERY, enable_model_summary=False, enable_progress_bar=progress_bar,
            default_root_dir=root, callbacks=[StepClock(), checkpoint], plugins=[AtomicCheckpointIO()],
        )
        trainer.fit(Floor(), data)


class Bare(LightningModule):
    """:class:`Floor`'s step, ``steps_per_batch`` times per batch, each step timestamped."""

    def __init__(self, steps_per_batch: int, stamps: list[tuple[float, float]]) -> None:
        super().__init__()
        self.automatic_optimization = False
        self.weight = torch.nn.Parameter(torch.zeros(1))
        self.steps_per_batch, self.stamps = steps_per_batch, stamps

    def training_step(self, batch: dict, batch_idx: int) -> None:
        optimizer = self.optimizers()
        for _ in range(self.steps_per_batch):
            self.stamps.append(now())
            optimizer.zero_grad()
            self.manual_backward(self.weight.sum())
            optimizer.step()

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.Adam([self.weight], lr=LR)


def raw_step(steps: int) -> list[tuple[float, float]]:
    """Timestamps of :class:`Bare`'s step written without Lightning."""
    weight = torch.nn.Parameter(torch.zeros(1))
    optimizer = torch.optim.Adam([weight], lr=LR)
    stamps = []
    for _ in range(steps):
        stamps.append(now())
        optimizer.zero_grad()
        weight.sum().backward()
        optimizer.step()
    return stamps


def barebones(steps: int, steps_per_batch: int, root: str) -> list[tuple[float, float]]:
    """Timestamps of every optimizer step of ``Trainer(barebones=True)`` around :class:`Bare`."""
    stamps: list[tuple[float, float]] = []
    data = QueryDataModule(FixedTarget(TARGET, vocab_size=VOCAB), batch_size=SIZES["seed"], seed=SEED)
    with redirect_output(os.devnull):
        trainer = Trainer(max_steps=steps, accelerator="cpu", devices=1, barebones=True, limit_val_batches=0,
                          default_root_dir=root)
        trainer.fit(Bare(steps_per_batch, stamps), data)
    return stamps


def lightning_minimum(root: str, repeats: int, steps: int = 5000) -> tuple[float, float]:
    """(per-batch, per-optimizer-step) wall seconds Lightning adds at the least (see ``barebones``)."""
    cost = {1: [], 50: []}  # steps per batch -> extra seconds per optimizer step, one per repeat
    for _ in range(repeats):
        raw = min(w[0] for w in windows(raw_step(steps)))
        for k in cost:
            cost[k].append(min(w[0] for w in windows(barebones(steps, k, root))) - raw)
    one, fifty = min(cost[1]), min(cost[50])
    per_step = (50 * fifty - one) / 49  # one = batch + step, fifty = batch / 50 + step
    return one - per_step, per_step


def fit(batch_size: int, steps: int, root: str, progress_bar: bool, clock: bool = False) -> Path:
    """``sapo-lightning fit --config configs/sapo.yaml`` at ``batch_size``; returns its log dir."""
    args = [
        "fit", "--config", str(CONFIG), f"--data.batch_size={batch_size}", f"--trainer.max_steps={steps}",
        f"--trainer.default_root_dir={root}", f"--trainer.enable_progress_bar={str(progress_bar).lower()}",
    ]
    if clock:
        args.append(f"--trainer.callbacks+={__name__}.StepClock")
    with redirect_output(os.devnull):
        main(args)
    return max((Path(root) / "lightning_logs").iterdir(), key=lambda p: p.stat().st_mtime)


def windows(stamps: list[tuple[float, float]]) -> list[tuple[float, float]]:
    """Per-step (wall, CPU) seconds of each full window of ``WINDOW`` steps after the first (warm-up) one."""
    starts = stamps[WINDOW::WINDOW]
    return [((b[0] - a[0]) / WINDOW, (b[1] - a[1]) / WINDOW) for a, b in zip(starts, starts[1:])]


def measure(size: str, steps: int, repeats: int, progress_bar: bool, root: str) -> dict[str, list]:
    """Per-step (wall, CPU) seconds of every window of every repeat, by side."""
    batch_size = SIZES[size]
    result: dict[str, list] = {"plain": [], "fit": [], "floor": []}
    for _ in range(repeats):
        stamps: list[tuple[float, float]] = []
        plain_loop(batch_size, steps + 1, stamps)
        result["plain"] += windows(stamps)
        StepClock.stamps = []
        fit(batch_size, steps + 1, root, progress_bar, clock=True)
        result["fit"] += windows(StepClock.stamps)
        StepClock.stamps = []
        floor(batch_size, steps + 1, root, progress_bar)
        result["floor"] += windows(StepClock.stamps)
    return result


def same_math(batch_size: int, steps: int, root: str, **changes) -> float:
    """Largest |θ_fit − θ_plain| after ``steps`` steps from the same seed (0 when the math is the same).

    ``changes`` go to the plain loop only (see :func:`plain_loop`), so that a test can show a difference.
    """
    run = fit(batch_size, steps, root, progress_bar=False)
    (checkpoint,) = (run / "checkpoints").glob(f"*step={steps}.ckpt")
    state = torch.load(checkpoint, weights_only=True)["state_dict"]
    policy = plain_loop(batch_size, steps, **changes)  # an nn.Sequential: fit's MLPPolicy.net
    assert len(policy.state_dict()) == sum(k.startswith("policy.") for k in state)
    return max((state[f"policy.net.{k}"] - v).abs().max().item() for k, v in policy.state_dict().items())


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", nargs="+", choices=list(SIZES), default=["seed", "large"])
    parser.add_argument("--steps", type=int, default=None, help=f"steps per side and repeat (default: {STEPS})")
    parser.add_argument("--repeats", type=int, default=2, help="alternating runs of each side")
    parser.add_argument("--threads", type=int, default=1, help="torch intra-op threads for both sides")
    parser.add_argument("--no-progress-bar", action="store_true", help="run fit with the progress bar off")
    return parser.parse_args()


def run() -> None:
    args = parse_args()
    torch.set_num_threads(args.threads)
    warnings.filterwarnings("ignore")
    logging.getLogger("lightning").setLevel(logging.ERROR)  # "GPU available: False" etc. on every run
    progress_bar = not args.no_progress_bar
    print(f"torch {torch.__version__}, {args.threads} torch thread(s), {os.cpu_count()} cpus, "
          f"load average {os.getloadavg()[0]:.1f}, fit's progress bar {'on' if progress_bar else 'off'}")
    with tempfile.TemporaryDirectory() as root:
        per_batch, per_step = lightning_minimum(root, args.repeats)
        minimum = per_batch + per_step
        print(f"Lightning's least cost (Trainer(barebones=True), empty step): {1e3 * minimum:.3f} ms per optimizer "
              f"step at one step per batch = {1e3 * per_batch:.3f} ms per batch + {1e3 * per_step:.3f} ms per "
              f"optimizer step (manual_backward, LightningOptimizer.step)\n")
        print("| size | sequences/step | clock | plain ms/step (best / median window) | fit ms/step (best / median) "
              "| ratio best | ratio median | goal | budget (goal-1) x plain ms | Lightning floor ms/step (best) "
              "| module's own ms/step | max abs dtheta |")
        print("|---|---|---|---|---|---|---|---|---|---|---|---|")
        for size in args.sizes:
            steps = args.steps or STEPS[size]
            m = measure(size, steps, args.repeats, progress_bar, root)
            delta = same_math(SIZES[size], VAL_EVERY, root)
            for i, clock in enumerate(("wall", "CPU")):
                (p_best, p_med), (f_best, f_med), (floor_best, _) = (
                    (min(w[i] for w in m[k]), statistics.median(w[i] for w in m[k])) for k in ("plain", "fit", "floor"))
                budget = (GOALS[size] - 1) * p_best
                verdict = "met" if f_best / p_best <= GOALS[size] else "missed"
                if budget < minimum:
                    verdict += " (budget < Lightning's least cost)"
                print(f"| {size} | {SIZES[size] * GROUP} | {clock} | {1e3 * p_best:.2f} / {1e3 * p_med:.2f} "
                      f"| {1e3 * f_best:.2f} / {1e3 * f_med:.2f} | {f_best / p_best:.2f}x | {f_med / p_med:.2f}x "
                      f"| <= {GOALS[size]}x: {verdict} | {1e3 * budget:.2f} | {1e3 * floor_best:.2f} "
                      f"| {1e3 * (f_best - p_best - floor_best):.2f} | {delta:.1e} |", flush=True)
    print(f"load average after: {os.getloadavg()[0]:.1f}")


if __name__ == "__main__":
    sys.exit(run())

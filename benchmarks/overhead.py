"""Per-optimizer-step cost of ``sapo-lightning fit`` against a plain PyTorch loop with the same math.

    python benchmarks/overhead.py                       # seed size, 4096 sequences, the transformer config
    python benchmarks/overhead.py --sizes seed xlarge --repeats 3 --no-progress-bar

Both sides run in this process, one after the other, alternating, ``--repeats`` times:

- ``seed``, ``large``, ``xlarge``: ``configs/sapo.yaml`` (SAPO, MLP hidden 32, T=5, V=10, group 8,
  Adam lr 1e-3, old-policy sync every 10 steps, logging every 10 steps, validation on 64 greedy
  queries every 50 steps) at 8 queries per step (64 sequences, the seed size), 512 (4096
  sequences) and 2048 (16384). The plain side is ``examples/minimal_sapo.py`` (torch only): the
  same query stream, rollout, rewards, group advantages, SAPO objective, ``loss.backward()``,
  ``Adam.step()``, sync and greedy validation, printing nothing.
- ``transformer``: ``configs/transformer.yaml`` as it is (a 2-layer transformer sampling with a KV
  cache, 16 queries x 8 = 128 sequences, sync every step, gradient clipping, validation on 256
  queries every 50 steps). The plain side is :func:`plain_library_loop`: the package's own task,
  policy, advantages and objective called by hand in a loop with ``torch.optim.Adam`` and
  ``clip_grad_norm_``, without Lightning (the objective's diagnostics come with its loss).

``fit`` is the real command, ``sapo_lightning.cli.main(["fit", "--config", ...])``: the CLI with
its defaults, the TensorBoard logger with every diagnostic, validation, the CLI's atomic
checkpoints, and its progress bar (writing to /dev/null) unless ``--no-progress-bar``.

**What is reported: the average over a long run**, not the fastest stretch. Each run makes
``warm-up + steps + 1`` optimizer steps; a timestamp is taken as each step starts (for ``fit``, a
callback's ``on_train_batch_start``), and a run's cost per step is the time from the start of
step ``warm-up + 1`` to the start of step ``warm-up + steps + 1``, divided by ``steps``: every
step after the warm-up, with every validation, log point and checkpoint that falls among them
(``steps`` is a multiple of the validation and checkpoint periods, so each run holds its share).
The table gives the mean of the repeats and their range, in wall time and in CPU time of the
process (with one torch thread, the work done: less moved by other processes' load, but blind
to waiting, e.g. on the checkpoint's fsync). fit / plain is the ratio of the means.

Two further rows explain what is left:

- ``floor`` is Lightning with the CLI's callbacks (checkpoints, progress bar) and the seed
  DataModule driving a module whose step is one manual-optimization Adam step on a single
  parameter and whose validation does nothing: fit - plain - floor is what the RLModule adds
  beyond the math (its diagnostics, their TensorBoard writes, its validation and checkpoint).
- ``barebones`` is the least Lightning can cost: ``Trainer(barebones=True)`` (no logger, no
  progress bar, no checkpoint, no callback) driving the same one-parameter Adam step, with one
  optimizer step per batch, and again with 50 per batch, each against the same step written
  without Lightning. A goal whose *budget*, (goal - 1) x plain, is below it cannot be met by
  any module run under Lightning's loop with one optimizer step per batch.

The last column runs both sides 50 steps from the same seed and prints the largest parameter
difference: 0 means the two loops do the same math.
"""

from __future__ import annotations

import argparse
import copy
import importlib
import logging
import os
import statistics
import sys
import tempfile
import time
import warnings
from pathlib import Path
from typing import Any

import torch
import yaml
from lightning.pytorch import Callback, LightningModule, Trainer

from sapo_lightning.advantages import group_advantages_with_stats
from sapo_lightning.cli import CHECKPOINT_DEFAULTS, main
from sapo_lightning.compare.runner import redirect_output
from sapo_lightning.data import QueryDataModule
from sapo_lightning.loop.checkpointing import AtomicCheckpointIO, RunCheckpoint
from sapo_lightning.seeds import ROLLOUT_STREAM, derive_seed
from sapo_lightning.tasks import FixedTarget

try:
    from sapo_lightning.callbacks import ProgressBar  # the CLI's default bar
except ImportError:  # an earlier tree (measured for "before" figures): Lightning's default bar
    ProgressBar = None

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "examples"))
import minimal_sapo  # noqa: E402  the plain loop: one copy, the example's

CONFIG = ROOT / "configs" / "sapo.yaml"
TRANSFORMER = ROOT / "configs" / "transformer.yaml"
SIZES = {"seed": 8, "large": 512, "xlarge": 2048, "transformer": 16}  # queries per step (x group 8 = sequences)
CONFIGS = {"seed": CONFIG, "large": CONFIG, "xlarge": CONFIG, "transformer": TRANSFORMER}
GOALS = {"seed": 1.5, "large": 1.05, "xlarge": 1.05, "transformer": 1.05}  # issue #13 item 3
STEPS = {"seed": 3000, "large": 500, "xlarge": 500, "transformer": 500}  # timed steps per run, after the warm-up
WARMUP = 50
GROUP, TARGET, VOCAB, LR = 8, [2, 5, 7, 3, 1], 10, 1e-3
LOG_EVERY, VAL_EVERY, VAL_SIZE, SEED = 10, 50, 64, 0


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


def build(spec: dict[str, Any], *args: Any) -> Any:
    """``class_path(*args, **init_args)`` of a config entry."""
    module, _, name = spec["class_path"].rpartition(".")
    return getattr(importlib.import_module(module), name)(*args, **spec.get("init_args", {}))


def plain_library_loop(config: Path, batch_size: int, steps: int,
                       stamps: list[tuple[float, float]] | None = None) -> torch.nn.Module:
    """``config``'s run written by hand: the package's task, policy, advantages and objective, no Lightning.

    What ``RLModule.training_step`` does with one update per rollout, in the order ``fit`` does it
    (weights drawn after ``seed_everything``, batch ``i``'s queries and rollout seed from the data
    module's streams, the old policy refreshed every ``sync.every_n_steps``, greedy validation of
    the whole validation set every ``trainer.val_check_interval`` steps), without its diagnostics,
    logging or checkpoints. Returns the trained policy.
    """
    cfg = yaml.safe_load(config.read_text())
    model, data, seed = cfg["model"], cfg["data"], cfg["seed_everything"]
    group, scale, clip = model.get("group_size", 8), model.get("advantage_scale", "group"), model.get("max_grad_norm")
    assert model.get("updates_per_rollout", 1) == 1
    torch.manual_seed(seed)
    task = build(data["task"])
    objective = build(model["objective"])
    policy = build(model["policy"], task)
    old_policy = copy.deepcopy(policy).requires_grad_(False).eval()
    optimizer = build(model["optimizer"], policy.parameters())
    sync_every, val_every = cfg["sync"]["every_n_steps"], cfg["trainer"]["val_check_interval"]
    val_queries = task.collate(task.eval_rows("val", data.get("val_size", 64), seed))
    for step in range(1, steps + 1):
        if stamps is not None:
            stamps.append(now())
        index = step - 1
        queries = task.train_batch(index, batch_size, seed, 0, 1).repeat_interleave(group, 0)
        with torch.no_grad():
            generator = torch.Generator().manual_seed(derive_seed(seed, 0, index, ROLLOUT_STREAM))
            rollout = old_policy.sample(queries, generator)
            rewards = task.rewards(queries, rollout)
            advantages = group_advantages_with_stats(rewards.total, group, scale).advantages
        scores = policy.score(queries, rollout.responses)
        loss = objective(scores.log_probs, rollout.log_probs, advantages, rollout.mask).loss
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if clip is not None:
            torch.nn.utils.clip_grad_norm_(policy.parameters(), clip)
        optimizer.step()
        if step % sync_every == 0:
            old_policy.load_state_dict(policy.state_dict())
        if step % val_every == 0:
            policy.eval()
            with torch.no_grad():
                greedy = policy.sample(val_queries, greedy=True)
                task.evaluate(val_queries, greedy)
            policy.train()
    return policy


def plain(size: str, steps: int, stamps: list[tuple[float, float]] | None = None) -> torch.nn.Module:
    """The plain side of ``size``."""
    if CONFIGS[size] == CONFIG:
        return plain_loop(SIZES[size], steps, stamps)
    return plain_library_loop(CONFIGS[size], SIZES[size], steps, stamps)


class Floor(LightningModule):
    """One Adam step on one parameter per batch, an empty validation: Lightning's loop and nothing else."""

    steps_per_rollout = 1  # what RunCheckpoint's schedule reads

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
    """The config's Trainer settings, the CLI's checkpoints and progress bar, the seed DataModule,
    around :class:`Floor`."""
    data = QueryDataModule(FixedTarget(TARGET, vocab_size=VOCAB), batch_size=batch_size, val_size=VAL_SIZE, seed=SEED)
    with redirect_output(os.devnull):
        checkpoint = RunCheckpoint(**{k.split(".")[1]: v for k, v in CHECKPOINT_DEFAULTS.items()
                                      if k.startswith("checkpoint.")})
        callbacks = [StepClock(), checkpoint] + ([ProgressBar()] if progress_bar and ProgressBar else [])
        trainer = Trainer(
            max_steps=steps, accelerator="cpu", devices=1, val_check_interval=VAL_EVERY, check_val_every_n_epoch=None,
            log_every_n_steps=LOG_EVERY, enable_model_summary=False, enable_progress_bar=progress_bar,
            default_root_dir=root, callbacks=callbacks, plugins=[AtomicCheckpointIO()],
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
    """(per-batch, per-optimizer-step) wall seconds Lightning adds at the least (see ``barebones``),
    means of the repeats."""
    cost = {1: [], 50: []}  # steps per batch -> extra seconds per optimizer step, one per repeat
    for _ in range(repeats):
        raw = per_step(raw_step(steps), 500, steps - 501)[0]
        for k in cost:
            cost[k].append(per_step(barebones(steps, k, root), 500, steps - 501)[0] - raw)
    one, fifty = statistics.mean(cost[1]), statistics.mean(cost[50])
    per_opt_step = (50 * fifty - one) / 49  # one = batch + step, fifty = batch / 50 + step
    return one - per_opt_step, per_opt_step


def fit(config: Path, batch_size: int, steps: int, root: str, progress_bar: bool, clock: bool = False) -> Path:
    """``sapo-lightning fit --config CONFIG`` at ``batch_size`` queries per step; returns its log dir."""
    args = [
        "fit", "--config", str(config), f"--data.batch_size={batch_size}", f"--trainer.max_steps={steps}",
        f"--trainer.default_root_dir={root}", f"--trainer.enable_progress_bar={str(progress_bar).lower()}",
    ]
    if clock:
        args.append(f"--trainer.callbacks+={__name__}.StepClock")
    with redirect_output(os.devnull):
        main(args)
    return max((Path(root) / "lightning_logs").iterdir(), key=lambda p: p.stat().st_mtime)


def per_step(stamps: list[tuple[float, float]], warmup: int, steps: int) -> tuple[float, float]:
    """Mean (wall, CPU) seconds per step from the start of step ``warmup + 1`` to that of ``warmup + steps + 1``."""
    assert len(stamps) >= warmup + steps + 1, (len(stamps), warmup, steps)
    a, b = stamps[warmup], stamps[warmup + steps]
    return (b[0] - a[0]) / steps, (b[1] - a[1]) / steps


def measure(size: str, steps: int, repeats: int, progress_bar: bool, root: str) -> dict[str, list]:
    """Per-step (wall, CPU) seconds of each run after the warm-up, by side, one entry per repeat."""
    batch_size, total = SIZES[size], WARMUP + steps + 1
    result: dict[str, list] = {"plain": [], "fit": [], "floor": []}
    for i in range(repeats):
        for side in (("plain", "fit") if i % 2 == 0 else ("fit", "plain")):  # A B B A: load falls on both
            stamps: list[tuple[float, float]] = []
            if side == "plain":
                plain(size, total, stamps)
            else:
                StepClock.stamps = stamps
                fit(CONFIGS[size], batch_size, total, root, progress_bar, clock=True)
            result[side].append(per_step(stamps, WARMUP, steps))
        StepClock.stamps = []
        floor(batch_size, total, root, progress_bar)
        result["floor"].append(per_step(StepClock.stamps, WARMUP, steps))
    return result


def same_math(batch_size: int, steps: int, root: str, config: Path = CONFIG, **changes) -> float:
    """Largest |θ_fit − θ_plain| after ``steps`` steps from the same seed (0 when the math is the same).

    ``changes`` go to the plain loop only (see :func:`plain_loop`), so that a test can show a difference.
    """
    run = fit(config, batch_size, steps, root, progress_bar=False)
    (checkpoint,) = (run / "checkpoints").glob(f"*step={steps}.ckpt")
    state = torch.load(checkpoint, weights_only=True)["state_dict"]
    if config == CONFIG:
        policy = plain_loop(batch_size, steps, **changes)  # an nn.Sequential: fit's MLPPolicy.net
        prefix = "policy.net."
    else:
        policy = plain_library_loop(config, batch_size, steps)  # the policy itself
        prefix = "policy."
    assert len(policy.state_dict()) == sum(k.startswith("policy.") for k in state)
    return max((state[prefix + k] - v).abs().max().item() for k, v in policy.state_dict().items())


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", nargs="+", choices=list(SIZES), default=["seed", "large", "transformer"])
    parser.add_argument("--steps", type=int, default=None,
                        help=f"timed steps per side and repeat, after {WARMUP} warm-up steps (default: {STEPS})")
    parser.add_argument("--repeats", type=int, default=2, help="alternating runs of each side")
    parser.add_argument("--threads", type=int, default=1, help="torch intra-op threads for both sides")
    parser.add_argument("--no-progress-bar", action="store_true", help="run fit with the progress bar off")
    return parser.parse_args()


def ms(values: list[float]) -> str:
    """'mean (min-max)' in ms."""
    return f"{1e3 * statistics.mean(values):.2f} ({1e3 * min(values):.2f}-{1e3 * max(values):.2f})"


def run() -> None:
    args = parse_args()
    torch.set_num_threads(args.threads)
    warnings.filterwarnings("ignore")
    logging.getLogger("lightning").setLevel(logging.ERROR)  # "GPU available: False" etc. on every run
    progress_bar = not args.no_progress_bar
    print(f"torch {torch.__version__}, {args.threads} torch thread(s), {os.cpu_count()} cpus, "
          f"load average {' '.join(f'{x:.2f}' for x in os.getloadavg())}, fit's progress bar "
          f"{'on' if progress_bar else 'off'}; ms per step: mean of {args.repeats} runs (range), every step "
          f"after a {WARMUP}-step warm-up", flush=True)
    with tempfile.TemporaryDirectory() as root:
        per_batch, per_opt_step = lightning_minimum(root, args.repeats)
        minimum = per_batch + per_opt_step
        print(f"Lightning's least cost (Trainer(barebones=True), empty step): {1e3 * minimum:.3f} ms per optimizer "
              f"step at one step per batch = {1e3 * per_batch:.3f} ms per batch + {1e3 * per_opt_step:.3f} ms per "
              f"optimizer step (manual_backward, LightningOptimizer.step)\n", flush=True)
        print("| size | sequences/step | steps timed | clock | plain ms/step | fit ms/step | fit / plain | goal "
              "| budget (goal-1) x plain ms | floor ms/step | module's own ms/step | max abs dtheta |")
        print("|---|---|---|---|---|---|---|---|---|---|---|---|")
        for size in args.sizes:
            steps = args.steps or STEPS[size]
            m = measure(size, steps, args.repeats, progress_bar, root)
            delta = same_math(SIZES[size], VAL_EVERY, root, CONFIGS[size])
            for i, clock in enumerate(("wall", "CPU")):
                p, f, fl = ([w[i] for w in m[k]] for k in ("plain", "fit", "floor"))
                p_mean, f_mean, fl_mean = statistics.mean(p), statistics.mean(f), statistics.mean(fl)
                ratio, budget = f_mean / p_mean, (GOALS[size] - 1) * p_mean
                verdict = "met" if ratio <= GOALS[size] else "missed"
                if clock == "wall" and budget < minimum:
                    verdict += " (budget < Lightning's least cost)"
                print(f"| {size} | {SIZES[size] * GROUP} | {steps} x {args.repeats} | {clock} | {ms(p)} | {ms(f)} "
                      f"| **{ratio:.2f}x** | <= {GOALS[size]}x: {verdict} | {1e3 * budget:.2f} | {1e3 * fl_mean:.2f} "
                      f"| {1e3 * (f_mean - p_mean - fl_mean):.2f} | {delta:.1e} |", flush=True)
    print(f"load average after: {' '.join(f'{x:.2f}' for x in os.getloadavg())}")


if __name__ == "__main__":
    sys.exit(run())

"""Per-optimizer-step cost of ``sapo-lightning fit`` against a plain PyTorch loop with the same math.

    python benchmarks/overhead.py                      # seed size and 4096 sequences per step
    python benchmarks/overhead.py --sizes seed --repeats 5 --threads 2

Both sides run in this process, interleaved, on ``configs/sapo.yaml`` (SAPO, MLP hidden 32,
T=5, V=10, Adam lr 1e-3, old-policy sync every 10 steps, validation every 50 steps on 64
greedy queries, logging every 10 steps):

- ``fit`` is the real command, ``sapo_lightning.cli.main(["fit", ...])``: the CLI, the
  TensorBoard logger, every logged diagnostic, validation, the checkpoint written after each
  validation, and the progress bar unless ``--no-progress-bar`` is given.
- ``plain`` is the loop a user would write by hand: the same query stream, rollout, reward,
  group advantages, SAPO objective, ``loss.backward()``, ``Adam.step()``, the same sync and
  the same greedy validation, with nothing logged.

Per-step cost is differential, so the fixed start-up (CLI parsing, logger, sanity check)
cancels: ``(t(warmup + steps) - t(warmup)) / steps``. Each side is measured ``--repeats``
times, interleaved; the table reports the fastest repeat of each (the one least disturbed
by other processes) and the median of the per-repeat ratios. After timing, one check
runs both sides for the same number of steps from the same seed and reports the largest
parameter difference: the two loops do the same math.
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import logging
import os
import statistics
import sys
import tempfile
import time
import warnings
from pathlib import Path

import torch

from sapo_lightning.advantages import group_advantages
from sapo_lightning.cli import main
from sapo_lightning.data import VALIDATION_STREAM, QueryStream, derive_seed
from sapo_lightning.objectives import SAPO
from sapo_lightning.policies import MLPPolicy
from sapo_lightning.tasks import FixedTarget

CONFIG = Path(__file__).resolve().parents[1] / "configs" / "sapo.yaml"
SIZES = {"seed": 8, "large": 512}  # queries per step; x group 8 = 64 and 4096 sequences
GOALS = {"seed": 1.25, "large": 1.05}
GROUP, HIDDEN, TARGET, VOCAB, LR = 8, 32, [2, 5, 7, 3, 1], 10, 1e-3
SYNC_EVERY, VAL_EVERY, VAL_SIZE, SEED = 10, 50, 64, 0


def plain_loop(batch_size: int, steps: int) -> torch.nn.Module:
    """The hand-written loop: configs/sapo.yaml's math with no framework and no logging."""
    torch.manual_seed(SEED)
    task = FixedTarget(TARGET, vocab_size=VOCAB)
    policy = MLPPolicy(task, HIDDEN)
    old_policy = copy.deepcopy(policy).requires_grad_(False).eval()
    optimizer = torch.optim.Adam(policy.parameters(), lr=LR)
    objective = SAPO(tau_pos=1.0, tau_neg=1.05)
    val_queries = task.sample_queries(VAL_SIZE, torch.Generator().manual_seed(derive_seed(SEED, VALIDATION_STREAM)))
    stream = iter(QueryStream(task, batch_size, SEED, rank=0))
    for step in range(1, steps + 1):
        batch = next(stream)
        queries = batch["queries"].repeat_interleave(GROUP, 0)  # [N, D]
        with torch.no_grad():
            rollout = old_policy.sample(queries, torch.Generator().manual_seed(batch["seed"]))
            rewards = task.reward(queries, rollout.responses, rollout.mask)  # [N]
            advantages = group_advantages(rewards, GROUP)  # [N]
        scores = policy.score(queries, rollout.responses)
        loss = objective(scores.log_probs, rollout.log_probs, advantages, rollout.mask).loss
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        if step % SYNC_EVERY == 0:
            old_policy.load_state_dict(policy.state_dict())
        if step % VAL_EVERY == 0:
            with torch.no_grad():
                greedy = policy.sample(val_queries, greedy=True)
                task.reward(val_queries, greedy.responses, greedy.mask).mean()
                task.exact_match(val_queries, greedy.responses, greedy.mask).float().mean()
    return policy


def fit(batch_size: int, steps: int, root: str, progress_bar: bool) -> Path:
    """``sapo-lightning fit --config configs/sapo.yaml`` at ``batch_size``; returns its log dir."""
    args = [
        "fit", "--config", str(CONFIG), f"--data.batch_size={batch_size}", f"--trainer.max_steps={steps}",
        f"--trainer.default_root_dir={root}", f"--trainer.enable_progress_bar={str(progress_bar).lower()}",
    ]
    with open(os.devnull, "w") as sink, contextlib.redirect_stdout(sink), contextlib.redirect_stderr(sink):
        main(args)  # the progress bar writes to the redirected stderr: its cost is paid, nothing is shown
    return max((Path(root) / "lightning_logs").iterdir(), key=lambda p: p.stat().st_mtime)


def timed(fn, *args) -> tuple[float, float]:
    """(wall, CPU) seconds of ``fn(*args)``; CPU time is this process's, all its threads."""
    wall, cpu = time.perf_counter(), time.process_time()
    fn(*args)
    return time.perf_counter() - wall, time.process_time() - cpu


def per_step(fn, steps: int, warmup: int, *args) -> tuple[float, float]:
    """(wall, CPU) seconds per step: the difference of a long and a short run, per extra step."""
    long, short = timed(fn, warmup + steps, *args), timed(fn, warmup, *args)
    return (long[0] - short[0]) / steps, (long[1] - short[1]) / steps


def measure(size: str, steps: int, warmup: int, repeats: int, progress_bar: bool, root: str) -> dict:
    batch_size = SIZES[size]
    plain, light = [], []
    for _ in range(repeats):
        plain.append(per_step(lambda n: plain_loop(batch_size, n), steps, warmup))
        light.append(per_step(lambda n: fit(batch_size, n, root, progress_bar), steps, warmup))
    result = {"size": size, "sequences": batch_size * GROUP}
    for i, clock in enumerate(("wall", "cpu")):
        p, f = min(x[i] for x in plain), min(x[i] for x in light)
        result[clock] = (p, f, f / p, statistics.median(b[i] / a[i] for a, b in zip(plain, light)))
    return result


def same_math(batch_size: int, steps: int, root: str) -> float:
    """Largest |θ_fit − θ_plain| after ``steps`` steps from the same seed (0 when the math is the same)."""
    run = fit(batch_size, steps, root, progress_bar=False)
    (checkpoint,) = (run / "checkpoints").glob(f"*step={steps}.ckpt")
    state = torch.load(checkpoint, weights_only=True)["state_dict"]
    policy = plain_loop(batch_size, steps)
    return max((state[f"policy.{k}"] - v).abs().max().item() for k, v in policy.state_dict().items())


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", nargs="+", choices=list(SIZES), default=list(SIZES))
    parser.add_argument("--steps", type=int, default=None, help="timed steps (default: 2000 seed, 300 large)")
    parser.add_argument("--warmup", type=int, default=100, help="steps of the subtracted run (multiple of 50)")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=1, help="torch intra-op threads for both sides")
    parser.add_argument("--no-progress-bar", action="store_true", help="run fit with the progress bar off")
    return parser.parse_args()


def run() -> None:
    args = parse_args()
    torch.set_num_threads(args.threads)
    warnings.filterwarnings("ignore")
    logging.getLogger("lightning.pytorch").setLevel(logging.ERROR)  # "Seed set to 0" etc. on every run
    progress_bar = not args.no_progress_bar
    print(f"torch {torch.__version__}, {args.threads} thread(s), {os.cpu_count()} cpus, "
          f"load avg {os.getloadavg()[0]:.1f}, progress bar {'on' if progress_bar else 'off'}")
    print("| size | sequences/step | clock | plain ms/step | fit ms/step | ratio (best) | ratio (median) | goal "
          "| max abs dtheta |")
    print("|---|---|---|---|---|---|---|---|---|")
    with tempfile.TemporaryDirectory() as root:
        for size in args.sizes:
            steps = args.steps or (2000 if size == "seed" else 300)
            m = measure(size, steps, args.warmup, args.repeats, progress_bar, root)
            delta = same_math(SIZES[size], VAL_EVERY, root)
            for clock in ("wall", "cpu"):
                plain, light, ratio, median = m[clock]
                verdict = "ok" if ratio <= GOALS[size] else "MISSED"
                print(f"| {size} | {m['sequences']} | {clock} | {1e3 * plain:.2f} | {1e3 * light:.2f} | {ratio:.2f}x "
                      f"| {median:.2f}x | <= {GOALS[size]}x {verdict} | {delta:.1e} |", flush=True)
    print(f"load avg after: {os.getloadavg()[0]:.1f}")


if __name__ == "__main__":
    sys.exit(run())

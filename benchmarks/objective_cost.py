"""Forward + backward cost of each objective at N x T = 4096 x 512 (the loss and its diagnostics).

    python benchmarks/objective_cost.py
    python benchmarks/objective_cost.py --n 4096 --t 512 --repeats 20 --threads 2

Inputs are what the module hands an objective: ``log_probs`` [N, T] requiring grad (a leaf,
so only the objective's own graph is timed), ``old_log_probs`` = log_probs + N(0, 0.1²),
one advantage per response (group-normalised, groups of 8) and a mask of random response
lengths. One call is ``objective(...)`` (loss and every diagnostic) plus ``loss.backward()``.
Each objective runs ``--repeats`` calls (after 3 warm-up calls) in two interleaved rounds.
The table gives the CPU time of the process per call (median and fastest; with one torch
thread this is the work done, and much less sensitive to other processes on a shared machine
than wall time), the fastest wall time, and each median relative to GRPO's.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time

import torch

from sapo_lightning.advantages import group_advantages
from sapo_lightning.objectives import CISPO, GRPO, GSPO, SAPO

OBJECTIVES = {"SAPO": SAPO(), "GRPO": GRPO(), "GSPO": GSPO(), "CISPO": CISPO()}


def inputs(n: int, t: int, seed: int = 0) -> tuple[torch.Tensor, ...]:
    generator = torch.Generator().manual_seed(seed)
    log_probs = -torch.rand(n, t, generator=generator) * 3  # [N, T]
    old_log_probs = log_probs + 0.1 * torch.randn(n, t, generator=generator)  # [N, T]
    advantages = group_advantages(torch.randint(0, 2, (n,), generator=generator).float(), 8)  # [N]
    lengths = torch.randint(1, t + 1, (n, 1), generator=generator)  # [N, 1]
    mask = torch.arange(t) < lengths  # [N, T]
    return log_probs, old_log_probs, advantages, mask


def time_objective(objective, log_probs, old_log_probs, advantages, mask, repeats: int) -> list[tuple[float, float]]:
    """(CPU, wall) seconds of each call."""
    seconds = []
    for i in range(repeats + 3):
        leaf = log_probs.clone().requires_grad_(True)
        cpu, wall = time.process_time(), time.perf_counter()
        objective(leaf, old_log_probs, advantages, mask).loss.backward()
        if i >= 3:
            seconds.append((time.process_time() - cpu, time.perf_counter() - wall))
    return seconds


def run() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n", type=int, default=4096, help="responses N")
    parser.add_argument("--t", type=int, default=512, help="tokens per response T")
    parser.add_argument("--repeats", type=int, default=15)
    parser.add_argument("--threads", type=int, default=1, help="torch intra-op threads")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    data = inputs(args.n, args.t)
    print(f"torch {torch.__version__}, {args.threads} torch thread(s), {os.cpu_count()} cpus, "
          f"load average {os.getloadavg()[0]:.1f}, N x T = {args.n} x {args.t}, float32")
    times = {}
    for _ in range(2):  # two rounds, interleaved, so that a burst of load hits every objective alike
        for name, objective in OBJECTIVES.items():
            times.setdefault(name, []).extend(time_objective(objective, *data, repeats=args.repeats // 2 + 1))
    reference = statistics.median(cpu for cpu, _ in times["GRPO"])
    print("| objective | CPU ms per fwd+bwd (median) | CPU ms (best) | wall ms (best) | median / GRPO |")
    print("|---|---|---|---|---|")
    for name, seconds in times.items():
        median = statistics.median(cpu for cpu, _ in seconds)
        best_cpu, best_wall = min(cpu for cpu, _ in seconds), min(wall for _, wall in seconds)
        print(f"| {name} | {1e3 * median:.1f} | {1e3 * best_cpu:.1f} | {1e3 * best_wall:.1f} "
              f"| {median / reference:.2f}x |")
    print(f"load average after: {os.getloadavg()[0]:.1f}")


if __name__ == "__main__":
    sys.exit(run())

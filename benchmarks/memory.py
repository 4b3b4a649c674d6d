"""Resident memory of ``sapo-lightning fit`` over a long run: it must stay flat.

    python benchmarks/memory.py                  # 20000 steps of configs/sapo.yaml, RSS every 1000
    python benchmarks/memory.py --steps 5000 --every 500

Runs the real command (``sapo_lightning.cli.main(["fit", "--config", "configs/sapo.yaml", ...])``)
with everything on: TensorBoard logging every 10 steps, validation and a checkpoint every 50,
the progress bar (to /dev/null). A callback reads the process's current RSS, then its peak RSS
(``VmRSS``, ``VmHWM`` of /proc/self/status, so the peak is never below the RSS) every ``--every``
steps. The verdict compares the RSS at the end with the RSS once warmed up (after the first 20% of
the run): flat means it grew by less than ``--tolerance`` MiB over the remaining 80%.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import tempfile
import time
import warnings
from pathlib import Path

import torch
from lightning.pytorch import Callback

from sapo_lightning.cli import main
from sapo_lightning.compare.runner import redirect_output
from step_probe import peak_rss_mib, rss_mib

CONFIG = Path(__file__).resolve().parents[1] / "configs" / "sapo.yaml"


class RSSProbe(Callback):
    """(step, seconds since start, RSS MiB, peak RSS MiB) every ``every`` optimizer steps."""

    every = 1000
    rows: list[tuple[int, float, float, float]] = []
    start = 0.0

    def on_train_batch_end(self, trainer, *args) -> None:
        step = trainer.global_step
        if step % RSSProbe.every == 0 and (not RSSProbe.rows or RSSProbe.rows[-1][0] != step):
            RSSProbe.rows.append((step, time.perf_counter() - RSSProbe.start, rss_mib(), peak_rss_mib()))


def run() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=20000)
    parser.add_argument("--every", type=int, default=1000)
    parser.add_argument("--tolerance", type=float, default=5.0, help="MiB of growth still called flat")
    parser.add_argument("--threads", type=int, default=1, help="torch intra-op threads")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    warnings.filterwarnings("ignore")
    logging.getLogger("lightning").setLevel(logging.ERROR)
    RSSProbe.every, RSSProbe.start = args.every, time.perf_counter()
    print(f"torch {torch.__version__}, {args.threads} torch thread(s), load average {os.getloadavg()[0]:.1f}; "
          f"RSS before fit {rss_mib():.1f} MiB")
    with tempfile.TemporaryDirectory() as root, redirect_output(os.devnull):
        main(["fit", "--config", str(CONFIG), f"--trainer.max_steps={args.steps}",
              f"--trainer.default_root_dir={root}", f"--trainer.callbacks+={__name__}.RSSProbe"])
    print("| step | seconds | RSS MiB | peak RSS MiB |")
    print("|---|---|---|---|")
    for step, seconds, rss, peak in RSSProbe.rows:
        print(f"| {step} | {seconds:.0f} | {rss:.1f} | {peak:.1f} |")
    warm = next(r for r in RSSProbe.rows if r[0] >= args.steps // 5)
    last = RSSProbe.rows[-1]
    growth, peak_growth = last[2] - warm[2], last[3] - warm[3]
    verdict = "flat" if max(growth, peak_growth) < args.tolerance else "GROWING"
    print(f"from step {warm[0]} to {last[0]}: RSS {growth:+.1f} MiB, peak RSS {peak_growth:+.1f} MiB -> {verdict} "
          f"(tolerance {args.tolerance} MiB); {(last[0] - warm[0]) / (last[1] - warm[1]):.0f} steps/s")


if __name__ == "__main__":
    sys.exit(run())

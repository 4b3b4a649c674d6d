"""The text demo's accuracy by word length, on its training and validation prompts, after training.

    sapo-lightning fit --config configs/text_tiny.yaml --trainer.default_root_dir=runs/s0
    python benchmarks/text_demo_by_length.py runs/s0 [runs/s1 ...]

Loads each run's last checkpoint (``<root>/lightning_logs/version_*/checkpoints/last*.ckpt``, the
newest) into the model its ``config.yaml`` builds, decodes every training and validation prompt
greedily, as validation does, and counts the prompts solved (the task's ``exact_match``) by the
length of the prompt's word (``last: abc`` has length 3). Prints one Markdown table per run, and
their sum when there are several.
"""

from __future__ import annotations

import argparse
import logging
import os
import platform
import warnings
from collections import Counter
from pathlib import Path

import torch

from sapo_lightning.export import build_module
from sapo_lightning.loop.checkpointing import find_last

BATCH = 500  # prompts per greedy decoding call


def solved_by_length(root: str) -> dict[str, tuple[Counter, Counter]]:
    """split -> (prompts, solved) per word length, for the run under ``root``."""
    checkpoint = find_last(Path(root) / "lightning_logs")
    if checkpoint is None:
        raise SystemExit(f"no last*.ckpt under {root}/lightning_logs/version_*/checkpoints/")
    module = build_module(Path(checkpoint).parent.parent / "config.yaml")
    state = torch.load(checkpoint, map_location="cpu", weights_only=True)
    module.on_load_checkpoint(state)  # the frozen copies, as fit restores them
    module.load_state_dict(state["state_dict"])
    module.eval()
    task = module.task
    counts = {}
    for split, rows in (("train", task.data.train_rows), ("val", task.data.val_rows)):
        prompts, solved = Counter(), Counter()
        for start in range(0, len(rows), BATCH):
            queries = task.collate(rows[start:start + BATCH])
            with torch.no_grad():
                rollout = module.policy.sample(queries, greedy=True)
            exact = task.evaluate(queries, rollout)["exact_match"]  # [B]
            for text, right in zip(queries.texts, exact.tolist()):
                length = len(text.split(": ", 1)[1])
                prompts[length] += 1
                solved[length] += int(right)
        counts[split] = (prompts, solved)
    return counts


def table(counts: dict[str, tuple[Counter, Counter]]) -> str:
    lines = ["| word length | train: solved / prompts | train accuracy | val: solved / prompts | val accuracy |",
             "|---|---|---|---|---|"]
    lengths = sorted(set(counts["train"][0]) | set(counts["val"][0]))
    for length in [*lengths, "all"]:
        cells = []
        for split in ("train", "val"):
            prompts, solved = counts[split]
            n = sum(prompts.values()) if length == "all" else prompts[length]
            k = sum(solved.values()) if length == "all" else solved[length]
            cells += [f"{k} / {n}", f"{k / n:.3f}" if n else "-"]
        lines.append(f"| {length} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("roots", nargs="+", help="a fit's --trainer.default_root_dir")
    args = parser.parse_args()
    for name in ("lightning.fabric.utilities.seed", "lightning.pytorch.utilities.rank_zero"):
        logging.getLogger(name).setLevel(logging.WARNING)  # each model build's seed and device lines
    warnings.filterwarnings("ignore", message="LightningCLI's args parameter is intended")  # argv holds the roots
    cpu = next((line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo") if line.startswith("model name")), "?")
    print(f"machine: {cpu}, {os.cpu_count()} cores, {platform.system()}; torch {torch.__version__}; "
          f"threads {torch.get_num_threads()}")
    total = {split: (Counter(), Counter()) for split in ("train", "val")}
    for root in args.roots:
        counts = solved_by_length(root)
        print(f"\n{root}\n\n{table(counts)}")
        for split, (prompts, solved) in counts.items():
            total[split][0].update(prompts)
            total[split][1].update(solved)
    if len(args.roots) > 1:
        print(f"\nsum of {len(args.roots)} runs\n\n{table(total)}")


if __name__ == "__main__":
    main()

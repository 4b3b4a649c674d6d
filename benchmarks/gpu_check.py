"""One check of ``benchmarks/gpu_check.sh``: a short ``sapo-lightning fit``, judged and printed on one line.

    python benchmarks/gpu_check.py NAME [--min-exact X] [--learns] [--world N] [--skip WHY] -- FIT ARGS...

Runs ``fit FIT ARGS`` in a process of its own (``step_probe.py``: peak memory and seconds per step),
keeps its files under ``$GPU_CHECK_DIR/NAME``, then prints ``PASS``/``FAIL``/``SKIP``, the steps per
second and the peak memory (CUDA: ``max_memory_allocated`` on rank 0; CPU: peak RSS), and exits 1
on a failure. A check passes when the fit exits 0 after all its ``trainer.max_steps`` steps, every
logged ``train/loss`` and ``train/reward`` is finite, and:

- ``--world N``: the run had N ranks (DDP and FSDP over every GPU);
- ``--min-exact X``: the last ``val/exact_match`` (or ``val/accuracy/...``) is at least X;
- ``--learns``: the mean ``train/reward`` of the last quarter of the run beats that of the first.
"""

from __future__ import annotations

import argparse
import math
import os
import sys
from pathlib import Path

from step_probe import run_case


def scalars(root: Path) -> dict[str, list[float]]:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    values: dict[str, list[float]] = {}
    for events in sorted(root.glob("lightning_logs/version_*/events.out.tfevents.*")):
        accumulator = EventAccumulator(str(events))
        accumulator.Reload()
        for tag in accumulator.Tags()["scalars"]:
            values.setdefault(tag, []).extend(e.value for e in accumulator.Scalars(tag))
    return values


def verdict(result: dict, logged: dict[str, list[float]], args: argparse.Namespace, max_steps: int) -> str | None:
    """Why the check failed, or None."""
    if "error" in result:
        return result["error"][0][:200]
    if result["steps"] != max_steps:
        return f"stopped at step {result['steps']} of {max_steps}"
    for tag in ("train/loss", "train/reward"):
        if not logged.get(tag):
            return f"{tag} never logged"
        if not all(math.isfinite(v) for v in logged[tag]):
            return f"{tag} not finite: {logged[tag][-5:]}"
    if args.world is not None and result["world_size"] != args.world:
        return f"{result['world_size']} ranks, expected {args.world}"
    if args.min_exact is not None:
        tag = "val/exact_match"
        if not logged.get(tag):
            return f"{tag} never logged"
        if logged[tag][-1] < args.min_exact:
            return f"{tag} {logged[tag][-1]:.3f} < {args.min_exact} (curve {[round(v, 3) for v in logged[tag]]})"
    if args.learns:
        rewards = logged["train/reward"]
        quarter = max(1, len(rewards) // 4)
        first, last = sum(rewards[:quarter]) / quarter, sum(rewards[-quarter:]) / quarter
        if not last > first:
            return f"train/reward did not rise: {first:.3f} in the first quarter, {last:.3f} in the last"
    return None


def main() -> None:
    argv = sys.argv[1:]
    split = argv.index("--") if "--" in argv else len(argv)
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("name")
    parser.add_argument("--min-exact", type=float)
    parser.add_argument("--learns", action="store_true")
    parser.add_argument("--world", type=int)
    parser.add_argument("--skip", help="print SKIP with this reason and run nothing")
    args = parser.parse_args(argv[:split])
    fit_args = argv[split + 1 :]
    if args.skip:
        print(f"SKIP  {args.name:<14} {args.skip}", flush=True)
        return
    root = Path(os.environ.get("GPU_CHECK_DIR", "gpu_check_runs")).resolve() / args.name
    root.mkdir(parents=True, exist_ok=True)
    max_steps = next(int(a.split("=", 1)[1]) for a in reversed(fit_args) if a.startswith("--trainer.max_steps="))
    result = run_case(fit_args, threads=int(os.environ.get("OMP_NUM_THREADS", "1")), root=str(root))
    logged = scalars(root) if "error" not in result else {}
    failure = verdict(result, logged, args, max_steps)
    if "error" in result:
        measured = ""
    else:
        memory = "peak GPU memory" if result["device"] == "cuda" else "peak RSS"
        exact = f", val/exact_match {logged['val/exact_match'][-1]:.3f}" if logged.get("val/exact_match") else ""
        measured = (f"{1 / result['seconds_per_step']:7.1f} steps/s, {memory} {result['peak_mib']:,.0f} MiB, "
                    f"{result['world_size']} rank(s){exact}")
    status = "FAIL" if failure else "PASS"
    print(f"{status}  {args.name:<14} {measured}{'  -- ' + failure if failure else ''}  [{root}]", flush=True)
    sys.exit(1 if failure else 0)


if __name__ == "__main__":
    main()

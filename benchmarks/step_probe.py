"""Peak memory and seconds per optimizer step of one ``sapo-lightning fit``, in a process of its own.

    python benchmarks/step_probe.py OUT.json ARGS...      # runs sapo_lightning.cli.main(["fit", *ARGS])

Used by ``micro_batch_memory.py`` and ``scale.py``, which start one such process per case, so a case's
peak is its own. The :class:`StepProbe` callback (added to the run as
``--trainer.callbacks+=step_probe.StepProbe``) reads, on CPU, the process's resident memory at the
start of training (``setup``: after the model, its frozen copies and the optimizer are built) and
its peak RSS (``VmHWM`` of /proc/self/status) at the end; on CUDA, ``torch.cuda.memory_allocated`` at the start and
``max_memory_allocated`` since then. *step peak* = peak − memory at the start: what the steps
(rollout, scoring, backward, optimizer state) add on top of the weights. Seconds per step are the
median over the optimizer steps after the first (the warm-up: first allocations, Adam's state).
"""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import torch
from lightning.pytorch import Callback

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent  # the fits run here: the text configs' data paths are relative to it
MIB = 2**20


def copy_fit_args(model: dict[str, Any], steps: int, device: str, batch: int, group: int) -> list[str]:
    """``fit`` arguments for ``configs/hf_tiny.yaml`` with ``model`` (a Llama config) on Copy of 8 symbols and
    up to 16 new tokens: no validation, checkpoint, logger or progress bar, one log point at the end."""
    return ["--config", str(ROOT / "configs" / "hf_tiny.yaml"), f"--trainer.max_steps={steps}",
            f"--trainer.accelerator={'gpu' if device == 'cuda' else 'cpu'}", "--trainer.limit_val_batches=0",
            "--trainer.enable_checkpointing=false", "--trainer.logger=false", "--trainer.enable_progress_bar=false",
            f"--trainer.log_every_n_steps={steps}", f"--model.policy.init_args.model_config={json.dumps(model)}",
            "--data.task.init_args.length=8", "--data.task.init_args.max_new_tokens=16",
            f"--data.batch_size={batch}", f"--model.group_size={group}"]


def _status_mib(field: str) -> float:
    """A ``kB`` field of /proc/self/status in MiB: the kernel's exact counts (getrusage's peak lags them)."""
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith(field + ":")) / 1024


def rss_mib() -> float:
    """Resident memory now (``VmRSS``)."""
    return _status_mib("VmRSS")


def peak_rss_mib() -> float:
    """Peak resident memory so far (``VmHWM``): at least every earlier :func:`rss_mib`."""
    return _status_mib("VmHWM")


class StepProbe(Callback):
    """Memory at the start of training and its peak after; the wall time of every training batch."""

    out = ""  # where on_train_end writes the JSON (set by the __main__ below)
    before_model = 0.0  # RSS MiB before the CLI built anything

    def __init__(self) -> None:
        self.times: list[float] = []
        self.start = 0.0

    def on_train_start(self, trainer, pl_module) -> None:
        self.cuda = pl_module.device.type == "cuda"
        if self.cuda:
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
            self.resident = torch.cuda.memory_allocated() / MIB
        else:
            self.resident = rss_mib()

    def on_train_batch_start(self, *args: Any) -> None:
        self.start = time.perf_counter()

    def on_train_batch_end(self, trainer, *args: Any) -> None:
        if self.cuda:
            torch.cuda.synchronize()
        self.times.append(time.perf_counter() - self.start)

    def on_train_end(self, trainer, pl_module) -> None:
        if trainer.global_rank:
            return  # rank 0 reports (under DDP or FSDP each rank holds the same share)
        if self.cuda:
            peak, resident_model = torch.cuda.max_memory_allocated() / MIB, self.resident
        else:
            peak, resident_model = peak_rss_mib(), self.resident - StepProbe.before_model
        reward = trainer.callback_metrics.get("train/reward")
        result = {
            "device": "cuda" if self.cuda else "cpu",
            "params": sum(p.numel() for p in pl_module.policy.parameters()),
            "trainable": sum(p.numel() for p in pl_module.policy.parameters() if p.requires_grad),
            "old_copy": pl_module.old_policy is not None,
            "resident_mib": resident_model,  # CPU: RSS growth from before the CLI to the start of training
            "step_peak_mib": peak - self.resident,
            "peak_mib": peak,  # CUDA: max_memory_allocated; CPU: the process's peak RSS
            "seconds_per_step": statistics.median(self.times[1:] or self.times),
            "steps": trainer.global_step,
            "world_size": trainer.world_size,
            "reward_finite": reward is None or bool(torch.isfinite(reward)),
        }
        Path(StepProbe.out).write_text(json.dumps(result))


def run_case(args: list[str], threads: int = 1, timeout: float = 1800, root: str | None = None) -> dict[str, Any]:
    """``fit`` with ``args`` in a fresh process (its files under ``root``, else a temporary directory);
    its StepProbe result, or ``{"error": [last line of its output]}``."""
    import tempfile

    with tempfile.TemporaryDirectory() as scratch:
        root = root or scratch
        out = Path(root, "probe.json")
        command = [sys.executable, str(HERE / "step_probe.py"), str(out), *args, f"--trainer.default_root_dir={root}",
                   "--trainer.callbacks+=step_probe.StepProbe"]
        env = {**os.environ, "OMP_NUM_THREADS": str(threads), "HF_HUB_OFFLINE": "1",
               "PYTHONPATH": os.pathsep.join([str(HERE), os.environ.get("PYTHONPATH", "")])}
        try:
            done = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout)
        except subprocess.TimeoutExpired:
            return {"error": [f"timed out after {timeout:.0f} s"]}
        Path(root, "output.log").write_text(done.stdout + done.stderr)
        if done.returncode or not out.exists():
            lines = [line for line in (done.stderr or done.stdout).strip().splitlines() if line.strip()]
            return {"error": lines[-1:] or [f"exit {done.returncode}"]}
        return json.loads(out.read_text())


if __name__ == "__main__":
    if len(sys.argv) < 2 or sys.argv[1] in ("-h", "--help"):
        print(__doc__)
        sys.exit(0 if sys.argv[1:2] in (["-h"], ["--help"]) else 2)
    import step_probe  # the CLI instantiates the callback from this module's import name
    from sapo_lightning.cli import main

    try:  # imported before the baseline: the resident column is the model's, not the libraries'
        import sapo_lightning.lm.policy  # noqa: F401
    except ImportError:
        pass
    step_probe.StepProbe.out, step_probe.StepProbe.before_model = sys.argv[1], rss_mib()
    main(["fit", *sys.argv[2:]])

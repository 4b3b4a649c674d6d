"""``kill -9`` at any moment never leaves a torn checkpoint, and ``fit --ckpt_path last`` continues."""

from __future__ import annotations

import contextlib
import multiprocessing
import os
import random
import signal
import sys
import time
from pathlib import Path
from unittest import mock

import pytest
import torch

from sapo_lightning.cli import main
from sapo_lightning.loop.checkpointing import AtomicCheckpointIO, find_last

pytestmark = pytest.mark.slow  # fits killed and resumed in subprocesses

CONFIG = Path(__file__).parents[1] / "configs" / "sapo.yaml"
TRIALS = 5


@pytest.fixture(scope="module")
def fork():
    """Children forked from a server that imported Lightning once: a kill trial costs no interpreter start."""
    context = multiprocessing.get_context("forkserver")
    context.set_forkserver_preload(["sapo_lightning.cli", __name__])
    warm_up = context.Process(target=int)  # starts the server, so trials time the child alone
    warm_up.start()
    warm_up.join()
    return context


def quiet(target, *args) -> None:
    """Run ``target`` in a child with its output discarded and one thread."""
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, 1)
    os.dup2(devnull, 2)
    torch.set_num_threads(1)
    target(*args)


def fit_args(root: Path, max_steps: int) -> list[str]:
    return [
        "fit", f"--config={CONFIG}", f"--trainer.default_root_dir={root}", f"--trainer.max_steps={max_steps}",
        "--checkpoint.every_n_train_steps=1",  # a write and a relink per step: kills often land in one
        "--model.policy.init_args.hidden_dim=512",  # ~1 MB checkpoints
        "--trainer.val_check_interval=20", "--data.val_size=16", "--trainer.enable_progress_bar=false",
        "--ckpt_path=last",
    ]


def newest(root: Path) -> Path | None:
    """What ``--ckpt_path last`` resumes from."""
    found = find_last(root / "lightning_logs")
    return Path(found) if found else None


def mtime(root: Path) -> int:
    last = newest(root)
    return last.stat().st_mtime_ns if last else -1


def wait_for_new_checkpoint(root: Path, before: int, child, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while True:
        assert time.monotonic() < deadline and child.is_alive(), "the run saved nothing"
        with contextlib.suppress(FileNotFoundError):  # the run removed its previous step file as we looked
            if mtime(root) not in (-1, before):
                return
        time.sleep(0.005)


def test_sigkill_at_random_moments_then_resume(tmp_path, fork):
    """Odd trials die at a random moment of start-up or of the first steps; even trials once
    they have saved, a random 0-300 ms later, when a checkpoint is written and last.ckpt relinked every step."""
    rng = random.Random(0)
    reached = 0
    for trial in range(TRIALS):
        child = fork.Process(target=quiet, args=(main, fit_args(tmp_path, 100_000)))
        before = mtime(tmp_path)
        child.start()
        if trial % 2:
            time.sleep(rng.uniform(0.0, 1.5))
        else:
            wait_for_new_checkpoint(tmp_path, before, child)
            time.sleep(rng.uniform(0.0, 0.3))
        os.kill(child.pid, signal.SIGKILL)
        child.join()
        assert child.exitcode == -signal.SIGKILL, f"trial {trial}: the run ended by itself ({child.exitcode})"
        for path in tmp_path.rglob("*.ckpt"):  # no torn file under any checkpoint name
            if path.exists():  # last.ckpt, a symlink, dangles if the kill fell between removal and relink
                torch.load(path, weights_only=True)
        last = newest(tmp_path)
        step = torch.load(last, weights_only=True)["global_step"] if last else 0
        assert step >= reached, f"trial {trial}: the newest checkpoint went back from step {reached} to {step}"
        reached = step
    assert reached > 0, "no trial lived long enough to save"

    probe = tmp_path / "probe"
    with mock.patch.object(sys, "argv", ["sapo-lightning"]):
        main(fit_args(tmp_path, reached + 3) + ["--trainer.callbacks+=rank_probe.RankProbe",
                                                f"--trainer.callbacks.out={probe}"])
    seen = torch.load(probe / "rank0.pt")
    assert (seen["start_step"], seen["end_step"]) == (reached, reached + 3)
    assert torch.load(newest(tmp_path), weights_only=True)["global_step"] == reached + 3


def save_and_hang_before_rename(path: Path, checkpoint: dict, ready: Path) -> None:
    """Write ``checkpoint`` over ``path``, but stop for good once its bytes are out, before the rename."""

    def hang(fd: int) -> None:
        ready.touch()
        time.sleep(600)

    with mock.patch("os.fsync", hang):
        AtomicCheckpointIO().save_checkpoint(checkpoint, path)


def test_sigkill_during_a_write_keeps_the_previous_file(tmp_path, fork):
    target, ready = tmp_path / "last.ckpt", tmp_path / "ready"
    old, new = {"w": torch.zeros(1000)}, {"w": torch.ones(1000)}
    AtomicCheckpointIO().save_checkpoint(old, target)
    child = fork.Process(target=quiet, args=(save_and_hang_before_rename, target, new, ready))
    child.start()
    deadline = time.monotonic() + 60
    while not ready.exists():
        assert time.monotonic() < deadline and child.is_alive(), "the writer never reached its fsync"
        time.sleep(0.01)
    os.kill(child.pid, signal.SIGKILL)
    child.join()
    (temp,) = tmp_path.glob(".last.ckpt.*.tmp")  # the new bytes, complete, under a hidden name
    assert torch.equal(torch.load(temp, weights_only=True)["w"], new["w"])
    assert torch.equal(torch.load(target, weights_only=True)["w"], old["w"])
    AtomicCheckpointIO().save_checkpoint(new, target)  # the next save replaces it whole
    assert torch.equal(torch.load(target, weights_only=True)["w"], new["w"])

"""FSDP (FSDP2 through Lightning's ModelParallelStrategy) on two CPU processes over gloo, in a subprocess.

Lightning's FSDPStrategy (torch's FSDP1) needs a GPU: Lightning refuses it with accelerator=cpu
and torch raises "FSDP needs a non-CPU accelerator device". torch's fully_shard (FSDP2) runs on
CPU with gloo, so configs/fsdp.yaml uses it and this test runs the real sharded path: parameters
split over the ranks, a lagged π_old sharded alike and refreshed shard by shard.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest
import torch

from multiprocess_fit import ROOT, run_fit  # tests/ is on sys.path under pytest

pytestmark = [pytest.mark.slow,  # a 2-process fit in a subprocess
              pytest.mark.skipif(importlib.util.find_spec("transformers") is None, reason="needs the [hf] extra")]

STEPS, EVERY = 6, 3


def test_fsdp_two_cpu_ranks_shard_sync_and_agree(tmp_path):
    probe = tmp_path / "probe"
    run_fit(
        tmp_path, f"--config={ROOT / 'configs' / 'hf_tiny.yaml'}",
        f"--config={ROOT / 'configs' / 'fsdp.yaml'}", f"--trainer.default_root_dir={tmp_path}",
        f"--trainer.max_steps={STEPS}", f"--trainer.val_check_interval={STEPS}", "--trainer.log_every_n_steps=1",
        "--trainer.enable_progress_bar=false", "--data.batch_size=4", "--data.val_size=16",
        "--model.optimizer.init_args.lr=0.01", f"--sync.every_n_steps={EVERY}",  # lagged: a sharded copy
        "--trainer.callbacks+=shard_probe.ShardProbe", f"--trainer.callbacks.out={probe}",
    )
    rank0, rank1 = (torch.load(probe / f"rank{r}.pt") for r in (0, 1))

    # Sharded: every parameter is a DTensor and each rank holds about half of them.
    for rank in (rank0, rank1):
        assert all(rank["dtensor"])
        assert rank["local_numel"] < 0.6 * rank["full_numel"]
    assert rank0["local_numel"] + rank1["local_numel"] == rank0["full_numel"]
    assert not torch.equal(rank0["policy_shard"][:100], rank1["policy_shard"][:100])

    # Each rank draws its own queries; the gathered policy is the same on both.
    assert not (rank0["queries"] == rank1["queries"]).all(-1).any()
    assert torch.equal(rank0["policy"], rank1["policy"])

    # π_old (its local shard) changes only after the batches that reach a multiple of EVERY steps;
    # the last sync (step 6) leaves it equal to the policy, gathered.
    for rank in (rank0, rank1):
        changed = (rank["old_shard"][1:] != rank["old_shard"][:-1]).any(-1)
        assert changed.nonzero().flatten().tolist() == [b for b in range(STEPS - 1) if (b + 1) % EVERY == 0]
        assert torch.equal(rank["old_policy"], rank["policy"])
    assert not torch.equal(rank0["old_shard"][0], rank0["old_shard"][-1])  # the policy moved

    # Logged metrics are global and finite.
    assert len(rank0["train_reward"]) == STEPS
    for step, reward in rank0["train_reward"].items():
        assert torch.isfinite(reward) and torch.equal(reward, rank1["train_reward"][step]), step
    for name in ("train/reward", "val/reward", "val/exact_match"):
        assert torch.equal(rank0["metrics"][name], rank1["metrics"][name]), name

    # The checkpoint is sharded: one directory, a file per rank.
    last = tmp_path / "lightning_logs" / "version_0" / "checkpoints" / "last.ckpt"
    assert last.is_dir() and len(list(last.glob("*.distcp"))) == 2


def fsdp_fit(root: Path, steps: int, *extra: str) -> dict:
    """Rank 0's probe after a 2-process FSDP fit of ``steps`` steps (π_old lagged, synced every 2)."""
    probe = root / "probe"
    run_fit(
        root, f"--config={ROOT / 'configs' / 'hf_tiny.yaml'}",
        f"--config={ROOT / 'configs' / 'fsdp.yaml'}", f"--trainer.default_root_dir={root}",
        f"--trainer.max_steps={steps}", "--trainer.limit_val_batches=0", "--trainer.enable_progress_bar=false",
        "--data.batch_size=4", "--model.optimizer.init_args.lr=0.01", "--sync.every_n_steps=2",
        "--trainer.callbacks+=shard_probe.ShardProbe", f"--trainer.callbacks.out={probe}", *extra,
    )
    return torch.load(probe / "rank0.pt")


def test_fsdp_resumes_from_its_sharded_checkpoint_exactly(tmp_path):
    """3 steps, then 3 more from the sharded last.ckpt directory: the policy and π_old of 6 straight steps."""
    (tmp_path / "straight").mkdir()
    (tmp_path / "split").mkdir()
    straight = fsdp_fit(tmp_path / "straight", 6)
    fsdp_fit(tmp_path / "split", 3)
    checkpoint = tmp_path / "split" / "lightning_logs" / "version_0" / "checkpoints" / "last.ckpt"
    assert checkpoint.is_dir()  # written by torch.distributed.checkpoint, one file per rank
    resumed = fsdp_fit(tmp_path / "split", 6, f"--ckpt_path={checkpoint}")
    assert torch.equal(resumed["policy"], straight["policy"])
    assert torch.equal(resumed["old_policy"], straight["old_policy"])

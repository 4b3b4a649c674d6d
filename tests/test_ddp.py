"""Two-process DDP on CPU (gloo), run as a subprocess: what each rank saw and ended with."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from multiprocess_fit import ROOT, run_fit, run_nodes  # tests/ is on sys.path

pytestmark = pytest.mark.slow  # a 2-process fit in a subprocess

STEPS, UPDATES, EVERY = 60, 2, 10


def test_ddp_two_ranks_agree_and_solve(tmp_path):
    probe = tmp_path / "probe"
    run_fit(
        tmp_path, f"--config={ROOT / 'configs' / 'sapo.yaml'}", f"--config={ROOT / 'configs' / 'ddp.yaml'}",
        f"--trainer.default_root_dir={tmp_path}", f"--trainer.max_steps={STEPS}",
        f"--model.updates_per_rollout={UPDATES}",  # several backward passes per training_step under DDP
        "--model.optimizer.init_args.lr=0.01", f"--sync.every_n_steps={EVERY}",
        f"--trainer.val_check_interval={STEPS // UPDATES}",  # validate once, on the final policy
        "--trainer.log_every_n_steps=5", "--trainer.enable_progress_bar=false",
        "--trainer.callbacks+=rank_probe.RankProbe", f"--trainer.callbacks.out={probe}",
    )
    rank0, rank1 = (torch.load(probe / f"rank{r}.pt") for r in (0, 1))

    # Each rank draws its own queries, at every step.
    batches = STEPS // UPDATES
    assert rank0["queries"].shape == rank1["queries"].shape == (batches, 8, 5)
    assert not (rank0["queries"] == rank1["queries"]).all(-1).any(), "a rank repeated the other's query"

    # Gradients are all-reduced: the same policy on both ranks despite different data.
    assert torch.equal(rank0["policy"], rank1["policy"])
    # Every batch samples from the same old policy on both ranks; it changes after each batch
    # that reaches a multiple of 10 steps, and the last sync (step 60) leaves it equal to the policy.
    assert torch.equal(rank0["old_policy"], rank1["old_policy"])
    changed = (rank0["old_policy"][1:] != rank0["old_policy"][:-1]).any(-1)  # [batches - 1]: after batch b
    assert changed.nonzero().flatten().tolist() == [b for b in range(batches - 1) if (b + 1) * UPDATES % EVERY == 0]
    assert torch.equal(rank0["final_old_policy"], rank1["final_old_policy"])
    assert torch.equal(rank0["final_old_policy"], rank0["policy"])

    # Logged metrics are global: both ranks report the same values although their rollouts differ.
    assert rank0["train_reward"].keys() == rank1["train_reward"].keys() and len(rank0["train_reward"]) >= 5
    for step, reward in rank0["train_reward"].items():
        assert torch.equal(reward, rank1["train_reward"][step]), step
    for name in ("train/reward", "val/reward", "val/exact_match"):
        assert torch.equal(rank0["metrics"][name], rank1["metrics"][name]), name

    # Solved: every validation query (split over the two ranks) decodes to the target.
    assert rank0["metrics"]["val/exact_match"] == 1.0

    # Rank 0 alone wrote the end-of-run checkpoint, which holds the ranks' common weights.
    files = sorted(p.name for p in (tmp_path / "lightning_logs" / "version_0" / "checkpoints").iterdir())
    assert files == ["last.ckpt", f"step={STEPS}.ckpt"]
    checkpoint = torch.load(tmp_path / "lightning_logs" / "version_0" / "checkpoints" / "last.ckpt", weights_only=True)
    assert checkpoint["global_step"] == STEPS
    policy = torch.cat([v.flatten() for k, v in checkpoint["state_dict"].items() if k.startswith("policy.")])
    assert torch.equal(policy, rank0["policy"])


def ddp_probes(root: Path, *extra: str) -> tuple[dict, dict]:
    """What both ranks' probes saw in a short 2-process fit."""
    probe = root / "probe"
    root.mkdir()
    run_fit(
        root, f"--config={ROOT / 'configs' / 'sapo.yaml'}",
        f"--config={ROOT / 'configs' / 'ddp.yaml'}", f"--trainer.default_root_dir={root}", "--trainer.max_steps=8",
        "--trainer.enable_progress_bar=false", "--trainer.enable_checkpointing=false", "--trainer.limit_val_batches=0",
        "--model.optimizer=torch.optim.SGD", "--model.optimizer.init_args.lr=0.5",
        "--trainer.callbacks+=rank_probe.RankProbe", f"--trainer.callbacks.out={probe}", *extra,
    )
    return tuple(torch.load(probe / f"rank{r}.pt") for r in (0, 1))


def ddp_policy(root: Path, *extra: str) -> tuple[torch.Tensor, torch.Tensor]:
    """Both ranks' final policy parameters after a short 2-process fit."""
    rank0, rank1 = ddp_probes(root, *extra)
    return rank0["policy"], rank1["policy"]


def test_ddp_micro_batches_equal_the_full_batch(tmp_path):
    """Gradients synchronised once, after the last micro-batch: the ranks agree, and on the full batch's step."""
    full = ddp_policy(tmp_path / "full")
    chunked = ddp_policy(tmp_path / "chunked", "--model.micro_batch_size=16")
    assert torch.equal(*chunked)
    assert torch.allclose(chunked[0], full[0], rtol=0, atol=1e-6)


def test_ddp_dynamic_sampling_draws_as_many_rounds_on_every_rank(tmp_path):
    """Half the queries unrewarded, so each rank is short of informative groups at its own batches: every rank
    draws a round while any is short, so the ranks draw the same rounds, take the same steps and agree."""
    rank0, rank1 = ddp_probes(tmp_path / "run", "--data.task=blind_task.Blind",
                              "--data.task.init_args.target=[2,5,7,3,1]",
                              "--model.group_size=2", "--model.mini_batches=2", "--model.filter_groups=true",
                              "--model.max_sampling_rounds=6")
    assert rank0["batch_ends"] == rank1["batch_ends"]  # (global_step, rounds drawn so far) after every batch
    steps, calls = zip(*rank0["batch_ends"])
    assert steps == (2, 4, 6, 8) and calls[-1] > 4  # some batch drew more than one round
    assert torch.equal(rank0["policy"], rank1["policy"])


@pytest.mark.parametrize("end", ["finished", "non-finite stop"])
def test_ddp_ranks_exit_without_a_process_group(tmp_path, end):
    """Every rank destroys the process group before the interpreter exits, after a finished run (exit 0) and after
    the non-finite stop all ranks take together (exit 1): no gloo thread is left to abort the process at exit."""
    probe = tmp_path / "probe"
    stop = ["--model.max_nonfinite_steps=2", "--trainer.callbacks+=test_nonfinite.InfGradient",
            "--trainer.callbacks.steps=[3, 4]", "--trainer.callbacks.rank=1"] if end == "non-finite stop" else []
    run_fit(
        tmp_path, f"--config={ROOT / 'configs' / 'sapo.yaml'}", f"--config={ROOT / 'configs' / 'ddp.yaml'}",
        f"--trainer.default_root_dir={tmp_path}", "--trainer.max_steps=6", "--trainer.val_check_interval=6",
        "--trainer.enable_progress_bar=false", "--data.val_size=8",
        "--trainer.callbacks+=exit_probe.ExitProbe", f"--trainer.callbacks.out={probe}", *stop,
        status=1 if stop else 0,
    )
    for rank in (0, 1):
        state = json.loads((probe / f"rank{rank}.json").read_text())
        assert not state["initialized"], rank
        assert not [name for name in state["threads"] if "gloo" in name], (rank, state["threads"])


def test_two_nodes_of_one_process_train_as_one_node_of_two(tmp_path):
    """trainer.num_nodes=2 with one process per node, started by hand on localhost (MASTER_ADDR, MASTER_PORT,
    NODE_RANK, WORLD_SIZE): global ranks 0 and 1 draw the same queries and all-reduce the same gradients as the
    two processes of one node, so the final checkpoint is the same, bit for bit."""
    one, two = tmp_path / "one_node", tmp_path / "two_nodes"
    args = [f"--config={ROOT / 'configs' / 'sapo.yaml'}", f"--config={ROOT / 'configs' / 'ddp.yaml'}",
            "--trainer.max_steps=6", "--trainer.limit_val_batches=0", "--trainer.enable_progress_bar=false"]
    for root in (one, two):
        root.mkdir()
    run_fit(one, *args, f"--trainer.default_root_dir={one}")  # ddp.yaml: devices 2, num_nodes 1
    run_nodes(two, 2, *args, f"--trainer.default_root_dir={two}", "--trainer.devices=1")

    checkpoints = [torch.load(root / "lightning_logs" / "version_0" / "checkpoints" / "last.ckpt", weights_only=True)
                   for root in (one, two)]
    assert checkpoints[0]["global_step"] == checkpoints[1]["global_step"] == 6
    weights = [c["state_dict"] for c in checkpoints]
    assert weights[0].keys() == weights[1].keys()
    for name, value in weights[0].items():
        assert torch.equal(value, weights[1][name]), name
    moments = [[v for state in c["optimizer_states"][0]["state"].values() for v in state.values()] for c in checkpoints]
    assert len(moments[0]) == len(moments[1]) > 0
    assert all(torch.equal(a, b) for a, b in zip(*moments))

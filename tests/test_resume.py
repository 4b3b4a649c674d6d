"""Exact resume: stop a run, resume it from its end-of-run checkpoint, and get the uninterrupted run bit for bit."""

from __future__ import annotations

import hashlib
import sys
from pathlib import Path
from unittest import mock

import pytest
import torch

from sapo_lightning.cli import main
from sapo_lightning.loop.checkpointing import AtomicCheckpointIO

pytestmark = pytest.mark.slow  # pairs of fits compared bit for bit

CONFIG = Path(__file__).parents[1] / "configs" / "sapo.yaml"
# Validation and logging every few steps, so that their loop state is part of what must match.
QUICK = ["--trainer.enable_progress_bar=false", "--trainer.val_check_interval=10", "--data.val_size=16",
         "--trainer.log_every_n_steps=5", "--sync.every_n_steps=10"]
CHECKPOINT_KEYS = {"epoch", "global_step", "pytorch-lightning_version", "state_dict", "loops", "callbacks",
                   "optimizer_states", "lr_schedulers", "hparams_name", "hyper_parameters", "QueryDataModule",
                   "nonfinite_steps"}  # the non-finite guard's count of skipped steps, carried through a resume


def fit(root: Path, max_steps: int, *extra: str, ckpt_path: str | None = None) -> None:
    args = ["fit", f"--config={CONFIG}", f"--trainer.default_root_dir={root}", f"--trainer.max_steps={max_steps}",
            *QUICK, *extra]
    with mock.patch.object(sys, "argv", ["sapo-lightning"]):  # not pytest's arguments
        main(args + ([f"--ckpt_path={ckpt_path}"] if ckpt_path else []))


def run_dir(root: Path, version: int) -> Path:
    return root / "lightning_logs" / f"version_{version}" / "checkpoints"


def load(path: Path) -> dict:
    return torch.load(path, weights_only=True)


def assert_identical(a, b, where: str = "checkpoint") -> None:
    """Equal structure, equal plain values, and tensors equal in dtype and every bit."""
    assert type(a) is type(b), where
    if isinstance(a, dict):
        assert a.keys() == b.keys(), where
        for key in a:
            assert_identical(a[key], b[key], f"{where}[{key!r}]")
    elif isinstance(a, (list, tuple)):
        assert len(a) == len(b), where
        for i, (x, y) in enumerate(zip(a, b)):
            assert_identical(x, y, f"{where}[{i}]")
    elif isinstance(a, torch.Tensor):
        same = a.dtype == b.dtype and torch.equal(a, b)
        assert same, f"{where} differs"
    else:
        assert a == b, f"{where}: {a!r} != {b!r}"


def training_state(checkpoint: dict) -> dict:
    """Everything but the checkpoint callback's own state, which names this run's files."""
    callbacks = {k: v for k, v in checkpoint["callbacks"].items() if not k.startswith("RunCheckpoint")}
    return {**checkpoint, "callbacks": callbacks}


def digests(directory: Path) -> dict[str, str]:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(directory.iterdir())}


def resumed(root: Path, stop: int, total: int, *extra: str, ckpt_path: str = "last") -> tuple[dict, dict]:
    """Run to ``stop``, resume to ``total``; the final checkpoint and what the resumed run saw."""
    fit(root, stop, *extra)
    end_of_run = run_dir(root, 0) / f"step={stop}.ckpt"
    assert load(end_of_run)["global_step"] == stop
    first_run = digests(run_dir(root, 0))
    probe = root / "probe"
    fit(root, total, *extra, "--trainer.callbacks+=rank_probe.RankProbe", f"--trainer.callbacks.out={probe}",
        ckpt_path=str(end_of_run) if ckpt_path == "path" else ckpt_path)
    assert digests(run_dir(root, 0)) == first_run, "the resumed run touched the first run's files"
    seen = torch.load(probe / "rank0.pt")
    return load(run_dir(root, 1) / "last.ckpt"), seen


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory) -> dict[int, dict]:
    """40 steps in one go, for updates_per_rollout 1 and 2."""
    out = {}
    for updates in (1, 2):
        root = tmp_path_factory.mktemp(f"straight{updates}")
        fit(root, 40, f"--model.updates_per_rollout={updates}")
        out[updates] = load(run_dir(root, 0) / "last.ckpt")
    return out


@pytest.mark.parametrize(
    ("stop", "updates", "ckpt_path"),
    [(20, 1, "last"), (25, 1, "path"), (24, 2, "last")],
    ids=["20+20 at a sync", "25+15 between syncs", "24+16 two updates per rollout"],
)
def test_resume_equals_uninterrupted(tmp_path, uninterrupted, stop, updates, ckpt_path):
    final, seen = resumed(tmp_path, stop, 40, f"--model.updates_per_rollout={updates}", ckpt_path=ckpt_path)
    # It really resumed: it started at the checkpoint's step and drew only the missing batches.
    assert (seen["start_step"], seen["end_step"]) == (stop, 40)
    assert len(seen["queries"]) == (40 - stop) // updates
    straight = uninterrupted[updates]
    assert final["global_step"] == straight["global_step"] == 40
    assert_identical(training_state(final), training_state(straight))


def test_checkpoint_contents(uninterrupted):
    """What the README says a checkpoint holds, all loadable with weights_only=True."""
    checkpoint = uninterrupted[1]
    assert checkpoint.keys() == CHECKPOINT_KEYS
    assert {k.split(".")[0] for k in checkpoint["state_dict"]} == {"policy", "old_policy"}
    assert not any(key.startswith("OldPolicySync") for key in checkpoint["callbacks"])  # global_step decides
    assert checkpoint["QueryDataModule"] == {"next_batch": 40, "seed": 0}  # the training stream's position
    # Synced at step 40, so the behaviour policy equals the policy.
    for name, value in checkpoint["state_dict"].items():
        if name.startswith("policy."):
            assert torch.equal(value, checkpoint["state_dict"]["old_" + name])
    assert checkpoint["optimizer_states"][0]["state"][0]["step"] == 40


def test_max_steps_not_multiple_of_updates_is_refused(tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_info:
        fit(tmp_path, 25, "--model.updates_per_rollout=2")
    assert exit_info.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == ["sapo-lightning: error: trainer.max_steps must be a multiple of 2, the optimizer steps a rollout "
                   "batch makes (model.updates_per_rollout=2 x model.mini_batches=1); got 25"]
    assert not any(tmp_path.iterdir())


def test_second_run_writes_beside_the_first(tmp_path):
    fit(tmp_path, 10)
    first = digests(run_dir(tmp_path, 0))
    assert set(first) == {"step=10.ckpt", "last.ckpt"}
    fit(tmp_path, 10)
    assert digests(run_dir(tmp_path, 0)) == first
    assert set(digests(run_dir(tmp_path, 1))) == {"step=10.ckpt", "last.ckpt"}


def test_cli_resumes_with_weights_only(tmp_path):
    fit(tmp_path, 10)
    load_checkpoint = AtomicCheckpointIO.load_checkpoint
    with mock.patch.object(AtomicCheckpointIO, "load_checkpoint", autospec=True, side_effect=load_checkpoint) as spy:
        fit(tmp_path, 10, ckpt_path="last")
    (call,) = spy.call_args_list
    assert call.args[1] == str(run_dir(tmp_path, 0) / "last.ckpt")
    assert call.kwargs["weights_only"] is True


def test_last_is_a_link_and_a_resume_survives_a_kill_while_relinking(tmp_path):
    """last.ckpt names the run's newest step file (one copy on disk). Lightning relinks it by removal, then
    symlink: a kill in between leaves it naming the removed file, and --ckpt_path last takes the newest step file."""
    fit(tmp_path, 10, "--checkpoint.every_n_train_steps=4")  # saves at 4, 8, 10; only the newest kept
    last = run_dir(tmp_path, 0) / "last.ckpt"
    assert sorted(p.name for p in run_dir(tmp_path, 0).iterdir()) == ["last.ckpt", "step=10.ckpt"]
    assert last.is_symlink() and last.resolve() == run_dir(tmp_path, 0) / "step=10.ckpt"
    last.unlink()
    last.symlink_to("step=8.ckpt")  # as the kill would leave it at step 10: step=8.ckpt removed, not yet relinked
    load_checkpoint = AtomicCheckpointIO.load_checkpoint
    with mock.patch.object(AtomicCheckpointIO, "load_checkpoint", autospec=True, side_effect=load_checkpoint) as spy:
        fit(tmp_path, 14, ckpt_path="last")
    (call,) = spy.call_args_list
    assert call.args[1] == str(run_dir(tmp_path, 0) / "step=10.ckpt")
    assert load(run_dir(tmp_path, 1) / "last.ckpt")["global_step"] == 14


@pytest.mark.parametrize(
    "extra",
    [["--model.mini_batches=4"],
     ["--model.mini_batches=4", "--model.filter_groups=true", "--model.group_size=2", "--model.entropy_coef=0.01"]],
    ids=["four mini-batches", "four mini-batches, dynamic sampling, entropy bonus"],
)
def test_a_run_stopped_mid_rollout_resumes_from_the_rollout_boundary(tmp_path, extra):
    """Every 6 steps with 4 optimizer steps per rollout: the saves land at the first batch end at or past
    each multiple (8, 12, 20, 24), never inside a rollout, and resuming from step=8 gives the straight run."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    options = [*extra, "--checkpoint.every_n_train_steps=6", "--checkpoint.save_top_k=-1"]
    fit(tmp_path, 24, *options)
    saved = sorted(p.name for p in run_dir(tmp_path, 0).glob("*.ckpt"))
    assert saved == ["last.ckpt", "step=12.ckpt", "step=20.ckpt", "step=24.ckpt", "step=8.ckpt"]
    fit(tmp_path, 24, *options, ckpt_path=str(run_dir(tmp_path, 0) / "step=8.ckpt"))
    assert load(run_dir(tmp_path, 1) / "step=12.ckpt")["global_step"] == 12  # it resumed, not restarted
    straight, resumed_run = (load(run_dir(tmp_path, v) / "last.ckpt") for v in (0, 1))
    assert_identical(training_state(resumed_run), training_state(straight))
    if "--model.filter_groups=true" in extra:  # the filter drew more than one round somewhere
        events = EventAccumulator(str(run_dir(tmp_path, 0).parent))
        events.Reload()
        assert max(e.value for e in events.Scalars("train/groups_drawn")) > 8


def test_a_checkpoint_of_version_0_1_0_resumes_exactly(tmp_path):
    """tests/data/seed_step6_v0.1.0.ckpt was saved by sapo-lightning 0.1.0 (before the loop's internals moved
    to sapo_lightning.loop), `fit --config configs/sapo.yaml --trainer.max_steps=6`: resumed to step 10, it
    gives this version's uninterrupted 10 steps bit for bit."""
    old = Path(__file__).parent / "data" / "seed_step6_v0.1.0.ckpt"
    zeroed = load(old)  # the same checkpoint with its policy's weights zeroed: resuming must read the file
    zeroed["state_dict"] = {k: v.zero_() if k.startswith("policy.") else v for k, v in zeroed["state_dict"].items()}
    torch.save(zeroed, tmp_path / "zeroed.ckpt")
    plain = ["--trainer.enable_progress_bar=false"]
    runs = ((tmp_path / "straight", None), (tmp_path / "resumed", str(old)),
            (tmp_path / "zeroed", str(tmp_path / "zeroed.ckpt")))
    for root, ckpt in runs:
        with mock.patch.object(sys, "argv", ["sapo-lightning"]):
            main(["fit", f"--config={CONFIG}", f"--trainer.default_root_dir={root}", "--trainer.max_steps=10",
                  *plain, *([f"--ckpt_path={ckpt}"] if ckpt else [])])
    straight = load(run_dir(tmp_path / "straight", 0) / "step=10.ckpt")["state_dict"]
    resumed = load(run_dir(tmp_path / "resumed", 0) / "step=10.ckpt")["state_dict"]
    assert straight.keys() == resumed.keys()
    assert all(torch.equal(straight[k], resumed[k]) for k in straight)
    from_zeroed = load(run_dir(tmp_path / "zeroed", 0) / "step=10.ckpt")["state_dict"]
    assert not all(torch.equal(straight[k], from_zeroed[k]) for k in straight)

"""The non-finite guard: a NaN loss or an inf gradient skips the step (weights and optimizer state
untouched, counted), K in a row stop the run with one line and finite checkpoints."""

from __future__ import annotations

import copy
import csv
import sys
from pathlib import Path

import pytest
import torch
from lightning.pytorch import Callback, Trainer
from lightning.pytorch.loggers import CSVLogger

from sapo_lightning import SAPO, ConfigError, FixedTarget, MLPPolicy, QueryDataModule, RLModule
from sapo_lightning.callbacks import OldPolicySync
from sapo_lightning.cli import main
from sapo_lightning.tasks import Rewards

ROOT = Path(__file__).resolve().parents[1]
TARGET = [2, 5, 7, 3, 1]


class NaNRewards(FixedTarget):
    """FixedTarget whose training rewards are NaN at the rollout batches (0-based calls) from
    ``nan_from`` on, or at those listed in ``nan_at``."""

    def __init__(self, target: list[int], vocab_size: int = 10, nan_from: int | None = None,
                 nan_at: list[int] | None = None) -> None:
        super().__init__(target, vocab_size)
        self.nan_from, self.nan_at, self.calls = nan_from, set(nan_at or ()), 0

    def rewards(self, queries, rollout) -> Rewards:
        rewards = super().rewards(queries, rollout)
        bad = self.calls in self.nan_at or (self.nan_from is not None and self.calls >= self.nan_from)
        self.calls += 1
        return Rewards(torch.full_like(rewards.total, float("nan")), {}) if bad else rewards


class InfGradient(Callback):
    """Sets the policy's first gradient to inf before the module sees it, at the given optimizer steps
    (1 is the first), on one rank or on all."""

    def __init__(self, steps: list[int], rank: int | None = None) -> None:
        self.steps, self.rank = set(steps), rank

    def on_before_optimizer_step(self, trainer, pl_module, optimizer) -> None:
        if trainer.global_step + 1 in self.steps and self.rank in (None, trainer.global_rank):
            next(p for p in pl_module.policy.parameters() if p.grad is not None).grad.fill_(float("inf"))


class StepRecord(Callback):
    """Per batch (one optimizer step each): whether the weights and the optimizer state changed."""

    def __init__(self) -> None:
        self.changed: list[tuple[bool, bool]] = []

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        self.weights = [p.detach().clone() for p in pl_module.policy.parameters()]
        self.state = copy.deepcopy(trainer.optimizers[0].state_dict()["state"])

    def on_train_batch_end(self, trainer, pl_module, *args) -> None:
        weights = any(not torch.equal(a, p) for a, p in zip(self.weights, pl_module.policy.parameters()))
        state = trainer.optimizers[0].state_dict()["state"]
        moved = state.keys() != self.state.keys() or any(
            not torch.equal(value, self.state[i][name]) for i in state for name, value in state[i].items())
        self.changed.append((weights, moved))


def rl(task=None, **kwargs) -> RLModule:
    torch.manual_seed(0)
    return RLModule(lambda t: MLPPolicy(t, 16), SAPO(), task or FixedTarget(TARGET), group_size=4, **kwargs)


def fit(module: RLModule, steps: int, callbacks: list, **kwargs) -> Trainer:
    trainer = Trainer(max_steps=steps, enable_checkpointing=False, enable_progress_bar=False,
                      enable_model_summary=False, limit_val_batches=0, callbacks=callbacks,
                      **{"logger": False, **kwargs})
    trainer.fit(module, QueryDataModule(module.task, batch_size=2, seed=0))
    return trainer


@pytest.mark.parametrize("injection", ["nan_reward", "inf_gradient"])
def test_a_non_finite_step_changes_neither_weights_nor_optimizer_state_and_is_counted(tmp_path, injection):
    bad = [3, 5]  # optimizer steps, 1 is the first
    record = StepRecord()
    if injection == "nan_reward":
        module, callbacks = rl(NaNRewards(TARGET, nan_at=[s - 1 for s in bad])), [OldPolicySync(), record]
    else:
        module, callbacks = rl(), [OldPolicySync(), InfGradient(bad), record]
    trainer = fit(module, 6, callbacks, logger=CSVLogger(tmp_path), log_every_n_steps=1)
    assert trainer.global_step == 6  # a skipped step still counts: the schedule and the data stream keep their places
    assert record.changed == [(s not in bad, s not in bad) for s in range(1, 7)]
    (metrics,) = tmp_path.rglob("metrics.csv")
    counted = [float(row["train/nonfinite_steps"]) for row in csv.DictReader(metrics.open())
               if row.get("train/nonfinite_steps")]
    assert counted == [0, 0, 1, 1, 2, 2]
    assert all(p.isfinite().all() for p in module.policy.parameters())


def test_max_nonfinite_steps_is_checked():
    with pytest.raises(ConfigError, match=r"max_nonfinite_steps must be an integer >= 1 or null; got 0"):
        rl(max_nonfinite_steps=0)


@pytest.mark.slow
def test_k_non_finite_steps_in_a_row_stop_with_one_line_and_finite_checkpoints(tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(sys, "argv", ["sapo-lightning"])
    earlier = tmp_path / "lightning_logs" / "version_0" / "keep.txt"
    earlier.parent.mkdir(parents=True)
    earlier.write_text("earlier run")
    with pytest.raises(SystemExit) as exit_:  # rewards NaN from the 6th rollout batch on: steps 6, 7, 8
        main(["fit", "--config", str(ROOT / "configs" / "sapo.yaml"), f"--trainer.default_root_dir={tmp_path}",
              "--trainer.max_steps=20", "--trainer.enable_progress_bar=false", "--data.val_size=8",
              "--data.task=test_nonfinite.NaNRewards", f"--data.task.init_args.target={TARGET}",
              "--data.task.init_args.nan_from=5", "--checkpoint.every_n_train_steps=2"])
    assert exit_.value.code == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1, err
    assert err.startswith("sapo-lightning: error: 3 optimizer steps in a row (the last: step 8) had a non-finite "
                          "loss or gradient norm (model.max_nonfinite_steps=3)"), err
    assert earlier.read_text() == "earlier run"
    checkpoints = tmp_path / "lightning_logs" / "version_1" / "checkpoints"
    assert sorted(p.name for p in checkpoints.iterdir()) == ["last.ckpt", "step=6.ckpt"]  # top-1: the latest
    last = torch.load(checkpoints / "last.ckpt", weights_only=True)
    assert last["global_step"] == 6 and last["nonfinite_steps"] == 1  # step 6 was skipped, then saved
    for path in checkpoints.iterdir():
        saved = torch.load(path, weights_only=True)
        tensors = [*saved["state_dict"].values(),
                   *(v for state in saved["optimizer_states"][0]["state"].values() for v in state.values())]
        assert all(t.isfinite().all() for t in tensors), path.name
    # the run resumes from it, on rewards that are finite again
    main(["fit", "--config", str(ROOT / "configs" / "sapo.yaml"), f"--trainer.default_root_dir={tmp_path}",
          "--trainer.max_steps=10", "--trainer.enable_progress_bar=false", "--data.val_size=8",
          "--ckpt_path", str(checkpoints / "last.ckpt")])
    resumed = torch.load(tmp_path / "lightning_logs" / "version_2" / "checkpoints" / "last.ckpt", weights_only=True)
    assert resumed["global_step"] == 10 and resumed["nonfinite_steps"] == 1
    assert all(t.isfinite().all() for t in resumed["state_dict"].values())


@pytest.mark.slow
def test_ranks_skip_together(tmp_path):
    """An inf gradient on rank 1 alone (after the all-reduce) is skipped by both ranks: their weights stay equal."""
    from multiprocess_fit import run_fit  # tests/ is on sys.path under pytest

    probe = tmp_path / "probe"
    run_fit(tmp_path, f"--config={ROOT / 'configs' / 'sapo.yaml'}", f"--config={ROOT / 'configs' / 'ddp.yaml'}",
            f"--trainer.default_root_dir={tmp_path}", "--trainer.max_steps=6", "--trainer.val_check_interval=6",
            "--trainer.log_every_n_steps=1", "--trainer.enable_progress_bar=false", "--data.val_size=8",
            "--trainer.callbacks+=test_nonfinite.InfGradient", "--trainer.callbacks.steps=[3]",
            "--trainer.callbacks.rank=1",
            "--trainer.callbacks+=rank_probe.RankProbe", f"--trainer.callbacks.out={probe}")
    rank0, rank1 = (torch.load(probe / f"rank{r}.pt") for r in (0, 1))
    assert torch.equal(rank0["policy"], rank1["policy"])
    assert rank0["end_step"] == rank1["end_step"] == 6
    last = torch.load(tmp_path / "lightning_logs" / "version_0" / "checkpoints" / "last.ckpt", weights_only=True)
    assert last["nonfinite_steps"] == 1


@pytest.mark.slow  # two processes
def test_under_ddp_the_stop_is_one_line(tmp_path):
    """Both ranks stop on the same step; the user reads the error once."""
    from multiprocess_fit import run_fit

    err = run_fit(tmp_path, f"--config={ROOT / 'configs' / 'sapo.yaml'}", f"--config={ROOT / 'configs' / 'ddp.yaml'}",
                  f"--trainer.default_root_dir={tmp_path}", "--trainer.max_steps=6", "--trainer.val_check_interval=6",
                  "--trainer.enable_progress_bar=false", "--data.val_size=8", "--model.max_nonfinite_steps=2",
                  "--trainer.callbacks+=test_nonfinite.InfGradient", "--trainer.callbacks.steps=[3, 4]",
                  "--trainer.callbacks.rank=1", status=1)
    lines = [line for line in err.splitlines() if line.startswith("sapo-lightning: error:")]
    assert len(lines) == 1 and "2 optimizer steps in a row (the last: step 4)" in lines[0], err[-2000:]


"""The RL loop's schedule and invariants, as Trainer.fit from Python meets them."""

import sys
from pathlib import Path

import pytest
import torch
from lightning.pytorch import Callback, LightningModule, Trainer
from lightning.pytorch.plugins import MixedPrecision
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from sapo_lightning import SAPO, ConfigError, FixedTarget, MLPPolicy, QueryDataModule, RLModule
from sapo_lightning.callbacks import OldPolicySync, SyncsOldPolicy
from sapo_lightning.cli import main
from sapo_lightning.loop.schedule import crossed_multiple

CONFIG = str(Path(__file__).parents[1] / "configs" / "sapo.yaml")
TASK = FixedTarget([2, 5, 7, 3, 1])


def fires(updates: int, every: int, last_step: int = 35) -> list[int]:
    """The global steps at whose batch end the schedule fires, for batch ends up to ``last_step``."""
    return [step for step in range(updates, last_step + 1, updates) if crossed_multiple(step, updates, every)]


@pytest.mark.parametrize(
    "updates, every, expected",
    [
        (1, 10, [10, 20, 30]),  # one update per batch: every multiple of N
        (2, 10, [10, 20, 30]),  # U divides N: still every multiple
        (3, 10, [12, 21, 30]),  # U does not divide N: the first batch end at or past each multiple
        (4, 3, [4, 8, 12, 16, 20, 24, 28, 32]),  # N < U: every batch crosses at least one multiple
        (7, 10, [14, 21, 35]),  # the batch ending at 28 crosses nothing (20 < 22..28 < 30)
    ],
)
def test_crossed_multiple_by_hand(updates, every, expected):
    assert fires(updates, every) == expected


def module(**kwargs) -> RLModule:
    torch.manual_seed(0)
    return RLModule(lambda t: MLPPolicy(t, 16), SAPO(), TASK, group_size=4, **kwargs)


def trainer(**kwargs) -> Trainer:
    options = dict(logger=False, enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
                   limit_val_batches=0, callbacks=[OldPolicySync()])
    return Trainer(**(options | kwargs))


def test_trainer_fit_refuses_max_steps_that_split_a_rollout_batch():
    with pytest.raises(ConfigError, match=r"trainer.max_steps must be a multiple of 2, the optimizer steps a rollout "
                                         r"batch makes \(model.updates_per_rollout=2 x model.mini_batches=1\); got 5"):
        trainer(max_steps=5).fit(module(updates_per_rollout=2), QueryDataModule(TASK, batch_size=2, seed=0))


def test_a_fit_without_old_policy_sync_is_refused_in_one_line():
    with pytest.raises(ConfigError) as error:
        trainer(max_steps=2, callbacks=[]).fit(module(), QueryDataModule(TASK, batch_size=2, seed=0))
    message = str(error.value)
    assert "\n" not in message
    assert message.startswith("trainer.callbacks must include sapo_lightning.callbacks.OldPolicySync")
    assert "(sapo-lightning fit adds it as `sync`)" in message


def test_old_policy_sync_refreshes_old_policy_on_its_schedule():
    seen = []

    class OldEqualsPolicy(Callback):  # after OldPolicySync: what the next batch samples from
        def on_train_batch_end(self, trainer, pl_module, *args):
            old, new = (torch.cat([p.flatten() for p in m.parameters()])
                        for m in (pl_module.old_policy, pl_module.policy))
            seen.append(torch.equal(old, new))

    rl = module(optimizer=lambda p: torch.optim.SGD(p, lr=0.1))
    trainer(max_steps=6, callbacks=[OldPolicySync(2), OldEqualsPolicy()]).fit(
        rl, QueryDataModule(TASK, batch_size=2, seed=0))
    assert seen == [False, True, False, True, False, True]  # synced at steps 2, 4, 6; stale in between


def test_old_policy_sync_names_the_contract_it_needs():
    assert isinstance(module(), SyncsOldPolicy)
    with pytest.raises(TypeError, match=r"OldPolicySync needs a module with keep_old_copy, sync_old_policy and "
                                        r"steps_per_rollout .*; got LightningModule"):
        OldPolicySync().setup(None, LightningModule(), "fit")


def grad_norms(plugins: list) -> list[float]:
    """``grad_norm`` as the module recorded it at each of 3 updates."""
    rl, seen = module(), []
    measure = rl.update

    def update(*args):
        metrics = measure(*args)
        seen.append(metrics["grad_norm"].item())
        return metrics

    rl.update = update
    trainer(max_steps=3, plugins=plugins).fit(rl, QueryDataModule(TASK, batch_size=2, seed=0))
    return seen


def test_grad_norm_is_measured_after_the_amp_unscale():
    fp32 = grad_norms([])
    scaled = grad_norms([MixedPrecision("16-mixed", "cpu", torch.amp.GradScaler("cpu", init_scale=2.0**16))])
    assert len(fp32) == len(scaled) == 3
    # float16 autocast changes the forward pass a little; a norm of scaled gradients would be 65536x
    assert scaled == pytest.approx(fp32, rel=1e-2)


@pytest.mark.slow
def test_checkpoints_follow_the_schedule_with_several_updates_per_batch(tmp_path, monkeypatch):
    monkeypatch.setattr(sys, "argv", ["sapo-lightning"])
    main(["fit", "--config", CONFIG, "--trainer.default_root_dir", str(tmp_path), "--trainer.max_steps=15",
          "--model.updates_per_rollout=3", "--checkpoint.every_n_train_steps=5", "--checkpoint.save_top_k=-1",
          "--trainer.enable_progress_bar=false", "--data.val_size=8"])
    saved = sorted(p.name for p in (tmp_path / "lightning_logs" / "version_0" / "checkpoints").glob("*.ckpt"))
    # batch ends at 3, 6, 9, 12, 15: 6 crosses 5, 12 crosses 10, 15 is a multiple and the end of the run
    assert saved == ["last.ckpt", "step=12.ckpt", "step=15.ckpt", "step=6.ckpt"]
    assert torch.load(tmp_path / "lightning_logs/version_0/checkpoints/last.ckpt",
                      weights_only=True)["global_step"] == 15


@pytest.mark.parametrize("enabled", [True, False])
def test_checkpointing_switch_keeps_the_users_callbacks(tmp_path, monkeypatch, enabled):
    monkeypatch.setattr(sys, "argv", ["sapo-lightning"])
    main(["fit", "--config", CONFIG, "--trainer.default_root_dir", str(tmp_path), "--trainer.max_steps=4",
          f"--trainer.enable_checkpointing={str(enabled).lower()}", "--trainer.enable_progress_bar=false",
          "--trainer.callbacks+=lightning.pytorch.callbacks.LearningRateMonitor", "--trainer.log_every_n_steps=1",
          "--data.val_size=8"])
    run = tmp_path / "lightning_logs" / "version_0"
    assert sorted(p.name for p in run.glob("checkpoints/*.ckpt")) == (["last.ckpt", "step=4.ckpt"] if enabled else [])
    (events,) = run.glob("events.out.tfevents.*")
    accumulator = EventAccumulator(str(events))
    accumulator.Reload()
    assert "lr-Adam" in accumulator.Tags()["scalars"]  # the user's callback ran beside the checkpoint

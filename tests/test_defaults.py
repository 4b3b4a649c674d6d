"""What exists to save time: the CLI's progress bar redrawn twice a second, a checkpoint every 500 steps,
and gradient clipping with the norm already taken for ``train/grad_norm``."""

import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from lightning.pytorch import Callback
from lightning.pytorch.callbacks import TQDMProgressBar

from sapo_lightning import callbacks
from sapo_lightning.callbacks import ProgressBar
from sapo_lightning.checks import ConfigError
from sapo_lightning.cli import SAPOCLI, main
from sapo_lightning.data import QueryDataModule
from sapo_lightning.loop import guard
from sapo_lightning.module import RLModule

CONFIG = str(Path(__file__).resolve().parents[1] / "configs" / "sapo.yaml")


@pytest.fixture(autouse=True)
def plain_argv(monkeypatch):
    """LightningCLI warns when pytest's own argv sits beside the args it is given."""
    monkeypatch.setattr(sys, "argv", ["sapo-lightning"])


def trainer(tmp_path, *args: str):
    cli = SAPOCLI(RLModule, QueryDataModule, args=["--config", CONFIG, f"--trainer.default_root_dir={tmp_path}", *args],
                  run=False)
    return cli.trainer


def test_the_default_bar_is_throttled_and_checkpoints_come_every_500_steps(tmp_path):
    default = trainer(tmp_path)
    assert type(default.progress_bar_callback) is ProgressBar
    assert default.progress_bar_callback.refresh_interval == 0.5
    assert default.checkpoint_callback.every_n_steps == 500
    assert trainer(tmp_path, "--checkpoint.every_n_train_steps=50").checkpoint_callback.every_n_steps == 50


def test_a_bar_the_config_names_or_turns_off_is_left_alone(tmp_path):
    assert trainer(tmp_path, "--trainer.enable_progress_bar=false").progress_bar_callback is None
    named = trainer(tmp_path, "--trainer.callbacks+=lightning.pytorch.callbacks.TQDMProgressBar")
    assert type(named.progress_bar_callback) is TQDMProgressBar


def test_the_bar_redraws_at_most_once_per_interval_and_always_at_the_end(monkeypatch):
    drawn, clock = [], iter([0.0, 0.1, 0.2, 0.6, 0.7, 0.8, 0.9])
    monkeypatch.setattr(TQDMProgressBar, "on_train_batch_end", lambda self, t, m, o, b, i: drawn.append(i))
    monkeypatch.setattr(callbacks.time, "monotonic", lambda: next(clock))
    bar = ProgressBar(refresh_interval=0.5)
    for i in range(7):
        bar.on_train_batch_end(SimpleNamespace(global_step=i + 1, max_steps=7, num_training_batches=float("inf")),
                               None, None, None, i)
    assert drawn == [0, 3, 6]  # the first batch, the first past 0.5 s after it, and the last of the run


class BarProbe(Callback):
    """Records the training bar's (n, initial, total) as the run ends, before the bar closes."""

    seen: list[tuple] = []

    def on_train_end(self, trainer, pl_module):
        bar = trainer.progress_bar_callback.train_progress_bar
        BarProbe.seen.append((bar.n, bar.initial, bar.total))


def test_the_bar_counts_rollout_batches_and_a_resumed_run_starts_where_it_stopped(tmp_path, monkeypatch):
    monkeypatch.setattr(BarProbe, "seen", [])
    for steps, resume in ((8, []), (16, ["--ckpt_path=last"])):  # 2 optimizer steps per batch: 4 then 8 batches
        main(["fit", "--config", CONFIG, f"--trainer.default_root_dir={tmp_path}", f"--trainer.max_steps={steps}",
              "--model.updates_per_rollout=2", "--data.val_size=8", "--trainer.callbacks+=test_defaults.BarProbe",
              *resume])
    assert BarProbe.seen == [(4, 0, 4), (8, 4, 8)]  # Lightning's: (4, 0, 8) then (8, 0, None), shown as 8/?


def test_refresh_interval_is_checked():
    with pytest.raises(ConfigError, match="refresh_interval must be a number of seconds >= 0"):
        ProgressBar(refresh_interval=-1)


def test_clipping_with_the_logged_norm_is_lightnings_clipping_bit_for_bit(tmp_path, monkeypatch):
    def fit(root):  # a max norm small enough that every step clips
        main(["fit", "--config", CONFIG, f"--trainer.default_root_dir={root}", "--trainer.max_steps=20",
              "--model.max_grad_norm=0.05", "--trainer.enable_progress_bar=false", "--data.val_size=8"])
        (ckpt,) = (root / "lightning_logs" / "version_0" / "checkpoints").glob("step=20.ckpt")
        return torch.load(ckpt, weights_only=True)["state_dict"]

    shortcut = fit(tmp_path / "shortcut")
    monkeypatch.setattr(guard, "Precision", type("NotThePlugin", (), {}))  # take Lightning's clip_gradients
    lightning = fit(tmp_path / "lightning")
    assert shortcut.keys() == lightning.keys()
    assert all(torch.equal(shortcut[k], lightning[k]) for k in shortcut)

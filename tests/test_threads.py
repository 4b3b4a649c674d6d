"""--threads: one thread for a tiny policy, torch's count for a real model, the user's choice over both."""

import sys
from pathlib import Path

import pytest
import torch
from torch import nn

from sapo_lightning.checks import ConfigError
from sapo_lightning.cli import main
from sapo_lightning.loop.threads import SMALL_MODEL, choose_threads, set_threads

SAPO_CONFIG = str(Path(__file__).resolve().parents[1] / "configs" / "sapo.yaml")


@pytest.fixture
def threads(monkeypatch):
    """torch at 2 threads with no OMP_NUM_THREADS, as a fresh command on a 2-core machine; restored after."""
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    monkeypatch.setattr(sys, "argv", ["sapo-lightning"])
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    yield
    torch.set_num_threads(before)


def test_auto_is_one_thread_below_the_threshold_and_torchs_count_from_it(monkeypatch):
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    assert choose_threads("auto", 137_856) == 1  # configs/text_tiny.yaml's Llama
    assert choose_threads("auto", SMALL_MODEL - 1) == 1
    assert choose_threads("auto", SMALL_MODEL) is None
    assert choose_threads("auto", 134_515_008) is None  # SmolLM2-135M


def test_omp_num_threads_beats_auto_and_an_explicit_count_beats_both(monkeypatch):
    monkeypatch.setenv("OMP_NUM_THREADS", "2")
    assert choose_threads("auto", 1_842) is None
    assert choose_threads(3, 1_842) == 3
    assert choose_threads(1, 134_515_008) == 1
    with pytest.raises(ConfigError, match="threads must be an integer >= 1; got 0"):
        choose_threads(0, 1_842)


def test_set_threads_counts_the_models_parameters(threads):
    set_threads("auto", nn.Linear(4000, 2500))  # 10,002,500 parameters: torch's count stays
    assert torch.get_num_threads() == 2
    set_threads("auto", nn.Linear(4000, 2499))  # 9,998,499: one thread
    assert torch.get_num_threads() == 1


@pytest.mark.parametrize("args, expected", [([], 1), (["--threads=3"], 3)], ids=["auto", "explicit"])
def test_the_cli_sets_threads_for_the_seed_policy(tmp_path, threads, args, expected):
    main(["validate", "--config", SAPO_CONFIG, "--trainer.default_root_dir", str(tmp_path),
          "--trainer.enable_progress_bar=false", *args])
    assert torch.get_num_threads() == expected


def test_the_cli_leaves_an_explicit_omp_num_threads(tmp_path, threads, monkeypatch):
    monkeypatch.setenv("OMP_NUM_THREADS", "2")
    main(["validate", "--config", SAPO_CONFIG, "--trainer.default_root_dir", str(tmp_path),
          "--trainer.enable_progress_bar=false"])
    assert torch.get_num_threads() == 2

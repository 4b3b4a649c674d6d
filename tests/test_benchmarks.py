"""The overhead benchmark compares like with like: its hand-written loop is the module's math."""

import importlib.util
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def overhead():
    spec = importlib.util.spec_from_file_location("overhead", ROOT / "benchmarks" / "overhead.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules["overhead"] = module  # fit's --trainer.callbacks+=overhead.StepClock imports it by name
    spec.loader.exec_module(module)
    yield module
    del sys.modules["overhead"]


@pytest.fixture(autouse=True)
def plain_argv(monkeypatch):
    """LightningCLI warns when pytest's own argv sits beside the args it is given."""
    monkeypatch.setattr(sys, "argv", ["sapo-lightning"])


def test_fit_and_the_plain_loop_reach_the_same_parameters(overhead, tmp_path):
    # 50 steps cross 5 old-policy syncs and the step-50 validation and checkpoint:
    # `sapo-lightning fit` is rollout -> rewards -> group advantages -> SAPO -> Adam, nothing else.
    assert overhead.same_math(overhead.SIZES["seed"], 50, str(tmp_path)) == 0.0


def test_a_stale_sync_would_show(overhead, tmp_path, monkeypatch):
    # the comparison can fail: the plain loop syncing every 5 steps instead of 10 diverges
    monkeypatch.setattr(overhead, "SYNC_EVERY", 5)
    assert overhead.same_math(overhead.SIZES["seed"], 50, str(tmp_path)) > 0.0


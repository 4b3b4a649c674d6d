"""examples/minimal_sapo.py is `sapo-lightning fit --config configs/sapo.yaml` without the framework,
and the overhead benchmark times that same loop (and, for configs/transformer.yaml, a loop of the
package's own pieces without Lightning), so it compares like with like."""

import importlib.util
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow  # fits against the example loop

ROOT = Path(__file__).resolve().parents[1]
EXAMPLE = ROOT / "examples" / "minimal_sapo.py"


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


def test_the_benchmark_times_the_example(overhead):
    assert Path(overhead.minimal_sapo.__file__).resolve() == EXAMPLE


def test_fit_and_the_example_reach_the_same_parameters(overhead, tmp_path):
    # 50 steps cross 5 old-policy syncs and the step-50 validation and checkpoint:
    # `sapo-lightning fit` is rollout -> rewards -> group advantages -> SAPO -> Adam, nothing else.
    assert overhead.same_math(overhead.SIZES["seed"], 50, str(tmp_path)) == 0.0


def test_fit_and_the_plain_library_loop_reach_the_same_parameters_at_the_transformer_config(overhead, tmp_path):
    # the benchmark's plain side for configs/transformer.yaml: KV-cache sampling, sync every step,
    # gradient clipping and the step-50 validation, bit for bit
    assert overhead.same_math(overhead.SIZES["transformer"], 50, str(tmp_path), overhead.TRANSFORMER) == 0.0


def test_a_stale_sync_would_show(overhead, tmp_path):
    # the comparison can fail: the example syncing every 5 steps instead of 10 diverges
    assert overhead.same_math(overhead.SIZES["seed"], 50, str(tmp_path), sync_every=5) > 0.0


def test_the_example_runs_alone_and_solves_the_seed_task(tmp_path):
    # `python examples/minimal_sapo.py --steps 100`, then: neither sapo_lightning nor Lightning was imported
    framework = {"sapo_lightning", "lightning", "torchmetrics"}
    script = (f"import runpy, sys; sys.argv = ['minimal_sapo.py', '--steps', '100']; "
              f"runpy.run_path({str(EXAMPLE)!r}, run_name='__main__'); "
              f"print(sorted({{m.split('.')[0] for m in sys.modules}} & {framework!r}))")
    result = subprocess.run([sys.executable, "-c", script], cwd=tmp_path, env={**os.environ, "OMP_NUM_THREADS": "1"},
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    *lines, imported = result.stdout.splitlines()
    assert [line.split()[1] for line in lines] == ["50", "100"]
    assert lines[-1].endswith("val exact match 1.000")
    assert imported == "[]"

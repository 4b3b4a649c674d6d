"""``sapo-lightning compare``: the statistics on hand-made series, and a tiny grid end to end."""

import csv
import math
import sys
from pathlib import Path

import pytest
import yaml

from sapo_lightning.cli import main
from sapo_lightning.compare import mean_ci, read_scalars, summarise_run, t_quantile, trailing_mean

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(autouse=True)
def plain_argv(monkeypatch):
    """LightningCLI warns when pytest's own argv sits beside the args it is given."""
    monkeypatch.setattr(sys, "argv", ["sapo-lightning"])


# -- statistics ------------------------------------------------------------------------------
def test_mean_ci_is_student_t_half_width():
    mean, half = mean_ci([1.0, 2.0, 3.0, 4.0, 5.0])
    # sd = sqrt(2.5), se = sd / sqrt(5) = 0.70711, t_{0.975, 4} = 2.776
    assert mean == 3.0
    assert half == pytest.approx(2.776 * math.sqrt(2.5) / math.sqrt(5), rel=1e-9)
    assert mean_ci([2.0, 2.0, 2.0]) == (2.0, 0.0)
    assert mean_ci([0.7])[0] == 0.7 and math.isnan(mean_ci([0.7])[1])  # one seed: no interval
    assert math.isnan(mean_ci([])[0])
    assert mean_ci([1.0, float("nan"), 3.0]) == (2.0, pytest.approx(12.706 * math.sqrt(2) / math.sqrt(2)))


def test_t_quantile_table_and_large_df():
    assert t_quantile(1) == 12.706 and t_quantile(4) == 2.776 and t_quantile(30) == 2.042
    assert t_quantile(60) == pytest.approx(2.000, abs=1e-3)
    assert t_quantile(120) == pytest.approx(1.980, abs=1e-3)


def test_trailing_mean():
    assert trailing_mean([1.0, 3.0, 5.0, 7.0], 2) == [1.0, 2.0, 4.0, 6.0]
    assert trailing_mean([1.0, 3.0, 5.0], 1) == [1.0, 3.0, 5.0]


def test_a_run_that_falls_below_its_best_and_stays_there_collapsed():
    steps = [10, 20, 30, 40, 50, 60, 70]
    reward = [0.1, 0.5, 0.9, 0.9, 0.5, 0.4, 0.4]
    run = summarise_run(steps, reward, [2.0, 1.0, 0.5, 0.4, 0.3, 0.2, 0.1], threshold=0.8, margin=0.2, window=1)
    assert run.steps_to_threshold == 30
    assert run.best == 0.9 and run.final == 0.4
    assert run.collapsed and run.collapse_step == 50  # 0.5 < 0.9 - 0.2 from step 50 to the end
    assert run.final_entropy == 0.1


def test_a_dip_that_recovers_is_no_collapse_and_smoothing_delays_the_threshold():
    steps = [1, 2, 3, 4, 5]
    reward = [0.2, 0.9, 0.3, 0.9, 0.9]
    run = summarise_run(steps, reward, [], threshold=0.6, margin=0.3, window=1)
    assert not run.collapsed and math.isnan(run.collapse_step)  # fell 0.6 below its best at step 3, came back
    assert run.steps_to_threshold == 2
    assert math.isnan(run.final_entropy)
    # window 2: s = [0.2, 0.55, 0.6, 0.6, 0.9]
    smoothed = summarise_run(steps, reward, [], threshold=0.6, margin=0.3, window=2)
    assert smoothed.steps_to_threshold == 3 and smoothed.best == pytest.approx(0.9)


def test_a_run_that_never_reaches_the_threshold():
    run = summarise_run([1, 2, 3], [0.1, 0.2, 0.15], [], threshold=0.5, margin=0.1, window=1)
    assert math.isnan(run.steps_to_threshold) and not run.collapsed
    assert run.final == 0.15 and run.best == 0.2


# -- the command -----------------------------------------------------------------------------
STUDY = {
    "name": "tiny",
    "tasks": {"seed": {"config": str(ROOT / "configs" / "sapo.yaml")}},
    "objectives": {
        "sapo": {"class_path": "sapo_lightning.objectives.SAPO"},
        "sapo-sym": {"class_path": "sapo_lightning.objectives.SAPO", "init_args": {"tau_neg": 1.0}},
    },
    "seeds": [0, 1],
    "overrides": {
        "trainer.max_steps": 12, "trainer.log_every_n_steps": 3, "trainer.val_check_interval": 6,
        "model.optimizer.init_args.lr": 0.02,
    },
    "threshold": 0.2,
    "margin": 0.1,
    "window": 2,
    "workers": 1,
}


@pytest.fixture(scope="module")
def study(tmp_path_factory):
    """The tiny grid (2 objectives x 2 seeds x 12 steps), run once in this process."""
    tmp = tmp_path_factory.mktemp("compare")
    path = tmp / "tiny.yaml"
    path.write_text(yaml.safe_dump(STUDY))
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(sys, "argv", ["sapo-lightning"])
        main(["compare", "--config", str(path), "--out", str(tmp / "out")])
    return tmp / "out" / "tiny"


def test_tiny_grid_writes_a_table_per_task_with_a_row_per_objective(study):
    summary = (study / "summary.md").read_text()
    assert "## seed" in summary
    header = "| objective | reached | steps to threshold | final reward | best reward | collapses | final entropy |"
    assert header in summary
    rows = [line for line in summary.splitlines() if line.startswith("| sapo")]
    assert [row.split("|")[1].strip() for row in rows] == ["sapo", "sapo-sym"]
    assert all(row.split("|")[6].strip().endswith("/2") for row in rows)  # collapses out of 2 seeds
    with open(study / "runs.csv") as f:
        runs = list(csv.DictReader(f))
    assert sorted((r["objective"], r["seed"]) for r in runs) == [
        ("sapo", "0"), ("sapo", "1"), ("sapo-sym", "0"), ("sapo-sym", "1")]
    # the table's final reward is the mean of the runs' final rewards
    finals = [float(r["final"]) for r in runs if r["objective"] == "sapo"]
    assert f"{sum(finals) / 2:.3f} ± " in rows[0]


def test_tiny_grid_writes_plots_or_says_how_to_get_them(study):
    summary = (study / "summary.md").read_text()
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        assert "pip install 'sapo-lightning[plot]'" in summary
    else:
        assert (study / "seed.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_every_cell_config_is_exact_and_reruns_alone_to_the_same_series(study):
    configs = sorted(p.relative_to(study / "configs").as_posix() for p in (study / "configs").rglob("*.yaml"))
    assert configs == [
        "seed/sapo-sym/seed0.yaml", "seed/sapo-sym/seed1.yaml", "seed/sapo/seed0.yaml", "seed/sapo/seed1.yaml"]
    cell = yaml.safe_load((study / "configs" / "seed" / "sapo-sym" / "seed1.yaml").read_text())
    assert cell["seed_everything"] == 1
    assert cell["model"]["objective"] == STUDY["objectives"]["sapo-sym"]
    assert cell["trainer"]["max_steps"] == 12 and cell["model"]["optimizer"]["init_args"]["lr"] == 0.02
    assert cell["data"]["task"]["init_args"]["target"] == [2, 5, 7, 3, 1]  # the rest is the base config's

    log_dir = study / "runs" / "seed" / "sapo-sym" / "seed1"
    first = read_scalars(log_dir)
    main(["fit", "--config", str(study / "configs" / "seed" / "sapo-sym" / "seed1.yaml")])
    assert sorted(p.name for p in log_dir.glob("version_*")) == ["version_0", "version_1"]
    again = read_scalars(log_dir)  # the newest version: the rerun
    assert again["train/reward"] == first["train/reward"]
    assert again["train/gate_mean"] == first["train/gate_mean"]


def test_compare_help_documents_its_options(capsys):
    with pytest.raises(SystemExit) as exit_:
        main(["compare", "--help"])
    assert exit_.value.code == 0
    out = capsys.readouterr().out
    for option in ("--config", "--tasks", "--objectives", "--seeds", "--overrides", "--threshold", "--margin",
                   "--workers", "--out"):
        assert option in out
    assert "running best" in out  # the docstring is the help


@pytest.mark.parametrize("args, message", [
    (["--margin", "-0.1"], "margin must be a finite number >= 0"),
    (["--seeds", "[]"], "seeds must be a non-empty list"),
    (["--workers", "0"], "workers must be an integer >= 1"),
    (["--objectives", "{sapo: {init_args: {}}}"], "objectives.sapo must have a class_path"),
    (["--tasks", "{t: {config: nowhere.yaml}}"], "tasks.t.config must be an existing fit config"),
])
def test_bad_study_is_one_line_and_exit_2(tmp_path, capsys, args, message):
    path = tmp_path / "study.yaml"
    path.write_text(yaml.safe_dump(STUDY))
    with pytest.raises(SystemExit) as exit_:
        main(["compare", "--config", str(path), "--out", str(tmp_path / "out"), *args])
    assert exit_.value.code == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("sapo-lightning compare: error: ") and message in err, err
    assert not (tmp_path / "out").exists()


def test_an_existing_study_is_not_overwritten_without_asking(study, capsys):
    path = study.parent.parent / "tiny.yaml"
    with pytest.raises(SystemExit) as exit_:
        main(["compare", "--config", str(path), "--out", str(study.parent)])
    assert exit_.value.code == 2
    assert "--overwrite true" in capsys.readouterr().err
    assert (study / "summary.md").exists()

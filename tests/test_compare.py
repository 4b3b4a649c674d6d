"""``sapo-lightning compare``: the statistics on hand-made series, the cells' composition,
and a tiny grid end to end."""

import csv
import math
import shlex
import sys
from pathlib import Path

import pytest
import yaml

from sapo_lightning.cli import main as cli_main
from sapo_lightning.compare import main
from sapo_lightning.compare.runner import check_cell, read_scalars
from sapo_lightning.compare.stats import final_values, mean_ci, seed_band, summarise_run, t_quantile, trailing_mean
from sapo_lightning.compare.study import check_study, compose_cells, resolve_objective

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


def test_the_band_is_the_ci_clipped_to_the_seeds_range():
    # step 1: rewards [1, 1, 0.7]: mean 0.9, sd 0.1732, se 0.1, half 4.303 * 0.1 -> [0.4697, 1.3303] unclipped
    # step 2: entropies-like [0, 0, 0.3]: mean 0.1, half 0.4303 -> [-0.3303, 0.5303] unclipped
    # step 3: [0.2, 0.4, 0.6]: mean 0.4, half 4.303 * 0.11547 = 0.4969 -> clipped to [0.2, 0.6]
    curves = [([1, 2, 3, 4], [1.0, 0.0, 0.2, 9.0]), ([1, 2, 3], [1.0, 0.0, 0.4]), ([0, 1, 2, 3], [5.0, 0.7, 0.3, 0.6])]
    steps, mean, low, high = seed_band(curves)
    assert steps == [1, 2, 3]  # only the steps every seed logged
    assert mean == pytest.approx([0.9, 0.1, 0.4])
    assert low == pytest.approx([0.7, 0.0, 0.2]) and high == pytest.approx([1.0, 0.3, 0.6])


def test_a_narrow_band_is_the_ci_itself_and_one_seed_is_the_line():
    values = [0.50, 0.51, 0.49, 0.50, 0.50]  # half 2.776 * sd / sqrt(5) = 0.00878 < 0.01 to either extreme
    mean, half = mean_ci(values)
    _, _, low, high = seed_band([([1], [v]) for v in values])
    assert low == [pytest.approx(mean - half)] and high == [pytest.approx(mean + half)]
    assert seed_band([([1, 2], [0.3, 0.4])]) == ([1, 2], [0.3, 0.4], [0.3, 0.4], [0.3, 0.4])
    assert seed_band([]) == ([], [], [], [])


def test_final_values_are_the_last_logged_points_and_nan_where_never_logged():
    scalars = {"val/exact_match": ([5, 11], [0.25, 0.5]), "train/reward": ([0, 1, 2], [0.1, 0.2, 0.3])}
    finals = final_values(scalars, ["val/exact_match", "val/nope"])
    assert finals["val/exact_match"] == 0.5 and math.isnan(finals["val/nope"])


# -- composing cells -------------------------------------------------------------------------
def composed_objective(tmp_path: Path, capsys, objective: dict) -> dict:
    """The ``model.objective`` LightningCLI composes for a cell on a SAPO base with non-default init_args."""
    base = yaml.safe_load((ROOT / "configs" / "sapo.yaml").read_text())
    base["model"]["objective"]["init_args"] = {"tau_pos": 2.0, "tau_neg": 3.0, "aggregation": "token-mean"}
    (tmp_path / "base.yaml").write_text(yaml.safe_dump(base))
    tasks = {"t": {"config": str(tmp_path / "base.yaml")}}
    (cell,) = compose_cells(tasks, {"o": resolve_objective("o", objective)}, [3], {}, tmp_path / "study")
    cell.write_overlay()
    capsys.readouterr()
    with pytest.raises(SystemExit) as exit_:
        cli_main([*cell.args, "--print_config"])
    assert not exit_.value.code
    config = yaml.safe_load(capsys.readouterr().out)
    assert config["seed_everything"] == 3
    return config["model"]["objective"]


def test_a_cell_runs_exactly_the_study_objective_with_the_class_defaults(tmp_path, capsys):
    grpo = composed_objective(tmp_path, capsys, {"class_path": "sapo_lightning.objectives.GRPO"})
    assert grpo["class_path"].endswith(".GRPO")  # neither tau_pos nor the base's token-mean carried over
    assert grpo["init_args"] == {"eps_low": 0.2, "eps_high": 0.2, "dual_clip": None,
                                 "aggregation": "seq-mean-token-mean"}
    sapo = composed_objective(tmp_path, capsys, {"class_path": "SAPO", "init_args": {"tau_neg": 1.0}})
    assert sapo["class_path"].endswith(".SAPO")
    assert sapo["init_args"] == {"tau_pos": 1.0, "tau_neg": 1.0, "aggregation": "seq-mean-token-mean",
                                 "ratio_level": "token"}


@pytest.mark.parametrize("name", ["staleness", "temperature"])
def test_the_shipped_studies_compose_into_fit_configs(name, monkeypatch, tmp_path):
    monkeypatch.chdir(ROOT)  # their task configs are paths from the repository root
    spec = yaml.safe_load((ROOT / "configs" / "studies" / f"{name}.yaml").read_text())
    check_study(spec["name"], spec["tasks"], spec["objectives"], spec["seeds"], spec["overrides"], spec["threshold"],
                spec["margin"], spec["window"], spec["workers"], spec.get("report", []))
    objectives = {o: resolve_objective(o, s) for o, s in spec["objectives"].items()}
    cells = compose_cells(spec["tasks"], objectives, spec["seeds"], spec["overrides"], tmp_path / name)
    assert len(cells) == len(spec["tasks"]) * len(objectives) * len(spec["seeds"])
    for task in spec["tasks"]:
        check_cell(next(cell for cell in cells if cell.task == task))
    assert not (tmp_path / name).exists()


# -- the command -----------------------------------------------------------------------------
STUDY = {
    "name": "tiny",
    "tasks": {"seed": {"config": str(ROOT / "configs" / "sapo.yaml"), "overrides": {"trainer.max_steps": 12}}},
    "objectives": {
        "sapo": {"class_path": "sapo_lightning.objectives.SAPO"},
        "sapo-sym": {"class_path": "sapo_lightning.objectives.SAPO", "init_args": {"tau_neg": 1.0}},
    },
    "seeds": [0, 1],
    "overrides": {
        "trainer.max_steps": 6, "trainer.log_every_n_steps": 3, "trainer.val_check_interval": 6,
        "model.optimizer.init_args.lr": 0.02,
    },
    "threshold": 0.2,
    "margin": 0.1,
    "window": 2,
    "workers": 1,
    # at validation only (TensorBoard steps 5 and 11); every 3 steps (4 points); never logged
    "report": ["val/exact_match", "train/approx_kl", "val/nope"],
}


@pytest.fixture(scope="module")
def study(tmp_path_factory):
    """The tiny grid (2 objectives x 2 seeds x 12 steps), run once in this process."""
    tmp = tmp_path_factory.mktemp("compare")
    path = tmp / "tiny.yaml"
    path.write_text(yaml.safe_dump(STUDY))
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(sys, "argv", ["sapo-lightning"])
        main(["--config", str(path), "--out", str(tmp / "out")])
    return tmp / "out" / "tiny"


@pytest.mark.slow
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


@pytest.mark.slow
def test_report_tags_are_columns_of_their_runs_last_logged_values(study):
    summary = (study / "summary.md").read_text()
    assert "| final entropy | final val/exact_match | final train/approx_kl | final val/nope |" in summary
    rows = [line.split("|") for line in summary.splitlines() if line.startswith("| sapo")]
    with open(study / "runs.csv") as f:
        runs = list(csv.DictReader(f))
    for row, objective in zip(rows, ["sapo", "sapo-sym"]):
        logs = [read_scalars(study / "runs" / "seed" / objective / f"seed{seed}") for seed in (0, 1)]
        assert [log["val/exact_match"][0] for log in logs] == [[6, 12], [6, 12]]  # x = global_step
        assert [log["train/approx_kl"][0] for log in logs] == [[3, 6, 9, 12], [3, 6, 9, 12]]
        for column, tag in ((8, "val/exact_match"), (9, "train/approx_kl")):
            last = [log[tag][1][-1] for log in logs]
            assert [float(r[tag]) for r in runs if r["objective"] == objective] == pytest.approx(last)
            assert row[column].strip() == "{:.3f} ± {:.3f}".format(*mean_ci(last))
        assert row[10].strip() == "–"  # no run logged val/nope
    assert all(r["val/nope"] == "nan" for r in runs)


def run_series(reward: list[float], strict: float, soft_clip: list[float]) -> dict:
    """One run's scalars as the runner reads them: three logged steps, and a final validation at step 11."""
    steps = [0, 5, 11]
    return {"val/reward": (steps, reward), "train/entropy": (steps, [1.0, 0.9, 0.8]),
            "train/soft_clip_frac": (steps, soft_clip), "val/strict": ([11], [strict])}


def test_the_plot_draws_a_once_logged_tag_as_a_dot_per_objective_and_no_second_soft_clip_panel():
    pytest.importorskip("matplotlib")
    from sapo_lightning.compare.report import figure

    series = {"sapo": [run_series([0.1, 0.2, 0.3], 0.5, [0.0, 0.1, 0.2]),
                       run_series([0.1, 0.3, 0.5], 0.7, [0.0, 0.0, 0.1])],
              "grpo": [run_series([0.0, 0.1, 0.2], 0.4, [0.0] * 3), run_series([0.0, 0.1, 0.1], 0.4, [0.0] * 3)]}
    fig = figure("t", series, "val/reward", ["val/strict", "train/soft_clip_frac"])
    shown = [ax for ax in fig.axes if ax.get_visible()]
    assert [ax.get_title() for ax in shown] == ["val/reward", "entropy", "approx KL",
                                                "soft clip (w<0.5) / clip fraction", "val/strict, final: mean ± 95% CI"]
    clip = shown[3]  # SAPO's soft-clip fraction, in its own panel: the mean of its seeds
    assert list(clip.lines[0].get_ydata()) == pytest.approx([0.0, 0.05, 0.15])
    once = shown[4]
    assert [label.get_text() for label in once.get_xticklabels()] == ["sapo", "grpo"]
    assert all(len(line.get_xdata()) == 1 for line in once.lines)  # dots, no line over a one-step axis
    # sapo: mean 0.6, sd 0.1414, CI t_{0.975,1} 12.706 x 0.1414 / sqrt(2) = 1.2706; grpo: 0.4, no spread
    dots = [container.lines[0] for container in once.containers]  # each errorbar's data line
    assert [(*line.get_xdata(), *line.get_ydata()) for line in dots] == [(0, pytest.approx(0.6)),
                                                                         (1, pytest.approx(0.4))]
    (bar,) = once.containers[0].lines[2][0].get_segments()
    assert bar[:, 1] == pytest.approx([0.6 - 1.2706, 0.6 + 1.2706])
    assert [text.get_text() for text in once.texts] == ["0.600 ± 1.271", "0.400 ± 0.000"]


@pytest.mark.slow
def test_tiny_grid_writes_plots_or_says_how_to_get_them(study):
    summary = (study / "summary.md").read_text()
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        assert "pip install 'sapo-lightning[plot]'" in summary
    else:
        png = (study / "seed.png").read_bytes()
        assert png[:8] == b"\x89PNG\r\n\x1a\n"
        # 4 panels, the gate mean and 3 report tags: two rows of 4 at 4 inches x 100 dpi
        assert int.from_bytes(png[20:24], "big") == 800
        assert "95% CI clipped to the seeds' min-max" in summary


@pytest.mark.slow
def test_a_cell_reruns_alone_to_the_same_series_with_the_command_the_summary_prints(study, monkeypatch):
    overlays = sorted(p.relative_to(study / "configs").as_posix() for p in (study / "configs").rglob("*.yaml"))
    assert overlays == [
        "seed/sapo-sym/seed0.yaml", "seed/sapo-sym/seed1.yaml", "seed/sapo/seed0.yaml", "seed/sapo/seed1.yaml"]
    summary = (study / "summary.md").read_text()
    command = next(line.strip() for line in summary.splitlines() if line.startswith("    sapo-lightning fit"))
    program, *args = shlex.split(command)
    assert program == "sapo-lightning" and args[-1] == str(study / "configs" / "seed" / "sapo" / "seed0.yaml")

    log_dir = study / "runs" / "seed" / "sapo" / "seed0"
    first = read_scalars(log_dir)
    ran = yaml.safe_load((log_dir / "version_0" / "config.yaml").read_text())  # LightningCLI's own record
    assert ran["seed_everything"] == 0 and ran["trainer"]["max_steps"] == 12  # the task's override wins
    assert ran["model"]["optimizer"]["init_args"]["lr"] == 0.02  # the study's
    assert ran["data"]["task"]["init_args"]["target"] == [2, 5, 7, 3, 1]  # the rest is the base config's
    cli_main(args)
    assert sorted(p.name for p in log_dir.glob("version_*")) == ["version_0", "version_1"]
    again = read_scalars(log_dir)  # the newest version: the rerun
    assert again["train/reward"] == first["train/reward"]
    assert again["train/gate_mean"] == first["train/gate_mean"]


def test_compare_help_documents_its_options(capsys):
    with pytest.raises(SystemExit) as exit_:
        main(["--help"])
    assert exit_.value.code == 0
    out = capsys.readouterr().out
    for option in ("--config", "--tasks", "--objectives", "--seeds", "--overrides", "--threshold", "--margin",
                   "--report", "--workers", "--out"):
        assert option in out
    assert "running best" in out  # the docstring is the help


@pytest.mark.parametrize("args, message", [
    (["--margin", "-0.1"], "margin must be a finite number >= 0"),
    (["--seeds", "[]"], "seeds must be a non-empty list"),
    (["--workers", "0"], "workers must be an integer >= 1"),
    (["--name", "a/b"], "name must be a directory name"),
    (["--objectives", "{sapo: {init_args: {}}}"], "objectives.sapo must be a mapping with a class_path"),
    (["--objectives", "{grpo: {class_path: GRPO, init_args: {tau_pos: 1.0}}}"], "objectives.grpo: "),
    (["--objectives", "{sapo: {class_path: SAPO, init_args: {tau_neg: -1}}}"], "tau_neg must be a finite number > 0"),
    (["--tasks", "{t: {config: nowhere.yaml}}"], "tasks.t.config must be an existing fit config"),
    (["--overrides", "{model.objective.init_args.tau_neg: 2}"], "overrides keys must be other than model.objective"),
    (["--overrides", "{trainer.max_stepz: 6}"], "tasks.seed does not compose into a fit config: "),
    (["--report", "[val/reward, val/reward]"], "report must be a list of distinct TensorBoard scalar tags"),
    (["--report", "val/reward"], 'Parser key "report"'),
])
def test_bad_study_is_one_line_and_exit_2(tmp_path, capsys, args, message):
    path = tmp_path / "study.yaml"
    path.write_text(yaml.safe_dump(STUDY))
    with pytest.raises(SystemExit) as exit_:
        main(["--config", str(path), "--out", str(tmp_path / "out"), *args])
    assert exit_.value.code == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("sapo-lightning compare: error: ") and message in err, err
    assert not (tmp_path / "out").exists()


@pytest.mark.slow
def test_an_existing_study_is_kept_unless_asked_and_unless_the_new_one_is_valid(study, capsys):
    path = study.parent.parent / "tiny.yaml"
    with pytest.raises(SystemExit) as exit_:
        main(["--config", str(path), "--out", str(study.parent)])
    assert exit_.value.code == 2
    assert "--overwrite true" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exit_:
        main(["--config", str(path), "--out", str(study.parent), "--overwrite", "true",
              "--overrides", "{trainer.max_stepz: 6}"])
    assert exit_.value.code == 2
    assert (study / "summary.md").exists()

"""The command line end to end: a solved fit with its TensorBoard tags, shipped configs, bad input."""

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from sapo_lightning.cli import main
from sapo_lightning.commands import main as commands_main

ROOT = Path(__file__).resolve().parents[1]
SAPO_CONFIG = str(ROOT / "configs" / "sapo.yaml")
QUIET = ["--trainer.enable_progress_bar=false", "--trainer.enable_model_summary=false"]

TAGS = [
    "train/reward", "train/reward_std", "train/loss", "train/entropy", "train/approx_kl",
    "train/ratio_mean", "train/ratio_min", "train/ratio_max", "train/gate_mean", "train/gate_pos",
    "train/gate_neg", "train/soft_clip_frac", "train/zero_adv_frac", "train/grad_norm",
    "val/reward", "val/exact_match",
]


@pytest.fixture(autouse=True)
def plain_argv(monkeypatch):
    """LightningCLI warns when pytest's own argv sits beside the args it is given."""
    monkeypatch.setattr(sys, "argv", ["sapo-lightning"])


def scalars(run_dir: Path) -> dict[str, list[tuple[int, float]]]:
    (events,) = run_dir.glob("events.out.tfevents.*")
    accumulator = EventAccumulator(str(events))
    accumulator.Reload()
    return {tag: [(e.step, e.value) for e in accumulator.Scalars(tag)] for tag in accumulator.Tags()["scalars"]}


@pytest.mark.slow
def test_default_config_solves_the_seed_task_and_logs_every_tag(tmp_path):
    # the shipped 500 steps solve at the validation of step 100; 200 keep the test short
    main(["fit", "--config", SAPO_CONFIG, "--trainer.default_root_dir", str(tmp_path), "--trainer.max_steps=200",
          *QUIET])
    run = tmp_path / "lightning_logs" / "version_0"
    logged = scalars(run)
    assert set(TAGS) <= set(logged), set(TAGS) - set(logged)
    assert logged["val/exact_match"][-1][1] == 1.0
    assert logged["val/reward"][-1][1] == 1.0
    assert logged["train/reward"][0][1] < 0.5 < logged["train/reward"][-1][1]  # it learned, from near random
    assert all(0.0 <= v <= 1.0 for _, v in logged["train/gate_mean"])
    assert all(lo <= 1.0 + 1e-6 for _, lo in logged["train/ratio_min"])
    # hyperparameters recorded, config saved, and a checkpoint at the end of the run
    assert "tau_neg: 1.05" in (run / "hparams.yaml").read_text()
    assert (run / "config.yaml").exists()
    assert list((run / "checkpoints").glob("*.ckpt"))


@pytest.mark.slow
def test_validate_subcommand_runs(tmp_path, capsys):
    main(["validate", "--config", SAPO_CONFIG, "--trainer.default_root_dir", str(tmp_path), *QUIET])
    assert "val/exact_match" in capsys.readouterr().out


@pytest.mark.slow
def test_test_subcommand_evaluates_a_checkpoint_on_held_out_queries(tmp_path, capsys):
    main(["fit", "--config", SAPO_CONFIG, "--trainer.default_root_dir", str(tmp_path), "--trainer.max_steps=100",
          *QUIET])
    checkpoint = tmp_path / "lightning_logs" / "version_0" / "checkpoints" / "last.ckpt"
    capsys.readouterr()
    main(["test", "--config", SAPO_CONFIG, "--trainer.default_root_dir", str(tmp_path), "--ckpt_path", str(checkpoint),
          *QUIET])
    out = capsys.readouterr().out
    assert "test/exact_match" in out and "test/reward" in out
    logged = scalars(tmp_path / "lightning_logs" / "version_1")
    assert logged["test/exact_match"][-1][1] == 1.0  # solved at step 100, on queries it never trained on


def test_help_lists_every_subcommand(capsys):
    commands_main(["--help"])
    out = capsys.readouterr().out
    for subcommand in ("fit", "validate", "test", "compare", "export"):
        assert f"\n  {subcommand} " in out
    with pytest.raises(SystemExit) as exit_:
        commands_main(["predict"])
    assert exit_.value.code == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "must be one of fit, validate, test, compare, export; got 'predict'" in err


def test_help_comes_from_docstrings(capsys):
    with pytest.raises(SystemExit):
        main(["fit", "--help"])
    out = capsys.readouterr().out
    assert "Responses sampled per query" in out  # RLModule's docstring
    assert "Queries per optimizer step and rank" in out  # QueryDataModule's docstring
    assert "every_n_steps" in out


BAD_INPUT = [
    (["--model.objective.init_args.tau_pos=0"], "tau_pos must be a finite number > 0"),
    (["--model.objective.init_args.tau_neg=-1.05"], "tau_neg must be a finite number > 0"),
    (["--model.objective.init_args.tau_neg=.inf"], "tau_neg must be a finite number > 0"),
    (["--model.group_size=1"], "group_size must be an integer >= 2"),
    (["--data.batch_size=0"], "batch_size must be an integer >= 1"),
    (["--data.task.init_args.target=[]"], "target must be a list of at least one token id; got []"),
    (["--data.task.init_args.target=[2,5,10]"], "target must be token ids, integers in [0, vocab_size=10); got [10]"),
    (["--sync.every_n_steps=0"], "every_n_steps must be an integer >= 1"),
    (["--model.optimizer.init_args.lr=0"], "lr must be a finite number > 0"),
    (["--model.optimizer.init_args.lr=-0.001"], "lr must be a finite number > 0"),
    (["--model.micro_batch_size=0"], "micro_batch_size must be an integer >= 1 or null; got 0"),
    (["--model.micro_batch_size=7"], "model.micro_batch_size must be a divisor of the batch's 64 responses"),
    (["--ckpt_path=runs/nope.ckpt"], "ckpt_path: no such file runs/nope.ckpt (relative to the working directory"),
    (["--model.beta=-0.5"], "beta must be a finite number >= 0; got -0.5"),
    (["--model.mini_batches=0"], "mini_batches must be an integer >= 1; got 0"),
    (["--model.mini_batches=3"], "model.mini_batches must be a divisor of data.batch_size=8 (a mini-batch holds whole "
     "groups); got 3"),
    (["--model.mini_batches=4", "--model.micro_batch_size=32"], "model.micro_batch_size must be a divisor of a "
     "mini-batch's 16 responses (data.batch_size=8 x model.group_size=8 / model.mini_batches=4); got 32"),
    (["--model.mini_batches=4", "--trainer.max_steps=10"], "trainer.max_steps must be a multiple of 4, the optimizer "
     "steps a rollout batch makes (model.updates_per_rollout=1 x model.mini_batches=4); got 10"),
    (["--model.max_sampling_rounds=0"], "max_sampling_rounds must be an integer >= 1; got 0"),
    (["--model.filter_groups=true", "--model.group_size=1", "--model.advantage_scale=none"],
     "filter_groups must be false with group_size=1 (a group of one response has no spread to filter on); got True"),
    (["--model.entropy_coef=-0.01"], "entropy_coef must be a finite number >= 0; got -0.01"),
    (["--trainer.precision=foo"], "trainer.precision must be one of 64, 32, 16, transformer-engine, "
     "transformer-engine-float16, 16-true, 16-mixed, bf16-true, bf16-mixed, 32-true, 64-true, bf16; got foo"),
    # Lightning would run float16 autocast and its gradient scaler on the CPU; the issue asks for a GPU
    (["--trainer.precision=16-mixed"], "trainer.precision must be 32-true, bf16-mixed or bf16-true on a CPU "
     "(16-mixed needs --trainer.accelerator=gpu); got 16-mixed with trainer.accelerator=cpu"),
    (["--threads=0"], "threads must be a positive integer or auto; got 0"),
    (["--threads=two"], "threads must be a positive integer or auto; got two"),
]


@pytest.mark.parametrize("args, message", BAD_INPUT, ids=[a[0].split("=")[0] for a, _ in BAD_INPUT])
def test_bad_input_is_one_line_and_touches_no_file(tmp_path, capsys, args, message):
    earlier = tmp_path / "lightning_logs" / "version_0"
    earlier.mkdir(parents=True)
    (earlier / "keep.txt").write_text("earlier run")
    with pytest.raises(SystemExit) as exit_:
        main(["fit", "--config", SAPO_CONFIG, "--trainer.default_root_dir", str(tmp_path), *args])
    assert exit_.value.code == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("sapo-lightning: error: "), err
    assert message in err
    assert [p.name for p in tmp_path.rglob("*")] == ["lightning_logs", "version_0", "keep.txt"]
    assert (earlier / "keep.txt").read_text() == "earlier run"


@pytest.mark.parametrize("content", [None, "model: [unclosed\n", "- just\n- a list\n"],
                         ids=["missing", "malformed", "not-a-mapping"])
def test_missing_or_malformed_yaml(tmp_path, capsys, content):
    path = tmp_path / "config.yaml"
    if content is not None:
        path.write_text(content)
    with pytest.raises(SystemExit) as exit_:
        main(["fit", "--config", str(path)])
    assert exit_.value.code == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("sapo-lightning: error: "), err
    if content == "model: [unclosed\n":  # the file, and where in it
        assert str(path) in err and "line 2, column 1" in err, err
    if content is None:
        assert err == f"sapo-lightning: error: --config: no such file {path}\n"


def test_a_missing_relative_config_names_the_working_directory(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)  # configs/sapo.yaml exists in the repository, not here
    with pytest.raises(SystemExit) as exit_:
        main(["fit", "--config", "configs/sapo.yaml"])
    assert exit_.value.code == 2
    assert capsys.readouterr().err == (
        f"sapo-lightning: error: --config: no such file configs/sapo.yaml "
        f"(relative to the working directory {tmp_path})\n"
    )


def test_a_misspelt_train_file_is_reported_missing_from_the_working_directory(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(ROOT)  # the config's tokenizer and data paths are relative to the repository
    with pytest.raises(SystemExit) as exit_:
        main(["fit", "--config", "configs/text_tiny.yaml",
              "--data.task.init_args.train_file=data/text_demo/trian.jsonl",
              "--trainer.default_root_dir", str(tmp_path)])
    assert exit_.value.code == 2
    assert capsys.readouterr().err == ("sapo-lightning: error: train_file: no such file or directory "
                                       f"data/text_demo/trian.jsonl (relative to the working directory {ROOT})\n")
    assert list(tmp_path.iterdir()) == []


def test_version_is_the_projects(capsys):
    commands_main(["--version"])
    (project,) = re.findall(r'^version = "(.+)"$', (ROOT / "pyproject.toml").read_text(), re.M)
    assert capsys.readouterr().out == f"sapo-lightning {project}\n"


def test_bare_command_prints_the_usage_and_subcommands_and_exits_2(capsys):
    with pytest.raises(SystemExit) as exit_:
        commands_main([])
    assert exit_.value.code == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    assert captured.err.startswith("usage: sapo-lightning {fit,validate,test,compare,export} ...\n")
    for subcommand in ("fit", "validate", "test", "compare", "export"):
        assert f"\n  {subcommand} " in captured.err
    assert "None" not in captured.err


@pytest.mark.slow
def test_console_script_error_has_no_traceback(tmp_path):
    result = subprocess.run(
        [sys.executable, "-m", "sapo_lightning", "fit", "--config", SAPO_CONFIG, "--data.batch_size=-3"],
        cwd=tmp_path, capture_output=True, text=True, timeout=120,
    )
    assert result.returncode == 2
    assert "Traceback" not in result.stderr + result.stdout
    assert result.stderr.strip() == "sapo-lightning: error: batch_size must be an integer >= 1; got -3"
    assert not (tmp_path / "lightning_logs").exists()


@pytest.mark.slow
def test_a_short_fit_starts_quietly(tmp_path):
    # no Lightning tips and no deprecation warnings from the libraries' use, as a user runs it
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONWARNINGS="")
    result = subprocess.run(
        [sys.executable, "-m", "sapo_lightning", "fit", "--config", SAPO_CONFIG, "--trainer.max_steps=5", *QUIET],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120,
    )
    assert result.returncode == 0, result.stderr
    assert "`Trainer.fit` stopped: `max_steps=5` reached." in result.stderr  # stderr is captured at all
    for noise in ("Tip", "litlogger", "DeprecationWarning", "FutureWarning", "deprecated"):
        assert noise not in result.stderr, result.stderr


def test_fit_without_a_config_says_where_one_comes_from(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(SystemExit) as exit_:
        main(["fit"])
    err = capsys.readouterr().err
    assert exit_.value.code == 2 and err.count("\n") == 1, err
    assert "arguments are required" in err and "--config configs/sapo.yaml" in err
    assert list(tmp_path.iterdir()) == []


def test_help_and_an_export_path_error_import_neither_torch_nor_lightning(tmp_path):
    """Their answers need neither: the package's names are imported on first use (4-5 s of imports before)."""
    code = ("import sys\nfrom sapo_lightning.commands import main\nmain(['--help'])\n"
            "try:\n    main(['export', '--ckpt_path', 'nowhere.ckpt', '--output', 'out'])\nexcept SystemExit as e:\n"
            "    print(e.code)\nprint(sorted(m for m in ('torch', 'lightning', 'transformers') if m in sys.modules))")
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=tmp_path, env=env)
    assert run.stdout.splitlines()[-2:] == ["2", "[]"], run.stdout + run.stderr
    assert run.stderr == f"sapo-lightning export: error: ckpt_path: no such file nowhere.ckpt (relative to the " \
                         f"working directory {tmp_path})\n"


def test_every_public_name_of_the_package_resolves():
    import sapo_lightning

    for name in sapo_lightning.__all__:
        assert getattr(sapo_lightning, name).__name__ == name

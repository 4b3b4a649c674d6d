"""``sapo-lightning compare``: run objectives x seeds x tasks and summarise what each objective did.

A study is a YAML file (see ``configs/studies/``)::

    name: temperature                     # output under <out>/<name>/
    tasks:                                # task name -> base fit config + dotted overrides
      mlp: {config: configs/sapo.yaml, overrides: {data.task.init_args.vocab_size: 50}}
    objectives:                           # objective name -> model.objective (class_path, init_args)
      sapo: {class_path: sapo_lightning.objectives.SAPO}
    seeds: [0, 1, 2, 3, 4]
    overrides: {trainer.max_steps: 300}   # dotted keys applied to every cell, before the task's
    threshold: 0.5                        # reward a run must reach (steps-to-threshold)
    margin: 0.1                           # collapse margin below the running best
    report: [val/exact_match]             # more tags: each run's last logged value, a column and a panel each

Every cell (task, objective, seed) is ``sapo-lightning fit --config <task config> --config
configs/<task>/<objective>/seed<k>.yaml``: LightningCLI applies the overlay, which holds the
study's overrides, then the task's, then ``model.objective`` (every init_arg spelled out, so
none is inherited from the task config's objective), ``seed_everything`` and the logger. The
cells run in a pool of worker processes (each runs its cells one after another in-process,
one torch thread each), logging to TensorBoard under ``runs/<task>/<objective>/seed<k>/``.
The summary is read back from those event files only.

Definitions (per run, on the logged series x_k of ``metric`` at TensorBoard steps t_k, each
already the mean over the steps since the previous log point):

- s_k: trailing mean of the last ``window`` logged values; B_k = max_{i<=k} s_i, its running best.
- steps to threshold: the first t_k with s_k >= ``threshold``; runs that never reach it are
  counted in ``reached`` and left out of the mean.
- final / best reward: s at the last log point / max_k s_k.
- collapse: from some log point on the run stays more than ``margin`` below its running best,
  s_j < B_j − margin for every later j, up to the end. A run collapsed iff final < best − margin;
  its collapse step is the first t_k from which that holds.
- final entropy: the trailing mean of ``train/entropy`` at the last log point.
- a ``report`` tag: its last logged value, unsmoothed (NaN, "–" in the table, where never logged).

Each table cell is the mean ± the 95% Student-t confidence half-width over seeds. Each plot
shows the mean over seeds at every step logged by all of them, and a band: that 95% interval
clipped to the seeds' [min, max] at the step, so it stays inside the range the quantity took.

Parts: :mod:`.stats` (pure), :mod:`.study` (fields, cells), :mod:`.runner` (fits, scalars),
:mod:`.report` (table, CSV, plots), :mod:`.command` (the command).
"""

from sapo_lightning.compare.command import DESCRIPTION, compare, main

__all__ = ["DESCRIPTION", "compare", "main"]

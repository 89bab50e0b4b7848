"""bnsweep's Hydra plugins, found by Hydra as its own are (the ``hydra_plugins`` namespace):

- ``sweeper.BnsweepSweeper`` (``hydra/sweeper=bnsweep``, sweep.py's default): Hydra's basic
  sweeper, whose batches of jobs it groups when ``sweep.vectorize=true`` (the points that train as
  one stacked job: bnsweep.sweep.points), for every launcher;
- ``launchers.BnsweepSlurmLauncher`` (``hydra/launcher=slurm`` and ``slurm_local``): Hydra's
  Slurm launcher, collecting each job's result on its own (a job Slurm ended without one is a
  failed run, not the sweep's end) and giving a point on N devices a job of N tasks
  (bnsweep.sweep.launchers).

Light to import: Hydra imports every plugin module at each start, train.py's included; the work
is in bnsweep.sweep, imported when a sweep uses them.
"""

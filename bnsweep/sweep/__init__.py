"""Points × seeds: each job of a sweep (``jobs``), the Hydra callback around them (``callback``:
checks and lock before the first job, the report after the last), Slurm jobs that end without a
result and points of N devices as jobs of N tasks (``launchers``), a point on several devices
run as its own train.py (``point_process``), the dry-run plan (``plan``), and vectorized seeds
(``points``, ``vectorize``, ``members``, ``member_checkpoints``).

Imports every package before it: config, data, nn, run and report (the report of a finished
sweep). Nothing imports it but the entry point sweep.py and the benchmarks.
"""

"""Hydra's submitit launchers, made to survive a job that Slurm ended without a result.

Hydra's submitit launcher waits for every job's result and raises at the first job that has
none (cancelled with ``scancel``, killed by its time limit, its node lost): the sweep process
then ends in a traceback, without the report of the jobs that did finish, while later jobs
still run unwatched. ``install()`` (the sweep's callback calls it at the start) gives the launcher the ``launch`` below,
which collects each job on its own: a job without a result counts as a failed run (its folder
gets a failed metrics.json saying what Slurm reported, and keeps its checkpoints, so
``resume=<sweep folder>`` continues it), the others are reported as usual.

A job that Slurm requeued (``scontrol requeue``, or submitit's requeue on preemption and
timeout) starts again in the same run folder: ``bnsweep.sweep.jobs.run_job`` treats such a restart
(``SLURM_RESTART_COUNT`` > 0) as ``resume=true``, so it continues from its last checkpoint.

Hydra takes launchers only from its ``hydra_plugins`` namespace, so rather than a second
top-level package with a subclass, the collection step is installed into Hydra's own class:
``hydra/launcher=slurm`` and ``slurm_local`` keep Hydra's ``_target_``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from hydra.core.singleton import Singleton
from hydra.core.utils import JobReturn, JobStatus
from hydra_plugins.hydra_submitit_launcher.config import BaseQueueConf
from hydra_plugins.hydra_submitit_launcher.submitit_launcher import BaseSubmititLauncher
from omegaconf import OmegaConf, open_dict


def install() -> None:
    """Hydra's submitit launchers collect each job's result on its own (``launch``). Called
    once Hydra has loaded its plugins (it loads their modules afresh when it scans them)."""
    from hydra.core.plugins import Plugins

    for name, cls in Plugins.instance().class_name_to_class.items():
        if name.startswith("hydra_plugins.hydra_submitit_launcher.") and hasattr(cls, "_EXECUTOR"):
            cls.launch = launch


def launch(self: BaseSubmititLauncher, job_overrides: Sequence[Sequence[str]],
           initial_job_idx: int) -> Sequence[JobReturn]:  # fmt: skip
    """Hydra's BaseSubmititLauncher.launch (hydra-submitit-launcher 1.2: the same executor,
    parameters and job arguments), but each job's result collected on its own."""
    import submitit

    init = {"folder": self.params["submitit_folder"]}
    if "max_num_timeout" in self.params:
        init[f"{self._EXECUTOR}_max_num_timeout"] = self.params["max_num_timeout"]
    executor = submitit.AutoExecutor(cluster=self._EXECUTOR, **init)
    base = set(OmegaConf.structured(BaseQueueConf).keys())
    executor.update_parameters(**{
        k if k in base else f"{self._EXECUTOR}_{k}": v for k, v in self.params.items()
        if k not in ("submitit_folder", "max_num_timeout")
    })  # fmt: skip
    Path(str(self.config.hydra.sweep.dir)).mkdir(parents=True, exist_ok=True)
    params = [(list(o), "hydra.sweep.dir", idx, f"job_id_for_{idx}", Singleton.get_state())
              for idx, o in enumerate(job_overrides, start=initial_job_idx)]  # fmt: skip
    jobs = executor.map_array(self, *zip(*params))
    returns = []
    for job, (overrides, _, idx, _, _) in zip(jobs, params):
        try:
            returns.append(job.results()[0])
        except (submitit.core.utils.UncompletedJobError, submitit.core.utils.FailedJobError):
            returns.append(_lost(self, job, idx, overrides))
    return returns


def _lost(launcher: BaseSubmititLauncher, job: Any, idx: int, overrides: list[str]) -> JobReturn:
    """A job Slurm ended without a result: recorded in its run folder and jobs.jsonl."""
    from bnsweep.sweep.jobs import record_lost_job

    message = f"Slurm job {job.job_id} ended without a result (state {job.state})"
    record_lost_job(_run_dir(launcher, idx, overrides), message, overrides)
    # as bnsweep.sweep.jobs.run_job returns for a failed run: NaN (Hydra's sweeper raises the error
    # of a job whose status is FAILED, which would end the sweep)
    ret = JobReturn(overrides=overrides, status=JobStatus.COMPLETED)
    ret._return_value = math.nan
    return ret


def _run_dir(launcher: BaseSubmititLauncher, idx: int, overrides: list[str]) -> Path:
    """The folder Hydra gives job ``idx``: the sweep folder / its hydra.sweep.subdir."""
    cfg = launcher.hydra_context.config_loader.load_sweep_config(launcher.config, overrides)
    with open_dict(cfg.hydra.job):
        cfg.hydra.job.num = idx
    return Path(str(cfg.hydra.sweep.dir)) / str(OmegaConf.select(cfg, "hydra.sweep.subdir"))

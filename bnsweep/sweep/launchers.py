"""What bnsweep's Slurm launchers do (hydra_plugins/bnsweep_plugins/launchers.py: subclasses of
Hydra's submitit launchers, ``hydra/launcher=slurm`` and ``slurm_local``).

Hydra's submitit launcher waits for every job's result and raises at the first job that has
none (cancelled with ``scancel``, killed by its time limit, its node lost): the sweep process
then ends in a traceback, without the report of the jobs that did finish, while later jobs
still run unwatched. ``launch`` below collects each job on its own: a job without a result counts
as a failed run (its folder gets a failed metrics.json saying what Slurm reported, and keeps its
checkpoints, so ``resume=<sweep folder>`` continues it), the others are reported as usual. A
point with ``trainer.devices=N`` is one Slurm job of N tasks (``srun --kill-on-bad-exit``), whose
ranks Lightning's SLURM environment reads; points of different counts go out as separate arrays.

A job that Slurm requeued (``scontrol requeue``, or submitit's requeue on preemption and
timeout) starts again in the same run folder: ``bnsweep.sweep.jobs.run_job`` treats such a restart
(``SLURM_RESTART_COUNT`` > 0) as ``resume=true``, so it continues from its last checkpoint.
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
    jobs: dict[int, Any] = {}
    for tasks, group in _by_tasks(self, params).items():  # a point on N devices: N Slurm tasks
        if self._EXECUTOR == "slurm":
            # one task that ends badly ends the job's other tasks (else they wait on it)
            extra = {"srun_args": ["--kill-on-bad-exit=1"]} if tasks > 1 else {}
            executor.update_parameters(**{f"slurm_{k}": v for k, v in
                                          {"tasks_per_node": tasks, **extra}.items()})  # fmt: skip
        for i, job in zip(group, executor.map_array(self, *zip(*[params[i] for i in group]))):
            jobs[i] = job
    returns = []
    for i, (overrides, _, idx, _, _) in enumerate(params):
        try:
            returns.append(jobs[i].results()[0])
        except (submitit.core.utils.UncompletedJobError, submitit.core.utils.FailedJobError):
            returns.append(_lost(self, jobs[i], idx, overrides))
    return returns


def _by_tasks(launcher: BaseSubmititLauncher, params: list[tuple]) -> dict[int, list[int]]:
    """The jobs (their positions in ``params``) by how many Slurm tasks each needs: one per
    device of its ``trainer.devices`` (a count or a list of ids; anything else: 1, which
    Lightning then checks inside the job)."""
    base = OmegaConf.select(launcher.config, "trainer.devices", default=1)
    groups: dict[int, list[int]] = {}
    for i, (overrides, *_) in enumerate(params):
        given = [o.split("=", 1)[1] for o in overrides if o.lstrip("+").startswith("trainer.devices=")]
        devices = given[-1] if given else base
        groups.setdefault(_count(devices), []).append(i)
    return groups


def _count(devices: Any) -> int:
    if OmegaConf.is_list(devices) or isinstance(devices, (list, tuple)):
        return max(1, len(devices))
    text = str(devices).strip()
    if text.startswith("["):
        return max(1, len([d for d in text.strip("[]").split(",") if d.strip()]))
    return int(text) if text.isdigit() and int(text) > 0 else 1


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

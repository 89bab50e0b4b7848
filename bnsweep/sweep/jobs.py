"""The jobs of a sweep (one per point and seed, or per point with sweep.vectorize): each run's
failure recorded rather than raised, a line as each starts and ends, jobs.jsonl (what became of
every job of every invocation), and a job Slurm ended without a result. The checks before the
first job and the report after the last: bnsweep.sweep.callback."""

from __future__ import annotations

import contextlib
import json
import math
import os
import sys
import time
import traceback
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from bnsweep.files import atomic_write
from bnsweep.report import report
from bnsweep.run.record import failed_record, read_record, write_record

JOBS_LOG = "jobs.jsonl"  # one line per job of every invocation: what became of it


class SweepStopped(BaseException):
    """Ends a sweep early (a full disk: every later job would fail too). A BaseException, so
    that Hydra's launchers, which record a job's Exception and run the next job, let it
    through to sweep.py, which reports what finished (``stopped``) and exits."""

    def __init__(self, message: str, sweep_dir: Path) -> None:
        super().__init__(message)
        self.sweep_dir = Path(sweep_dir)


def stopped(e: SweepStopped) -> int:
    """After a sweep stopped early: the report of what finished, where it fits; exit status."""
    with contextlib.suppress(OSError, FileNotFoundError):
        report(e.sweep_dir, quiet=True)
    print(f"error: the sweep stopped early ({e}); runs finished before are intact, and "
          f"resume={e.sweep_dir} continues it", file=sys.stderr)  # fmt: skip
    return 1


# the job this process runs now (what an interruption's line names)
CURRENT: dict[str, Any] = {}


def interrupted_line() -> str:
    """What sweep.py says when a signal stops it: the job, and the command that goes on."""
    from bnsweep.run.interrupts import go_on
    from bnsweep.terminal import readable

    if not CURRENT:
        return "interrupted before the first job; nothing ran"
    of = f" of {CURRENT['total']}" if CURRENT.get("total") else ""
    typed = json.loads(os.environ.get("BNSWEEP_TYPED", "[]"))
    again = go_on("sweep.py", typed, [f"resume={CURRENT['sweep_dir']}"], drop=["hydra.sweep.dir"])
    return (f"interrupted at job {CURRENT['job']}{of} ({readable(CURRENT['name'])}); the runs that "
            f"finished are kept; go on with: {again}")  # fmt: skip


def run_job(cfg: DictConfig) -> float:
    """One job of a sweep: a training run (with sweep.vectorize, all seeds of a point) whose
    failure is recorded, not raised. A refused job (its folder holds another run, or is in use)
    writes nothing into that folder; the sweep lists it at its end. A line says when the job
    starts (with the sweep's ETA) and one how it ended.

    Returns the best validation accuracy (the objective of search sweepers such as Optuna;
    vectorized: the mean over the seeds), NaN for a failed or refused run.
    """
    from hydra.core.hydra_config import HydraConfig

    from bnsweep import terminal
    from bnsweep.config.cli import secondary
    from bnsweep.files import DamagedFile, FolderInUse, is_no_space, remove_unstarted
    from bnsweep.run.folders import RunRefused
    from bnsweep.run.training import USER_ERRORS, no_space_message, run, several_devices
    from bnsweep.sweep.point_process import PointFailed

    vectorize = OmegaConf.select(cfg, "sweep.vectorize", default=False)
    tasks = int(os.environ.get("SLURM_NTASKS") or 1) > 1  # a Slurm job of a task per rank
    if secondary():  # a rank other than 0 of such a job: its shard; rank 0 reports and writes
        return _other_rank(cfg, run)
    if vectorize:
        from bnsweep.sweep.vectorize import run_point as run
    elif several_devices(cfg) and not tasks:  # its ranks: a train.py of its own
        from bnsweep.sweep.point_process import run_processes as run

    hydra_dir = Path(cfg.run_dir)  # the folder Hydra made for this job
    fresh = not hydra_dir.exists() or all(p.suffix == ".log" for p in hydra_dir.iterdir())
    if not vectorize:
        _resumed_folder(cfg)
    else:
        _requeued_resumes(cfg)
    run_dir = Path(cfg.run_dir)
    sweep_dir, name = sweep_folder(run_dir)
    num = HydraConfig.get().job.num if HydraConfig.initialized() else 0
    total, parallel, before = _invocation(sweep_dir)
    CURRENT.update(sweep_dir=sweep_dir, job=num + 1, total=total, name=name)
    print(terminal.job_start(num, total, name, terminal.eta(before, total, parallel)),
          flush=True)  # fmt: skip
    threads = cfg.get("threads") or threads_per_job()
    if threads:
        import torch

        torch.set_num_threads(int(threads))
    started = time.time()
    status, error, value, results = "finished", None, math.nan, []
    try:
        result = run(cfg)
        value = result["val/acc_best"]
        results = result.get("members") or [result]
        skipped = result.get("skipped")  # vectorized; a plain run: its metrics.json is older
        if skipped if skipped is not None else (run_dir / "metrics.json").stat().st_mtime < started:
            status = "skipped"
        elif any(r.get("diverged") for r in results):
            status = "diverged"
    except (RunRefused, FolderInUse, DamagedFile) as e:
        status, error = "refused", str(e)
        print(f"refused: {e}", file=sys.stderr)
    except PointFailed as e:  # train.py said why in its last line (a refusal: RunRefused)
        status, error = "failed", str(e)
        _record_failure(run_dir, cfg, error, "")  # (never over a finished run's record)
    except USER_ERRORS as e:
        status, error = "failed", f"error: {e}"
        _record_failure(run_dir, cfg, error, traceback.format_exc())
        print(error, file=sys.stderr)
    except Exception as e:  # noqa: BLE001 - one job's crash must not end the sweep
        if is_no_space(e):
            message = no_space_message(e, run_dir)
            with contextlib.suppress(OSError):
                _record_failure(run_dir, cfg, f"error: {message}", traceback.format_exc())
            print(f"error: {message}", file=sys.stderr)
            raise SweepStopped(message, sweep_dir) from None
        status, error = "failed", f"{type(e).__name__}: {e}"
        _record_failure(run_dir, cfg, error, traceback.format_exc())
        traceback.print_exc()
    finally:
        if fresh and (hydra_dir != run_dir or status == "refused"):
            remove_unstarted(hydra_dir)  # Hydra's new folder, unused: no stray folder
    seconds = time.time() - started
    _log_job(run_dir, status, error, seconds)
    print(terminal.job_end(num, total, status, seconds, results, error), flush=True)
    return value


def sweep_folder(run_dir: Path) -> tuple[Path, str]:
    """The sweep folder a run folder belongs to, and the run's name in it (a tuning run of
    sweep.tune: ``tune/<folder>``)."""
    from bnsweep.sweep.tune import TUNE_DIR

    if run_dir.parent.name == TUNE_DIR and (run_dir.parent.parent / "multirun.yaml").exists():
        return run_dir.parent.parent, f"{TUNE_DIR}/{run_dir.name}"
    return run_dir.parent, run_dir.name


def _invocation(sweep_dir: Path) -> tuple[int | None, int, list[dict[str, Any]]]:
    """This invocation's job count and parallel jobs (its start line in jobs.jsonl) and the
    jobs it has finished so far."""
    lines = _jobs_log(sweep_dir)
    starts = [i for i, line in enumerate(lines) if "invocation" in line]
    if not starts:
        return None, 1, []
    start = lines[starts[-1]]
    return (
        start.get("jobs"),
        start.get("parallel", 1),
        [j for j in lines[starts[-1] + 1 :] if "run" in j],
    )


def _other_rank(cfg: DictConfig, run: Any) -> float:
    """A task other than 0 of a Slurm job of several (a point on N devices): the same resume
    decisions as task 0, then its shard of the run, once task 0 says the run trains."""
    from bnsweep.run import ranks

    _resumed_folder(cfg)
    if not ranks.rank0_trains(Path(cfg.run_dir)):
        return math.nan
    return run(cfg)["val/acc_best"]


def _requeued_resumes(cfg: DictConfig) -> None:
    """A job Slurm requeued (scontrol requeue, preemption, submitit at a time limit) is the same
    job again: it continues its run from the last checkpoint (resume=true)."""
    if int(os.environ.get("SLURM_RESTART_COUNT") or 0) > 0:
        from omegaconf import open_dict

        with open_dict(cfg):
            cfg.resume = True


def _resumed_folder(cfg: DictConfig) -> None:
    """A requeued or resumed job's run folder: the one holding its config."""
    _requeued_resumes(cfg)
    if cfg.get("resume"):
        _use_existing_folder(cfg)


def _use_existing_folder(cfg: DictConfig) -> None:
    """A resumed sweep runs each job in the folder that holds its config, whatever its name
    (the swept lists may have changed since, and with them the job numbers and names)."""
    from omegaconf import open_dict

    from bnsweep.run.folders import config_snapshot, find_run

    found = find_run(Path(cfg.run_dir).parent, config_snapshot(cfg))
    if found is not None and found != Path(cfg.run_dir):
        with open_dict(cfg):
            cfg.run_dir = str(found)


def _log_job(run_dir: Path, status: str, error: str | None, seconds: float) -> None:
    """A line in the sweep folder's jobs.jsonl (appended: one short write per job, whole even
    when jobs end side by side)."""
    sweep_dir, name = sweep_folder(run_dir)
    entry = {"run": name, "status": status, "error": error, "seconds": round(seconds, 3),
             "at": time.time(), "pid": os.getpid()}  # fmt: skip
    if os.environ.get("SLURM_JOB_ID"):  # the Slurm job (array job_task) that ran it
        array, task = os.environ.get("SLURM_ARRAY_JOB_ID"), os.environ.get("SLURM_ARRAY_TASK_ID")
        entry["slurm_job"] = f"{array}_{task}" if array and task else os.environ["SLURM_JOB_ID"]
        entry["slurm_restarts"] = int(os.environ.get("SLURM_RESTART_COUNT") or 0)
    line = json.dumps(entry)
    with contextlib.suppress(OSError), (sweep_dir / JOBS_LOG).open("a") as f:
        f.write(line + "\n")


def jobs_since(sweep_dir: Path, offset: int) -> list[dict[str, Any]]:
    """The jobs.jsonl entries of jobs written after byte ``offset`` (this invocation's)."""
    return [line for line in _jobs_log(sweep_dir, offset) if "run" in line]


def _jobs_log(sweep_dir: Path, offset: int = 0) -> list[dict[str, Any]]:
    """The lines of a sweep folder's jobs.jsonl from byte ``offset`` on (none without one)."""
    path = Path(sweep_dir) / JOBS_LOG
    if not path.exists():
        return []
    with path.open("rb") as f:
        f.seek(offset)
        return [json.loads(line) for line in f.read().decode().splitlines() if line.strip()]


def threads_per_job() -> int | None:
    """Cores / parallel jobs, when the launcher runs jobs side by side (joblib's n_jobs)."""
    from hydra.core.hydra_config import HydraConfig

    if not HydraConfig.initialized():
        return None
    n_jobs = HydraConfig.get().launcher.get("n_jobs")
    if not n_jobs:
        return None
    cores = os.cpu_count() or 1
    return max(1, cores // (cores if n_jobs < 0 else n_jobs))


def _record_failure(run_dir: Path, cfg: DictConfig, message: str, tb: str) -> None:
    """traceback.txt and a failed metrics.json, never over a finished run's metrics."""
    from bnsweep.run.training import overrides

    _write_failed(run_dir, message, cfg.get("seed"), overrides(), tb)


def record_lost_job(run_dir: Path, message: str, overrides: list[str]) -> None:
    """A job that Slurm ended without a result (bnsweep.sweep.launchers): a failed metrics.json in
    its run folder, never over a finished run's, and its line in jobs.jsonl. The checkpoints it
    saved stay: resume=<sweep folder> continues it."""
    seeds = [o.split("=", 1)[1] for o in overrides if o.startswith("seed=")]
    if _write_failed(run_dir, f"error: {message}", int(seeds[0]) if seeds else None, overrides):
        _log_job(run_dir, "failed", f"error: {message}", 0.0)


def _write_failed(run_dir: Path, message: str, seed: int | None, overrides: list[str],
                  tb: str | None = None) -> bool:  # fmt: skip
    """A failed metrics.json (and traceback.txt, given one) unless the folder holds a finished
    run; whether it was written."""
    with contextlib.suppress(ValueError, OSError):
        if read_record(run_dir).get("status") == "finished":
            return False
    run_dir.mkdir(parents=True, exist_ok=True)
    if tb is not None:
        atomic_write(run_dir / "traceback.txt", tb)
    write_record(run_dir, failed_record(message, seed, overrides))
    return True

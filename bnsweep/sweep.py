"""Sweeps: the jobs (one per point and seed, or per point with sweep.vectorize) and the Hydra
callback around them: checks and lock before the first job, the report and what failed or was
refused after the last (the report itself: bnsweep.report)."""

from __future__ import annotations

import contextlib
import json
import math
import os
import shlex
import sys
import tempfile
import time
import traceback
from pathlib import Path
from typing import Any

from hydra.experimental.callback import Callback
from omegaconf import DictConfig, OmegaConf

from bnsweep.files import atomic_write, write_json
from bnsweep.record import failed_record, read_record, write_record
from bnsweep.report import ReportError, load_runs, report

# ---------------------------------------------------------------------------------------------
# running a sweep

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
    from bnsweep.interrupts import go_on
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
    from bnsweep.files import DamagedFile, FolderInUse, is_no_space, remove_unstarted
    from bnsweep.runs import RunRefused
    from bnsweep.train import USER_ERRORS, no_space_message, run

    vectorize = OmegaConf.select(cfg, "sweep.vectorize", default=False)
    if vectorize:
        from bnsweep.vectorize import run_point as run

    hydra_dir = Path(cfg.run_dir)  # the folder Hydra made for this job
    fresh = not hydra_dir.exists() or all(p.suffix == ".log" for p in hydra_dir.iterdir())
    if int(os.environ.get("SLURM_RESTART_COUNT") or 0) > 0:
        # Slurm requeued this job (scontrol requeue, preemption, submitit at a time limit):
        # the same job again, so it continues its run from the last checkpoint
        from omegaconf import open_dict

        with open_dict(cfg):
            cfg.resume = True
    if cfg.get("resume") and not vectorize:
        _use_existing_folder(cfg)
    run_dir = Path(cfg.run_dir)
    num = HydraConfig.get().job.num if HydraConfig.initialized() else 0
    total, parallel, before = _invocation(run_dir.parent)
    CURRENT.update(sweep_dir=run_dir.parent, job=num + 1, total=total, name=run_dir.name)
    print(terminal.job_start(num, total, run_dir.name, terminal.eta(before, total, parallel)),
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
            raise SweepStopped(message, run_dir.parent) from None
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


def _invocation(sweep_dir: Path) -> tuple[int | None, int, list[dict[str, Any]]]:
    """This invocation's job count and parallel jobs (its start line in jobs.jsonl) and the
    jobs it has finished so far."""
    lines = _jobs_log(sweep_dir)
    starts = [i for i, line in enumerate(lines) if "invocation" in line]
    if not starts:
        return None, 1, []
    start = lines[starts[-1]]
    return start.get("jobs"), start.get("parallel", 1), [j for j in lines[starts[-1] + 1 :] if "run" in j]


def _use_existing_folder(cfg: DictConfig) -> None:
    """A resumed sweep runs each job in the folder that holds its config, whatever its name
    (the swept lists may have changed since, and with them the job numbers and names)."""
    from omegaconf import open_dict

    from bnsweep.runs import config_snapshot, find_run

    found = find_run(Path(cfg.run_dir).parent, config_snapshot(cfg))
    if found is not None and found != Path(cfg.run_dir):
        with open_dict(cfg):
            cfg.run_dir = str(found)


def _log_job(run_dir: Path, status: str, error: str | None, seconds: float) -> None:
    """A line in the sweep folder's jobs.jsonl (appended: one short write per job, whole even
    when jobs end side by side)."""
    entry = {"run": run_dir.name, "status": status, "error": error, "seconds": round(seconds, 3),
             "at": time.time(), "pid": os.getpid()}  # fmt: skip
    if os.environ.get("SLURM_JOB_ID"):  # the Slurm job (array job_task) that ran it
        array, task = os.environ.get("SLURM_ARRAY_JOB_ID"), os.environ.get("SLURM_ARRAY_TASK_ID")
        entry["slurm_job"] = f"{array}_{task}" if array and task else os.environ["SLURM_JOB_ID"]
        entry["slurm_restarts"] = int(os.environ.get("SLURM_RESTART_COUNT") or 0)
    line = json.dumps(entry)
    with contextlib.suppress(OSError), (run_dir.parent / JOBS_LOG).open("a") as f:
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
    from bnsweep.train import overrides

    _write_failed(run_dir, message, cfg.get("seed"), overrides(), tb)


def record_lost_job(run_dir: Path, message: str, overrides: list[str]) -> None:
    """A job that Slurm ended without a result (bnsweep.launchers): a failed metrics.json in
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


def preflight(cfg: DictConfig, sweep_dir: Path, lock_holder: list) -> None:
    """Before any job: the values every job shares, the data, the output folder, its lock, and
    on resume the sweep it holds. On a problem, one line and exit status 2, and the folder is
    left as it was (no folder is left behind where there was none)."""
    from bnsweep.config import ConfigError, check_vectorize, validate
    from bnsweep.files import FolderInUse, FolderLock, is_no_space

    existed = sweep_dir.exists()
    try:
        validate(cfg)  # light: a bad value is refused before Lightning is imported
        if OmegaConf.select(cfg, "sweep.vectorize", default=False):
            check_vectorize(cfg)
        _check_report(cfg)
        if not cfg.data.get("download", True):
            _check_data(cfg)
        sweep_dir.mkdir(parents=True, exist_ok=True)
        lock_holder.append(FolderLock(sweep_dir, "sweep folder"))
        _check_resume(cfg, sweep_dir)
        with tempfile.NamedTemporaryFile(dir=sweep_dir) as f:
            f.write(b"\0" * 65536)  # room for a run's first files at least
            f.flush()
            os.fsync(f.fileno())
    except (ConfigError, FolderInUse) as e:
        _abort(f"error: {e}", sweep_dir, existed)
    except OSError as e:
        reason = "no space left on its device" if is_no_space(e) else (e.strerror or str(e))
        _abort(f"error: cannot write the sweep folder {sweep_dir}: {reason}", sweep_dir, existed)


SWEEP_FILE = "sweep.json"  # the sweep's settings as first started: what a resume must keep


def sweep_settings(cfg: DictConfig) -> dict[str, dict[str, Any]]:
    """key -> {"swept": bool, "value": text} for every setting the command line or the study
    preset gives, except those that do not change what runs compute (bnsweep.runs)."""
    from bnsweep.cli import is_sweep
    from bnsweep.keys import SEED, computes

    given: dict[str, str] = {}
    hydra = cfg.hydra
    for key, value in (OmegaConf.select(cfg, "hydra.sweeper.params", default=None) or {}).items():
        given[str(key)] = str(value)
    for text in hydra.overrides.task:
        if "=" in text:
            key, value = text.split("=", 1)
            given[key.lstrip("+~")] = value
    given["study"] = str(hydra.runtime.choices.get("study", "custom"))
    return {k: {"swept": is_sweep(f"{k}={v}"), "value": v} for k, v in sorted(given.items())
            if k == "study" or (k != SEED and computes(k))}  # fmt: skip


def _check_report(cfg: DictConfig) -> None:
    """report.baseline names a point this sweep has (as far as its swept lists are plain)."""
    from bnsweep.config import ConfigError
    from bnsweep.report.compare import ReportError, check_baseline

    spec = OmegaConf.select(cfg, "report.baseline", default=None)
    if spec is None:
        return
    swept = {}
    for key, setting in sweep_settings(cfg).items():
        if setting["swept"]:
            text = setting["value"]
            plain = "(" not in text and "[" not in text
            swept[key] = [v.strip() for v in text.split(",")] if plain else []
    try:
        check_baseline(str(spec), swept)
    except ReportError as e:
        raise ConfigError(str(e)) from None


def _check_resume(cfg: DictConfig, sweep_dir: Path) -> None:
    """A sweep folder is continued only with resume=, and only with the sweep it holds: the
    values of a swept key may change (runs are matched by their config), nothing else may."""
    from bnsweep.config import ConfigError

    holds = (sweep_dir / "command.txt").exists()
    now = sweep_settings(cfg)
    saved = sweep_dir / SWEEP_FILE
    if holds and not cfg.get("resume"):
        raise ConfigError(
            f"hydra.sweep.dir={sweep_dir} already holds a sweep; resume={sweep_dir} continues "
            "it, or choose another folder"
        )
    if holds and saved.exists():
        before = json.loads(saved.read_text())
        changed = [k for k in dict.fromkeys([*before, *now])
                   if k not in before or k not in now
                   or not (before[k]["swept"] or now[k]["swept"])
                   and before[k]["value"] != now[k]["value"]]  # fmt: skip
        if changed:
            shown = ", ".join(
                f"{k}: {before.get(k, {}).get('value', '(unset)')} → "
                f"{now.get(k, {}).get('value', '(unset)')}"
                for k in changed
            )
            raise ConfigError(
                f"resume={sweep_dir} would change the sweep it holds ({shown}); only the values "
                "of a swept key may change: start a new sweep for other settings"
            )
    elif not holds:
        write_json(saved, now)


def _check_data(cfg: DictConfig) -> None:
    """The dataset files exist and verify (data.download=false): else ConfigError's one line."""
    from bnsweep.config import ConfigError
    from bnsweep.datasets import DATASETS, DataError, locate

    if cfg.data.get("name") in DATASETS:
        root = cfg.data.get("root")
        try:
            locate(DATASETS[cfg.data.name], Path(root) if root else None, download=False)
        except DataError as e:
            raise ConfigError(str(e)) from e


def _abort(message: str, sweep_dir: Path, existed: bool) -> None:
    if not existed and sweep_dir.is_dir() and not any(sweep_dir.iterdir()):
        sweep_dir.rmdir()
    print(message, file=sys.stderr)
    sys.exit(2)


class SweepCallback(Callback):
    """Checks and locks the sweep folder and records the command line at the start of a
    sweep; writes the report and names what failed or was refused at its end (exit status 1
    then)."""

    def __init__(self) -> None:
        self._lock: list = []  # the sweep folder's lock, held until the process ends
        self._jobs_offset = 0

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        try:
            self._start(config)
        except Exception:  # Hydra would turn it into a warning and run the jobs unchecked
            traceback.print_exc()
            raise SystemExit(1) from None

    def _start(self, config: DictConfig) -> None:
        if "submitit" in str(OmegaConf.select(config, "hydra.launcher._target_", default="")):
            from bnsweep.launchers import install

            install()  # a job Slurm ends without a result: a failed run, not the sweep's end
        if OmegaConf.select(config, "sweep.vectorize", default=False):
            from bnsweep.points import install as group_points

            group_points(config)  # points differing only in init or BN estimator: one job
        sweep_dir = Path(config.hydra.sweep.dir)
        preflight(config, sweep_dir, self._lock)
        jobs = sweep_dir / JOBS_LOG
        self._jobs_offset = jobs.stat().st_size if jobs.exists() else 0
        start = {"invocation": time.time(), "jobs": job_count(config), "parallel": _parallel(config)}
        with jobs.open("a") as f:
            f.write(json.dumps(start) + "\n")
        typed = _typed_command(config)
        with (sweep_dir / "command.txt").open("a") as f:  # a resume adds its line
            f.write(shlex.join([Path(sys.argv[0]).name, *typed]) + "\n")

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        _release_workers(config)
        sweep_dir = Path(config.hydra.sweep.dir)
        end_of_sweep(sweep_dir, jobs_since(sweep_dir, self._jobs_offset))


def _release_workers(config: DictConfig) -> None:
    """After a joblib sweep, end its idle worker processes at once: every job has returned and
    flushed its files, and an orderly exit of a process holding torch and Lightning took ~2 s
    here, which the sweep's process waited for before it could exit."""
    if "joblib" not in str(OmegaConf.select(config, "hydra.launcher._target_", default="")):
        return
    from joblib.externals.loky import get_reusable_executor

    get_reusable_executor(reuse=True).shutdown(wait=False, kill_workers=True)


def sweep_overrides(config: DictConfig) -> list[str]:
    """The overrides Hydra's basic sweeper expands: the study preset's sweeper params, then
    the command line's."""
    params = OmegaConf.select(config, "hydra.sweeper.params", default=None) or {}
    return [f"{k}={v}" for k, v in params.items()] + list(config.hydra.overrides.task)


def job_count(config: DictConfig) -> int | None:
    """How many jobs the sweep launches: the basic sweeper's product of the swept lists, an
    Optuna study's trials; None for another sweeper."""
    target = str(OmegaConf.select(config, "hydra.sweeper._target_", default=""))
    if target.endswith("BasicSweeper"):
        from hydra._internal.core_plugins.basic_sweeper import BasicSweeper
        from hydra.core.override_parser.overrides_parser import OverridesParser

        parsed = OverridesParser.create().parse_overrides(sweep_overrides(config))
        jobs = [j for batch in BasicSweeper.split_arguments(parsed, None) for j in batch]
        if OmegaConf.select(config, "sweep.vectorize", default=False) and len(jobs) > 1:
            from hydra.core.global_hydra import GlobalHydra

            from bnsweep.points import group_jobs

            jobs = group_jobs(config, jobs, GlobalHydra.instance().config_loader())
        return len(jobs)
    trials = OmegaConf.select(config, "hydra.sweeper.n_trials", default=None)
    return int(trials) if trials else None


def _parallel(config: DictConfig) -> int:
    n_jobs = OmegaConf.select(config, "hydra.launcher.n_jobs", default=None)
    return max(1, int(n_jobs)) if n_jobs and n_jobs > 0 else (os.cpu_count() or 1 if n_jobs else 1)


def _typed_command(config: DictConfig) -> list[str]:
    """What the user typed, before the seed fan-out (sweep.py records it in BNSWEEP_TYPED)."""
    typed = os.environ.get("BNSWEEP_TYPED")
    return json.loads(typed) if typed else sys.argv[1:]


def end_of_sweep(sweep_dir: Path, jobs: list[dict[str, Any]]) -> None:
    """The report of the sweep folder, then one line per kind of trouble; exit status 1 when a
    run failed or a job was refused."""
    runs = load_runs(sweep_dir)
    bad_report = None
    if runs:
        try:
            report(sweep_dir)
        except OSError as e:
            print(f"error: the report could not be written in {sweep_dir}: {e.strerror or e}",
                  file=sys.stderr)  # fmt: skip
        except ReportError as e:  # what the runs allow to compare: known only now
            bad_report = (f"error: {e}; the runs are intact: python -m bnsweep.report {sweep_dir} "
                          "--baseline KEY=VALUE writes the report", 2)  # fmt: skip
        except Exception as e:  # noqa: BLE001 - a report that cannot be written is said, not lost
            bad_report = (f"error: the report of {sweep_dir} could not be written ({type(e).__name__}: "
                          f"{' '.join(str(e).split())}); the runs are intact", 1)  # fmt: skip
    print(f"sweep folder  {sweep_dir}")
    diverged = [r.path.name for r in runs if r.diverged]
    if diverged:
        print(f"diverged: {len(diverged)} run(s), counted but left out of the means: "
              + " ".join(diverged))  # fmt: skip
    refused = [j for j in jobs if j["status"] == "refused"]
    failed = [r.path.name for r in runs if r.status == "failed"]
    if refused:
        print(f"error: {len(refused)} job(s) refused, their folders left as they were: "
              + "; ".join(j["error"] for j in refused), file=sys.stderr)  # fmt: skip
    if failed:
        print(f"error: {len(failed)} run(s) failed: {' '.join(failed)}", file=sys.stderr)
    if bad_report:
        print(bad_report[0], file=sys.stderr)
        raise SystemExit(bad_report[1])
    if refused or failed:
        raise SystemExit(1)



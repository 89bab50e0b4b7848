"""The Hydra callback around a sweep's jobs (bnsweep.sweep.jobs): before the first job the values
every job shares, the data, the sweep folder, its lock and, on resume, the sweep it holds (one
line and exit status 2 on a problem); after the last, the report (bnsweep.report) and one line
per kind of trouble (exit status 1)."""

from __future__ import annotations

import json
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

from bnsweep.config.keys import grid_sweeper
from bnsweep.files import write_json
from bnsweep.report import report
from bnsweep.report.compare import ReportError
from bnsweep.report.runs import load_runs
from bnsweep.sweep.jobs import JOBS_LOG, jobs_since


def preflight(cfg: DictConfig, sweep_dir: Path, lock_holder: list) -> None:
    """Before any job: the values every job shares, the data, the output folder, its lock, and
    on resume the sweep it holds. On a problem, one line and exit status 2, and the folder is
    left as it was (no folder is left behind where there was none)."""
    from bnsweep.config.checks import ConfigError, check_vectorize, validate
    from bnsweep.files import FolderInUse, FolderLock, is_no_space

    existed = sweep_dir.exists()
    try:
        validate(cfg)  # light: a bad value is refused before Lightning is imported
        from bnsweep.sweep import tune

        tune.check(cfg, sweep_overrides(cfg))
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
    preset gives, except those that do not change what runs compute (bnsweep.run.folders)."""
    from bnsweep.config.cli import is_sweep
    from bnsweep.config.keys import SEED, computes

    given: dict[str, str] = {}
    hydra = cfg.hydra
    for key, value in (OmegaConf.select(cfg, "hydra.sweeper.params", default=None) or {}).items():
        given[str(key)] = str(value)
    for text in hydra.overrides.task:
        if "=" in text:
            key, value = text.split("=", 1)
            given[key.lstrip("+~")] = value
    given["study"] = str(hydra.runtime.choices.get("study", "custom"))
    settings = {k: {"swept": is_sweep(f"{k}={v}"), "value": v} for k, v in sorted(given.items())
                if k == "study" or (k != SEED and computes(k))}  # fmt: skip
    tune = OmegaConf.select(cfg, "sweep.tune", default=None)
    if tune is not None and tune.get("key"):  # what chose each point's value: kept on a resume
        text = json.dumps(OmegaConf.to_container(tune, resolve=True), sort_keys=True)
        settings["sweep.tune"] = {"swept": False, "value": text}
    return settings


def _check_report(cfg: DictConfig) -> None:
    """report.baseline names a point this sweep has (as far as its swept lists are plain)."""
    from bnsweep.config.checks import ConfigError
    from bnsweep.report.compare import ReportError, check_baseline

    spec = OmegaConf.select(cfg, "report.baseline", default=None)
    if spec is None:
        return
    from bnsweep.config.cli import swept_values

    swept = {key: swept_values(f"{key}={setting['value']}")
             for key, setting in sweep_settings(cfg).items() if setting["swept"]}  # fmt: skip
    try:
        check_baseline(str(spec), swept)
    except ReportError as e:
        raise ConfigError(str(e)) from None


def _check_resume(cfg: DictConfig, sweep_dir: Path) -> None:
    """A sweep folder is continued only with resume=, and only with the sweep it holds: the
    values of a swept key may change (runs are matched by their config), nothing else may."""
    from bnsweep.config.checks import ConfigError

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
    from bnsweep.config.checks import ConfigError
    from bnsweep.data.catalog import DATASETS, DataError, locate

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
        self._lock: list = []  # the sweep folder's lock, held until the sweep or its process ends
        self._jobs_offset = 0

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        try:
            self._start(config)
        except SystemExit:  # refused: the folder is free again for the next command
            self._release()
            raise
        except Exception:  # Hydra would turn it into a warning and run the jobs unchecked
            traceback.print_exc()
            self._release()
            raise SystemExit(1) from None

    def _release(self) -> None:
        """The sweep folder's lock, freed where the sweep ends but its process goes on (a
        notebook, a test); a process that ends frees it anyway."""
        for lock in self._lock:
            lock.release()
        self._lock.clear()

    def _start(self, config: DictConfig) -> None:
        sweep_dir = Path(config.hydra.sweep.dir)
        preflight(config, sweep_dir, self._lock)
        jobs = sweep_dir / JOBS_LOG
        self._jobs_offset = jobs.stat().st_size if jobs.exists() else 0
        start = {
            "invocation": time.time(),
            "jobs": job_count(config),
            "parallel": _parallel(config),
        }
        with jobs.open("a") as f:
            f.write(json.dumps(start) + "\n")
        typed = _typed_command(config)
        with (sweep_dir / "command.txt").open("a") as f:  # a resume adds its line
            f.write(shlex.join([Path(sys.argv[0]).name, *typed]) + "\n")
        if OmegaConf.select(config, "logger.mlflow", default=None) is not None:
            from bnsweep.run.tracking import start_sweep

            start_sweep(config, sweep_dir)  # the parent run of the runs

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        try:
            _release_workers(config)
            sweep_dir = Path(config.hydra.sweep.dir)
            end_of_sweep(sweep_dir, jobs_since(sweep_dir, self._jobs_offset))
        finally:
            self._release()


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
    if grid_sweeper(target):
        from hydra._internal.core_plugins.basic_sweeper import BasicSweeper
        from hydra.core.override_parser.overrides_parser import OverridesParser

        parsed = OverridesParser.create().parse_overrides(sweep_overrides(config))
        jobs = [j for batch in BasicSweeper.split_arguments(parsed, None) for j in batch]
        if OmegaConf.select(config, "sweep.tune.key", default=None):
            from bnsweep.sweep.tune import job_count as tuned

            points = {tuple(o for o in j if not o.startswith("seed=")) for j in jobs}
            return tuned(config, len(points), len(jobs) // max(len(points), 1))
        if OmegaConf.select(config, "sweep.vectorize", default=False) and len(jobs) > 1:
            from hydra.core.global_hydra import GlobalHydra

            from bnsweep.sweep.points import group_jobs

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
    untuned = _untuned(sweep_dir)
    if untuned:
        print(untuned, file=sys.stderr)
    if (sweep_dir / "mlflow.json").exists():  # the report as the parent run's artifacts
        from bnsweep.run.tracking import end_sweep

        end_sweep(sweep_dir, ok=not (refused or failed or untuned or bad_report))
    if bad_report:
        print(bad_report[0], file=sys.stderr)
        raise SystemExit(bad_report[1])
    if refused or failed or untuned:
        raise SystemExit(1)


def _untuned(sweep_dir: Path) -> str | None:
    """The line naming a tuned sweep's points none of whose values scored (sweep.tune)."""
    from bnsweep.report.tuning import TUNE_DIR, TUNING, read_tuning

    tuning = read_tuning(sweep_dir)
    points = [p["point"] if p["point"] != "all" else "the sweep's one point"
              for p in (tuning or {}).get("points", []) if p["chosen"] is None]  # fmt: skip
    if not points:
        return None
    return (f"error: sweep.tune: no value of {tuning['key']} scored for {'; '.join(points)} (every "
            f"one diverged or failed): its compared runs were not run; scores in "
            f"{Path(sweep_dir) / TUNE_DIR / TUNING}")  # fmt: skip

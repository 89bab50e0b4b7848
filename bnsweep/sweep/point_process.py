"""A sweep point that trains on several devices (``trainer.devices=N``): its job runs train.py
for the point, in the job's run folder, and Lightning starts that run's other ranks as it does
for any run (its DDP launcher starts the running script again for each rank, which inside a
sweep would be the whole sweep). The job waits for it and reads its metrics.json."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Any

from omegaconf import DictConfig

from bnsweep.run.folders import RunRefused, config_snapshot, saved_config
from bnsweep.run.record import read_record


class PointFailed(RuntimeError):
    """The point's train.py ended without a result; the message is its last line."""


def command(cfg: DictConfig) -> list[str]:
    """train.py with the sweep's config, this job's overrides and folder, in run mode."""
    from hydra.core.hydra_config import HydraConfig

    hc = HydraConfig.get()
    dirs = [s.path.removeprefix("file://") for s in hc.runtime.config_sources
            if s.provider == "command-line" and s.schema == "file"]  # fmt: skip
    args = [f"--config-dir={d}" for d in dirs]
    resume = ["resume=true"] if cfg.get("resume") else []
    return [sys.executable, str(train_script()),
            f"--config-name={hc.job.config_name}", *args, *hc.overrides.task, *resume,
            "hydra.mode=RUN", f"hydra.run.dir={cfg.run_dir}", "~hydra.callbacks.report"]  # fmt: skip


def train_script() -> Path:
    """train.py beside the running sweep.py (the project's top level)."""
    beside = Path(sys.argv[0]).resolve().with_name("train.py")
    return beside if beside.exists() else Path(__file__).resolve().parents[2] / "train.py"


def run_processes(cfg: DictConfig) -> dict[str, Any]:
    """Train the point with its ranks; its record (metrics.json), or PointFailed with the line
    train.py ended with; RunRefused where train.py refused a folder another run holds (as
    ``claim`` refuses it in one process)."""
    # the point's ranks are local processes of their own: not tasks of a Slurm allocation the
    # sweep may run in (Lightning would take the allocation's task count for its world)
    env = {k: v for k, v in os.environ.items() if not k.startswith("SLURM_")}
    run_dir = Path(cfg.run_dir)
    held = saved_config(run_dir)  # a run claimed the folder before this job
    proc = subprocess.run(command(cfg), capture_output=True, text=True, env=env)
    if proc.returncode != 0:
        lines = [ln for ln in proc.stderr.splitlines() if ln.strip()]
        line = lines[-1] if lines else f"train.py exited with {proc.returncode}"
        if held is not None and (not cfg.get("resume") or held != config_snapshot(cfg)):
            # what claim() refuses: the job records nothing in that run's folder
            raise RunRefused(line.removeprefix("error: "))
        sys.stderr.write(proc.stderr)
        raise PointFailed(line)
    return read_record(Path(cfg.run_dir))

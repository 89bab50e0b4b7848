"""MLflow beside TensorBoard (``logger=mlflow``, ``logger=tensorboard_mlflow``): a sweep is one
parent run in its study's experiment, every run a child run of it, tagged with its point, seed
and status, its resolved config as parameters and its curves and finals as metrics.

The store: ``logger.mlflow.tracking_uri``, else ``$MLFLOW_TRACKING_URI``, else a SQLite file
``outputs/mlflow.db`` under the folder the command runs in, the artifacts beside it in
``outputs/mlartifacts/``. A sweep folder's ``mlflow.json`` and a run folder's name the MLflow
runs they made: a resumed, rerun or requeued run logs into its child run again, never a new one.
mlflow is an optional extra (``pip install -e ".[mlflow]"``), imported only when asked for.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from bnsweep.files import atomic_write

INSTALL = 'pip install -e ".[mlflow]"'
SWEEP_FILE = "mlflow.json"  # in a sweep folder: the store, the experiment and the parent run
RUN_FILE = "mlflow.json"  # in a run folder: the store and the child run
FINALS = ("val/acc", "val/acc_best", "val/loss", "test/acc", "test/loss", "train/acc", "train/loss")


def default_uri() -> str:
    """$MLFLOW_TRACKING_URI, else outputs/mlflow.db under the current folder."""
    return (
        os.environ.get("MLFLOW_TRACKING_URI")
        or f"sqlite:///{Path('outputs').absolute() / 'mlflow.db'}"
    )


def client_for(uri: str) -> Any:
    # a server that stops answering mid-run: a few short retries, not MLflow's minutes of them
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "2")
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", "20")
    from mlflow.tracking import MlflowClient

    return MlflowClient(tracking_uri=uri)


def experiment_of(client: Any, name: str, uri: str) -> str:
    """The id of the experiment ``name``, made if new; a SQLite store keeps its artifacts beside
    its file (mlartifacts/), a server where it chooses."""
    found = client.get_experiment_by_name(name)
    if found is not None:
        return found.experiment_id
    location = None
    if uri.startswith("sqlite:///"):
        location = (Path(uri.removeprefix("sqlite:///")).parent / "mlartifacts" / name).as_uri()
    return client.create_experiment(name, artifact_location=location)


def batches(items: list, n: int) -> list[list]:
    return [items[i : i + n] for i in range(0, len(items), n)]


# ---------------------------------------------------------------------------------------------
# a sweep: its parent run


def start_sweep(cfg: Any, sweep_dir: Path) -> None:
    """The sweep's parent run (made, or found again from the folder's mlflow.json on a resume),
    with the sweep's overrides as parameters; its store, experiment and id in mlflow.json."""
    from omegaconf import OmegaConf

    node = OmegaConf.select(cfg, "logger.mlflow", default=None)
    if node is None:
        return
    saved = Path(sweep_dir) / SWEEP_FILE
    if saved.exists():
        info = json.loads(saved.read_text())
        client_for(info["tracking_uri"]).update_run(info["parent_run_id"], status="RUNNING")
        return
    uri = node.get("tracking_uri") or default_uri()
    study = str(OmegaConf.select(cfg, "hydra.runtime.choices.study", default="custom"))
    name = node.get("experiment") or study
    client = client_for(uri)
    experiment = experiment_of(client, name, uri)
    run = client.create_run(experiment, run_name=Path(sweep_dir).name,
                            tags={"bnsweep.kind": "sweep", "bnsweep.sweep_dir": str(Path(sweep_dir).absolute()),
                                  "study": study})  # fmt: skip
    from mlflow.entities import Param

    overrides = [o for o in cfg.hydra.overrides.task if "=" in o]
    params = [Param(k[:250], v[:6000]) for k, v in (o.split("=", 1) for o in overrides)]
    for chunk in batches(params, 100):
        client.log_batch(run.info.run_id, params=chunk)
    atomic_write(saved, json.dumps({"tracking_uri": uri, "experiment_id": experiment,
                                    "parent_run_id": run.info.run_id}, indent=2))  # fmt: skip


def end_sweep(sweep_dir: Path, ok: bool) -> None:
    """The report (summary.md, CSVs, PNGs, tune/tuning.json) as the parent run's artifacts; the
    parent finished, or failed when a run failed or a job was refused."""
    saved = Path(sweep_dir) / SWEEP_FILE
    if not saved.exists():
        return
    info = json.loads(saved.read_text())
    client = client_for(info["tracking_uri"])
    run_id = info["parent_run_id"]
    for f in sorted(Path(sweep_dir).iterdir()):
        if f.is_file() and f.suffix in (".md", ".csv", ".png") or f.name == "command.txt":
            client.log_artifact(run_id, str(f))
    tuning = Path(sweep_dir) / "tune" / "tuning.json"
    if tuning.exists():
        client.log_artifact(run_id, str(tuning), artifact_path="tune")
    client.set_terminated(run_id, status="FINISHED" if ok else "FAILED")


def sweep_of(run_dir: Path) -> dict[str, Any] | None:
    """The parent run's mlflow.json of the sweep folder holding ``run_dir`` (a tuning run's
    too: tune/ is inside it); None for a run of train.py."""
    for folder in (run_dir.parent, run_dir.parent.parent):
        f = folder / SWEEP_FILE
        if f.is_file():
            return json.loads(f.read_text())
    return None


def point_of(overrides: list[str]) -> str:
    """A run's point: its overrides that tell sweep points apart (not the seed, nor where files
    go or how it is launched, nor those its sweep fixed for every point: Hydra's exclude_keys)."""
    from hydra.core.hydra_config import HydraConfig

    from bnsweep.config.keys import defines_a_point

    fixed: set[str] = set()
    if HydraConfig.initialized():
        fixed = set(HydraConfig.get().job.config.override_dirname.exclude_keys)
    keys = [(o.split("=", 1)[0].lstrip("+~"), o) for o in overrides if "=" in o]
    return ",".join(o for k, o in keys if defines_a_point(k) and k not in fixed) or "all"

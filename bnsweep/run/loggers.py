"""A run's loggers (conf/logger/): TensorBoard event files and a CSV table, as Lightning
loggers, written so that a resumed run keeps everything the interrupted one logged.

Lightning's own CSVLogger, resumed into a folder whose metrics.csv has other columns than the
resumed part logs, rewrote the file with the new columns only: the earlier history was lost.
Its TensorBoardLogger needs torch.utils.tensorboard (a tenth of a second of every start-up),
writes an HPARAMS experiment into every run (TensorBoard then takes one run's keys for the
whole sweep) and an ``epoch`` scalar that holds Lightning's integer epoch counter.
"""

from __future__ import annotations

import csv
import io
import json
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from pytorch_lightning.loggers.logger import Logger

from bnsweep.config.values import flat
from bnsweep.files import atomic_write
from bnsweep.run.tensorboard import EventWriter, session_summaries
from bnsweep.run.tracking import (
    FINALS,
    RUN_FILE,
    batches,
    client_for,
    default_uri,
    experiment_of,
    point_of,
    sweep_of,
)

# Lightning adds its integer epoch counter to every logged dict: 1 at step 150 of a run of
# 0.17 epochs; the history's val_epoch / train_epoch are the fractional epochs
DROPPED = ("epoch",)


def _number(value: Any) -> float:
    return float(value.item()) if hasattr(value, "item") else float(value)


class _FolderLogger(Logger):
    """A logger writing into one folder, ``save_dir``, with no name or version subfolders."""

    _name = ""

    def __init__(self, save_dir: str | Path) -> None:
        super().__init__()
        self._save_dir = Path(save_dir)

    @property
    def name(self) -> str:
        return self._name

    @property
    def version(self) -> str:
        return ""

    @property
    def save_dir(self) -> str:
        return str(self._save_dir)

    @property
    def log_dir(self) -> str:
        return str(self._save_dir)


class TensorBoard(_FolderLogger):
    """Event files in ``save_dir``: the scalars logged, the histograms of the BN dashboards
    (``experiment.add_histogram``) and, from ``log_hyperparams``, the run's HPARAMS session."""

    def __init__(self, save_dir: str | Path, flush_secs: int = 120) -> None:
        super().__init__(save_dir)
        self._flush_secs = flush_secs
        self._writer: EventWriter | None = None

    @property
    def experiment(self) -> EventWriter:
        if self._writer is None:
            self._writer = EventWriter(self._save_dir, flush_secs=self._flush_secs)
        return self._writer

    def log_metrics(self, metrics: Mapping[str, Any], step: int | None = None) -> None:
        for key, value in metrics.items():
            if key not in DROPPED:
                self.experiment.add_scalar(key, _number(value), step or 0)

    def log_hyperparams(self, params: Mapping[str, Any], *args: Any, **kwargs: Any) -> None:
        """The run's HPARAMS session (Lightning's call at the start of fit passes no params)."""
        if params:
            for summary in session_summaries(dict(params)):
                self.experiment.add_summary(summary)

    def save(self) -> None:
        if self._writer is not None:
            self._writer.flush()

    def finalize(self, status: str) -> None:
        self.save()  # Lightning finalizes after fit and after test; the run writes on after both

    def close(self) -> None:
        if self._writer is not None:
            self._writer.close()
            self._writer = None


class CSV(_FolderLogger):
    """``save_dir/metrics.csv``: one row per logging call, the columns the union of the keys
    logged; a resumed run's rows are appended to the file's, under the union of both headers.
    Written whole (atomically) at each save. ``log_hyperparams`` writes ``hparams.yaml``."""

    _name = "csv"

    def __init__(self, save_dir: str | Path) -> None:
        super().__init__(save_dir)
        self._rows: list[dict[str, Any]] | None = None  # the file's rows, then this run's
        self._keys: dict[str, None] = {}

    @property
    def experiment(self) -> CSV:
        return self

    @property
    def path(self) -> Path:
        return self._save_dir / "metrics.csv"

    def _loaded(self) -> list[dict[str, Any]]:
        if self._rows is None:
            self._rows = []
            if self.path.exists():
                with self.path.open(newline="") as f:
                    reader = csv.DictReader(f)
                    self._keys.update(dict.fromkeys(reader.fieldnames or []))
                    self._rows = list(reader)
        return self._rows

    def log_metrics(self, metrics: Mapping[str, Any], step: int | None = None) -> None:
        row = {"step": step if step is not None else ""}
        row.update({k: _number(v) for k, v in metrics.items() if k not in DROPPED})
        self._loaded().append(row)
        self._keys.update(dict.fromkeys(row))

    def log_hyperparams(self, params: Mapping[str, Any], *args: Any, **kwargs: Any) -> None:
        if params:
            from omegaconf import OmegaConf

            self._save_dir.mkdir(parents=True, exist_ok=True)
            atomic_write(self._save_dir / "hparams.yaml", OmegaConf.to_yaml(dict(params)))

    def save(self) -> None:
        rows = self._loaded()
        if not rows:
            return
        out = io.StringIO(newline="")
        writer = csv.DictWriter(out, fieldnames=list(self._keys), restval="")
        writer.writeheader()
        writer.writerows(rows)
        self._save_dir.mkdir(parents=True, exist_ok=True)
        atomic_write(self.path, out.getvalue())

    def finalize(self, status: str) -> None:
        self.save()


# a run's child run in MLflow (bnsweep.run.tracking: the store, the sweep's parent run)
class MLflow(Logger):
    """A run's MLflow run: the curves as logged, then (``log_record``) the resolved config as
    parameters, the finals of metrics.json as metrics and its status as a tag."""

    def __init__(self, run_dir: str | Path, tracking_uri: str | None = None,
                 experiment: str | None = None, checkpoints: bool = False) -> None:  # fmt: skip
        super().__init__()
        self.run_dir = Path(run_dir)
        sweep = sweep_of(self.run_dir)
        self.uri = (sweep or {}).get("tracking_uri") or tracking_uri or default_uri()
        self.parent = (sweep or {}).get("parent_run_id")
        self.experiment_id = (sweep or {}).get("experiment_id")
        self.experiment_name = experiment or "train"
        self.checkpoints = checkpoints
        self._client: Any = None
        self._run_id: str | None = None
        self._pending: list[Any] = []

    @property
    def name(self) -> str:
        return "mlflow"

    @property
    def version(self) -> str:
        return self.run_id

    @property
    def experiment(self) -> Any:
        if self._client is None:
            self._client = client_for(self.uri)
        return self._client

    @property
    def run_id(self) -> str:
        """The run's MLflow run: the one its folder names (a resume), else a new one."""
        if self._run_id is not None:
            return self._run_id
        client = self.experiment
        saved = self.run_dir / RUN_FILE
        if saved.exists():
            info = json.loads(saved.read_text())
            if info.get("tracking_uri") == self.uri:
                self._run_id = info["run_id"]
                client.update_run(self._run_id, status="RUNNING")
                client.set_tag(self._run_id, "status", "running")
                return self._run_id
        experiment = self.experiment_id or experiment_of(client, self.experiment_name, self.uri)
        tags = {"status": "running", "bnsweep.run_dir": str(self.run_dir.absolute()),
                "bnsweep.kind": "run", **self._identity()}  # fmt: skip
        if self.parent:
            tags["mlflow.parentRunId"] = self.parent
        run = client.create_run(experiment, run_name=self.run_dir.name, tags=tags)
        self._run_id = run.info.run_id
        atomic_write(saved, json.dumps({"tracking_uri": self.uri, "run_id": self._run_id}))
        return self._run_id

    def _identity(self) -> dict[str, str]:
        """point and seed tags from the job's overrides (a vectorized job's members: set from
        their records at the end)."""
        from hydra.core.hydra_config import HydraConfig

        overrides = list(HydraConfig.get().overrides.task) if HydraConfig.initialized() else []
        if any(o.startswith("sweep.stack=") for o in overrides):
            return {}
        seed = next((o.split("=", 1)[1] for o in overrides if o.startswith("seed=")), None)
        return {"point": point_of(overrides), **({"seed": seed} if seed is not None else {})}

    def log_metrics(self, metrics: Mapping[str, Any], step: int | None = None) -> None:
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        for key, value in metrics.items():
            if key == "epoch":
                continue
            v = float(value.item()) if hasattr(value, "item") else float(value)
            self._pending.append(Metric(key, v, now, step or 0))
        if len(self._pending) >= 500:
            self.save()

    def log_hyperparams(self, params: Any, *args: Any, **kwargs: Any) -> None:
        """Lightning's call at the start passes none; the config goes in with ``log_record``."""

    def save(self) -> None:
        """The metrics logged since the last save; the MLflow run made at the first (Lightning
        saves every logger as fit starts: a run that fails at once is shown failed)."""
        pending, self._pending = self._pending, []
        run_id = self.run_id
        for chunk in batches(pending, 1000):
            self.experiment.log_batch(run_id, metrics=chunk)

    def log_record(self, record: Mapping[str, Any]) -> None:
        """The run's end: its resolved config as parameters (run_config.json, flattened), the
        finals of its record as metrics, its status (finished or diverged) and seed as tags,
        its checkpoints as artifacts if asked; the MLflow run finished."""
        from mlflow.entities import Metric, Param, RunTag

        self.save()
        client, run_id = self.experiment, self.run_id
        config_file = self.run_dir / "run_config.json"
        config = json.loads(config_file.read_text()) if config_file.exists() else {}
        logged = client.get_run(run_id).data.params
        values = {**record.get("choices", {}), **flat(config)}  # model=lenet, then the leaves
        params = [Param(k[:250], str(v)[:6000]) for k, v in values.items()
                  if k[:250] not in logged]  # fmt: skip
        for chunk in batches(params, 100):
            client.log_batch(run_id, params=chunk)
        now, step = int(time.time() * 1000), int(record.get("steps") or 0)
        finals = [Metric(f"final/{k}", float(record[k]), now, step) for k in FINALS
                  if isinstance(record.get(k), (int, float))]  # fmt: skip
        status = "diverged" if record.get("diverged") else "finished"
        tags = [RunTag("status", status), RunTag("seed", str(record.get("seed"))),
                RunTag("point", point_of(record.get("overrides", [])))]
        client.log_batch(run_id, metrics=finals, tags=tags)
        if self.checkpoints:
            for name in ("best.ckpt", "last.ckpt"):
                path = self.run_dir / "ckpt" / name
                if path.exists():
                    client.log_artifact(run_id, str(path), artifact_path="checkpoints")
        client.set_terminated(run_id, status="FINISHED")

    def finalize(self, status: str) -> None:
        """Lightning's end of fit or test: "failed" (an exception) marks the run failed,
        "finished" (a signal: resume= continues it) killed; "success" goes on to the test."""
        self.save()
        if status in ("failed", "finished"):
            self.experiment.set_tag(self.run_id, "status", "failed" if status == "failed" else "interrupted")
            self.experiment.set_terminated(self.run_id, status="FAILED" if status == "failed" else "KILLED")

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
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from pytorch_lightning.loggers.logger import Logger

from bnsweep.files import atomic_write
from bnsweep.run.tensorboard import EventWriter, session_summaries

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

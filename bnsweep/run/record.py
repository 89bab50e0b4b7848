"""A run's result record: what ``metrics.json`` holds, made, written and read here alone.

Both training paths (a plain run, each member of a vectorized job) hand their numbers to
``finished_record``; the sweep's failure records come from ``failed_record``; the report, the
resume check and the terminal read through ``read_record``. Light on purpose (no torch): the
report and the sweep process use it.

``schema`` numbers the layout. Version 1 is the first with the field; a metrics.json without
it (written before) has the same layout and reads as version 0.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from bnsweep.files import DamagedFile, read_json, write_json

SCHEMA = 1
METRICS = "metrics.json"


def _last(values: Sequence[float]) -> float | None:
    return values[-1] if values else None


def finished_record(
    *,
    seed: int,
    history: Mapping[str, list],
    test: tuple[float | None, float | None],
    test_weights: str,
    steps: int,
    epochs: int,
    diverged_step: int | None,
    choices: Mapping[str, str],
    overrides: Sequence[str],
    times: Mapping[str, float | None],
    resumed_from_step: int | None,
    device: str,
    hparams: Mapping[str, Any],
    other: Mapping[str, float] | None = None,
) -> dict[str, Any]:
    """The record of a run that trained to its end (or diverged): the final and best
    validation, the last epoch's training metrics (a partial epoch when stopped mid-epoch),
    the test, and ``times`` (wall_time_s, fit_time_s, …) in the order given. With PreciseBN,
    ``other`` holds the test accuracy with the other statistics (``test/acc_precise`` or
    ``test/acc_running``), and the last validation's is recorded beside it."""
    h = history
    if diverged_step is None and test[1] is not None and not math.isfinite(test[1]):
        diverged_step = steps  # a NaN or infinite test loss: diverged, at the end of training
    extra: dict[str, float | None] = {}
    for key, value in (other or {}).items():  # test/acc_precise: and val/acc_precise before it
        val_key = "val/" + key.split("/", 1)[1]
        extra[val_key] = _last(h.get(val_key, []))
        extra[key] = value
    return {
        "schema": SCHEMA,
        "status": "finished",
        "diverged": diverged_step is not None,
        "diverged_step": diverged_step,
        "seed": seed,
        "choices": dict(choices),
        "overrides": list(overrides),
        "val/acc": _last(h["val/acc"]),
        "val/acc_best": max(h["val/acc"], default=None),
        "val/loss": _last(h["val/loss"]),
        "train/acc": _last(h["train/acc"]),
        "train/loss": _last(h["train/loss"]),
        "test/acc": test[0],
        "test/loss": test[1],
        **extra,
        "test_weights": test_weights,
        "steps": steps,
        "epochs": epochs,
        **times,
        "resumed_from_step": resumed_from_step,
        "device": device,
        "history": h,
        "hparams": dict(hparams),
    }


def failed_record(message: str, seed: int | None, overrides: Sequence[str]) -> dict[str, Any]:
    """The record a sweep writes for a job that raised (beside its traceback.txt)."""
    return {"schema": SCHEMA, "status": "failed", "error": message, "seed": seed,
            "overrides": list(overrides)}  # fmt: skip


def write_record(run_dir: Path, record: Mapping[str, Any]) -> None:
    write_json(Path(run_dir) / METRICS, dict(record))


def read_record(run_dir: Path) -> dict[str, Any]:
    """A run folder's metrics.json; DamagedFile when it does not read or is not a record of a
    layout this version knows."""
    path = Path(run_dir) / METRICS
    record = read_json(path)
    if not isinstance(record, dict) or not isinstance(record.get("schema", 0), int):
        raise DamagedFile(f"{path} is damaged: not a run record")
    if record.get("schema", 0) > SCHEMA:
        raise DamagedFile(f"{path} is damaged: schema {record['schema']} is newer than this "
                          f"bnsweep's ({SCHEMA}); update bnsweep to read it")  # fmt: skip
    return record

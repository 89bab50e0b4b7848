"""metrics.json has one writer and one reader (bnsweep/run/record.py): what they write and refuse."""

from __future__ import annotations

import json

import pytest

from bnsweep.files import DamagedFile
from bnsweep.run.record import SCHEMA, failed_record, finished_record, read_record, write_record

HISTORY = {"val_step": [10, 20], "val_epoch": [0.5, 1.0], "val/acc": [0.8, 0.7],
           "val/loss": [0.6, 0.9], "train_epoch": [1.0], "train/acc": [0.75], "train/loss": [0.7]}  # fmt: skip


def _finished(**changes):
    fields = dict(seed=3, history=HISTORY, test=(0.72, 0.88), test_weights="last", steps=20,
                  epochs=1, diverged_step=None, choices={"model": "lenet"}, overrides=["seed=3"],
                  times={"wall_time_s": 1.5, "fit_time_s": 1.0}, resumed_from_step=None,
                  device="cpu", hparams={"model": "lenet"})  # fmt: skip
    return finished_record(**{**fields, **changes})


def test_a_finished_record_reads_its_numbers_off_the_history(tmp_path):
    record = _finished()
    assert record["schema"] == SCHEMA and record["status"] == "finished"
    # final and best validation, the last epoch's training metrics, the test pair
    assert (record["val/acc"], record["val/acc_best"], record["val/loss"]) == (0.7, 0.8, 0.9)
    assert (record["train/acc"], record["train/loss"]) == (0.75, 0.7)
    assert (record["test/acc"], record["test/loss"]) == (0.72, 0.88)
    assert record["diverged"] is False and _finished(diverged_step=7)["diverged"] is True
    write_record(tmp_path, record)
    assert read_record(tmp_path) == json.loads(json.dumps(record))


def test_a_record_without_history_has_no_numbers():
    empty = {k: [] for k in HISTORY}
    record = _finished(history=empty)
    assert record["val/acc"] is record["val/acc_best"] is record["train/loss"] is None


def test_a_failed_record_and_an_older_record_read(tmp_path):
    write_record(tmp_path, failed_record("error: boom", 1, ["seed=1"]))
    assert read_record(tmp_path)["status"] == "failed"
    old = {k: v for k, v in _finished().items() if k != "schema"}  # written before schema 1
    (tmp_path / "metrics.json").write_text(json.dumps(old))
    assert read_record(tmp_path)["val/acc"] == 0.7


@pytest.mark.parametrize("content, why", [
    ('{"schema": 99, "status": "finished"}', "schema 99 is newer than this bnsweep's (1)"),
    ("[1, 2]", "not a run record"),
    ('{"schema": "one"}', "not a run record"),
])  # fmt: skip
def test_a_record_this_version_cannot_read_is_named(tmp_path, content, why):
    (tmp_path / "metrics.json").write_text(content)
    with pytest.raises(DamagedFile) as err:
        read_record(tmp_path)
    assert str(err.value).startswith(f"{tmp_path / 'metrics.json'} is damaged: {why}")

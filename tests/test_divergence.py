"""A run whose evaluation is NaN or infinite diverged (not finished with a number), on the plain
and the vectorized path; the report keeps such runs out of the means, names their points, and
is always written for what finished; a report that cannot be written ends the sweep non-zero."""

from __future__ import annotations

import json
import math

import pytest
import torch
from helpers import SHORT, read_summary, report_command, sweep_dir_of

# SGD at lr 1e30: the training loss stays finite for the 20 steps (≈ 4.5e31), the evaluation's
# is NaN (the network's outputs overflow in eval mode)
EXPLODING = ["model=lenet_bn1", "optimizer=sgd", "optimizer.lr=1e30", *SHORT]


def test_a_nan_evaluation_is_divergence(cli, tmp_path):
    proc = cli("train.py", *EXPLODING, "hydra.run.dir=r")
    assert proc.returncode == 0, proc.stderr
    record = json.loads((tmp_path / "r" / "metrics.json").read_text())
    assert record["status"] == "finished" and record["diverged"] is True
    assert math.isfinite(record["history"]["train/loss"][-1])  # training alone saw nothing
    assert math.isnan(record["history"]["val/loss"][0])
    # diverged at the first validation (step 10), and the run stopped there
    assert record["diverged_step"] == 10 and record["history"]["val_step"] == [10]
    assert record["steps"] == 10


@pytest.mark.parametrize("vectorize", [False, True])
def test_a_sweep_with_nan_evaluations_writes_its_report(cli, tmp_path, vectorize):
    proc = cli("sweep.py", "model=lenet_bn1", "optimizer=sgd", "optimizer.lr=0.01,1e30",
               "seeds=[0,1]", f"sweep.vectorize={str(vectorize).lower()}", *SHORT)  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    sweep = sweep_dir_of(tmp_path)
    rows = {r["optimizer.lr"]: r for r in read_summary(sweep)}
    assert rows["1e+30"]["n_finished"] == "0" and rows["1e+30"]["n_diverged"] == "2"
    assert rows["0.01"]["n_finished"] == "2" and rows["1e+30"]["val_acc_n"] == "0"
    summary = (sweep / "summary.md").read_text()
    assert (
        "Diverged (a loss or a statistic NaN or infinite): optimizer.lr=1e+30 (seeds 0, 1)."
        in summary
    )
    assert (sweep / "val_acc.png").is_file()
    report = report_command(str(sweep), cwd=tmp_path)
    assert report.returncode == 0, report.stderr


def test_an_old_record_with_a_nan_evaluation_is_reported_as_diverged(cli, tmp_path):
    """metrics.json written before this rule (finished, diverged false, NaN losses): the report
    counts it as diverged, and no NaN reaches the statistics."""
    from bnsweep.report import report

    proc = cli("sweep.py", "model=lenet_bn1", "optimizer=sgd", "optimizer.lr=0.01,1e30",
               "seeds=[0,1]", *SHORT)  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    sweep = sweep_dir_of(tmp_path)
    for path in sweep.glob("*1e+30*/metrics.json"):
        record = json.loads(path.read_text())
        record.update(diverged=False, diverged_step=None)
        path.write_text(json.dumps(record))
    rows = {r["optimizer.lr"]: r for r in report(sweep, quiet=True)}
    assert rows["1e+30"]["n_diverged"] == 2 and rows["1e+30"]["n_finished"] == 0
    assert all(not (isinstance(v, float) and math.isnan(v)) for k, v in rows["0.01"].items()
               if k.endswith(("_mean", "_std")) and not k.startswith(("steps_", "epochs_")))  # fmt: skip


def test_a_report_that_cannot_be_written_ends_the_sweep_non_zero(tmp_path, monkeypatch, capsys):
    import bnsweep.sweep.callback as sweep_module
    from bnsweep.run.record import finished_record, write_record

    run = tmp_path / "0_a=1,seed=0"
    run.mkdir()
    history = {"val_step": [1], "val_epoch": [1.0], "val/acc": [0.5], "val/loss": [1.0],
               "train_epoch": [1.0], "train/acc": [0.5], "train/loss": [1.0]}  # fmt: skip
    write_record(run, finished_record(seed=0, history=history, test=(0.5, 1.0), test_weights="last",
                                      steps=1, epochs=1, diverged_step=None, choices={}, overrides=[],
                                      times={}, resumed_from_step=None, device="cpu", hparams={}))  # fmt: skip

    def broken(*args, **kwargs):
        raise AttributeError("'float' object has no attribute 'numerator'")

    monkeypatch.setattr(sweep_module, "report", broken)
    with pytest.raises(SystemExit) as end:
        sweep_module.end_of_sweep(tmp_path, [])
    assert end.value.code == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [f"error: the report of {tmp_path} could not be written (AttributeError: 'float' "
                   "object has no attribute 'numerator'); the runs are intact"]  # fmt: skip


def test_a_member_whose_evaluation_is_nan_diverges_as_its_run_does(
    tmp_path, mnist_dir, monkeypatch
):
    """Seed 1's BN running mean is NaN from the start: training is untouched (batch statistics),
    its first validation is NaN. In a vectorized job it stops there, as its independent run
    does, and seeds 0 and 2 train on as alone."""
    from test_vectorize import _assert_equal_runs, _cfg, _independent

    import bnsweep.run.training
    import bnsweep.sweep.vectorize

    counted = bnsweep.run.training.build_counted

    def poisoned(cfg):
        net, swapped = counted(cfg)
        if cfg.seed == 1:
            with torch.no_grad():
                net.conv1.bn.running_mean[0] = math.nan
        return net, swapped

    monkeypatch.setattr(bnsweep.run.training, "build_counted", poisoned)
    overrides = ["model=lenet_bn1", *SHORT]
    members = bnsweep.sweep.vectorize.run_members(
        _cfg(tmp_path, mnist_dir, "job", "seeds=[0,1,2]", *overrides)
    )
    assert [m["diverged"] for m in members] == [False, True, False]
    alone = _independent(tmp_path, mnist_dir, 1, *overrides)
    assert alone["diverged_step"] == members[1]["diverged_step"] == 10
    assert alone["history"]["val_step"] == members[1]["history"]["val_step"] == [10]
    assert members[1]["steps"] == alone["steps"] == 10
    assert members[1]["history"]["train/loss"] == alone["history"]["train/loss"]
    for seed, member in zip((0, 2), (members[0], members[2])):
        _assert_equal_runs(member, _independent(tmp_path, mnist_dir, seed, *overrides))

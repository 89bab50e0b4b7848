"""Sweeps that survive divergence and crashing jobs; runs that repeat exactly."""

from __future__ import annotations

import json

from conftest import ROOT
from test_sweep import SHORT, read_summary, sweep_dir_of

TEST_CONF = f"hydra.searchpath=[file://{ROOT / 'tests' / 'conf'}]"


def test_divergence_is_a_result_not_a_crash(cli, tmp_path):
    proc = cli("sweep.py", "-m", "optimizer=sgd", "optimizer.lr=0.01,1e38", "seeds=[0,1]", *SHORT)
    assert proc.returncode == 0, proc.stderr[-3000:]
    sweep = sweep_dir_of(tmp_path)
    rows = {r["optimizer.lr"]: r for r in read_summary(sweep)}
    assert (rows["1e+38"]["n_finished"], rows["1e+38"]["n_diverged"]) == ("0", "2")
    assert rows["1e+38"]["val_acc_mean"] == "nan"  # diverged seeds are left out of the means
    assert (rows["0.01"]["n_finished"], rows["0.01"]["n_diverged"]) == ("2", "0")
    diverged = list(sweep.glob("*optimizer.lr=1e+38*/metrics.json"))
    assert len(diverged) == 2
    for f in diverged:
        m = json.loads(f.read_text())
        assert m["diverged"] is True and m["diverged_step"] == 1 and m["status"] == "finished"
    assert (
        "diverged or failed runs are counted but left out of the means"
        in (sweep / "summary.md").read_text()
    )


def test_a_crashing_job_does_not_end_the_sweep(cli, tmp_path):
    proc = cli("sweep.py", "-m", "model=raise_at_step,lenet_bn1", "seeds=[0,1]", TEST_CONF, *SHORT)
    assert proc.returncode == 1
    last = proc.stderr.strip().splitlines()[-1]
    assert (
        last == "error: 2 run(s) failed: 0_model=raise_at_step,seed=0 1_model=raise_at_step,seed=1"
    )
    sweep = sweep_dir_of(tmp_path)
    failed = sweep / "0_model=raise_at_step,seed=0"
    m = json.loads((failed / "metrics.json").read_text())
    assert (
        m["status"] == "failed"
        and m["error"] == "RuntimeError: injected failure at training step 5"
    )
    assert "injected failure at training step 5" in (failed / "traceback.txt").read_text()
    rows = {r["model"]: r for r in read_summary(sweep)}  # the other point ran and is reported
    assert rows["lenet_bn1"]["n_finished"] == "2" and rows["raise_at_step"]["n_failed"] == "2"

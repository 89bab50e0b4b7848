"""What a researcher sees: --help, the dry run, the report's refusals and comparisons, the
plots' markers and axes, the data source named."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path

import inprocess
import pytest
from helpers import read_summary, report_command


def script(name: str, *args: str, cwd: Path) -> subprocess.CompletedProcess:
    return inprocess.run(name, list(args), cwd=cwd, env=dict(os.environ), timeout=120)


def test_help_describes_every_group_and_key_from_the_configs(tmp_path):
    train = script("train.py", "--help", cwd=tmp_path)
    assert train.returncode == 0, train.stderr
    groups = train.stdout.split("Keys (key=value")[0]
    assert "  study\n" not in groups  # train.py refuses the study group: not offered
    assert "*lenet                LeNet of the BN-placement study" in groups
    keys = train.stdout.split("Keys (key=value")[1].split("\n\n")[0].splitlines()[1:]
    assert keys and all(len(line.split(None, 1)) == 2 for line in keys), [
        line for line in keys if len(line.split(None, 1)) < 2
    ]  # every key has a description
    window = script("train.py", "bn=window", "--help", cwd=tmp_path).stdout
    assert "bn.window=5" in window and "how many of the last training batches" in window
    sweep = script("sweep.py", "--help", cwd=tmp_path).stdout
    assert "  study\n" in sweep and "seeds=[0, 1, 2]" in sweep and "--dry-run" in sweep
    # keys two levels down are described too (they were left out of the list)
    assert "  sweep.tune.key=null              the key tuned per point" in sweep
    assert "  sweep.tune.budget=null           values tried per point in a range search" in sweep
    assert not (tmp_path / "outputs").exists()


def test_the_dry_run_lists_the_jobs_their_folders_and_a_time_without_running(tmp_path):
    proc = script("sweep.py", "study=bn_placement", "--dry-run", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.strip().splitlines()
    assert lines[0].startswith(
        "study=bn_placement: 15 jobs, 15 runs, into outputs/sweep/bn_placement_"
    )
    jobs = [line.split()[0] for line in lines[1:-1]]
    models = ["lenet", "lenet_bn1", "lenet_bn2", "lenet_fc_bn1", "lenet_fc_bn2"]
    assert jobs == [
        f"{3 * i + s}_model={m},seed={s}" for i, m in enumerate(models) for s in range(3)
    ]
    assert all("≈ " in line for line in lines[1:-1])
    assert lines[-1].startswith("about ") and "one after another on a 2-core CPU" in lines[-1]
    # vectorized: one job per point, each writing its seeds' run folders
    vec = script("sweep.py", "-m", "model=lenet,lenet_bn1", "sweep.vectorize=true", "seeds=[0,1]",
                 "--dry-run", cwd=tmp_path).stdout.splitlines()  # fmt: skip
    assert vec[0].split(": ", 1)[1].startswith("2 jobs, 4 runs")
    assert "runs: 0_model=lenet,seed=0, 0_model=lenet,seed=1" in vec[1]
    bad = script("sweep.py", "init.std=-1", "--dry-run", cwd=tmp_path)
    assert (
        bad.returncode == 2
        and bad.stderr.strip() == "error: init.std must be a finite number > 0, got -1"
    )
    assert not (tmp_path / "outputs").exists()  # nothing was run or made


def _run_folder(parent: Path, name: str, acc: float, overrides: list[str]) -> Path:
    d = parent / name
    d.mkdir(parents=True)
    (d / "metrics.json").write_text(json.dumps({
        "status": "finished", "seed": 0, "overrides": overrides, "val/acc": acc, "val/acc_best": acc,
        "test/acc": acc, "train/loss": 0.1, "val/loss": 0.2, "wall_time_s": 3.0,
        "history": {"val_step": [50], "val_epoch": [0.17], "val/acc": [acc], "val/loss": [0.2],
                    "train_epoch": [0.17], "train/acc": [acc], "train/loss": [0.1]},
    }))  # fmt: skip
    return d


def test_the_report_refuses_a_folder_that_is_no_sweep_and_compares_chosen_runs(tmp_path):
    train = tmp_path / "outputs" / "train"
    a = _run_folder(train, "lenet_nobn_s0_x", 0.91, ["model=lenet"])
    b = _run_folder(train, "lenet_fc_bn2_momentum_s0_x", 0.97, ["model=lenet_fc_bn2"])
    proc = report_command(str(train))
    assert proc.returncode == 2
    assert proc.stderr.strip() == (
        f"error: {train} is not a sweep folder (no command.txt in it); to compare runs: "
        "python -m bnsweep.report --runs <run folders> --out <folder>"
    )
    assert sorted(p.name for p in train.iterdir()) == sorted([a.name, b.name])  # nothing written
    out = tmp_path / "compare"
    proc = report_command("--runs", str(a), str(b), "--out", str(out))
    assert proc.returncode == 0, proc.stderr
    rows = {r["model"]: r for r in read_summary(out)}
    assert (
        float(rows["lenet"]["val_acc_mean"]) == 0.91
        and float(rows["lenet_fc_bn2"]["val_acc_mean"]) == 0.97
    )
    assert "| lenet_fc_bn2 | 1 / 0 / 0 | 0.9700 (n = 1) |" in (out / "summary.md").read_text()
    assert {"val_acc.png", "summary.csv"} <= {p.name for p in out.iterdir()}
    again = report_command("--runs", str(a), "--out", str(b))
    assert again.returncode == 2 and "is a sweep or run folder" in again.stderr


def test_curves_have_markers_a_step_axis_for_runs_validated_mid_epoch_and_the_set_range(tmp_path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from bnsweep.report.plots import band, by_steps
    from bnsweep.report.runs import group_by_point, load_runs

    _run_folder(tmp_path, "0_model=lenet,seed=0", 0.91, ["model=lenet", "seed=0"])
    _run_folder(tmp_path, "1_model=lenet_fc_bn2,seed=0", 0.97, ["model=lenet_fc_bn2", "seed=0"])
    runs = load_runs(tmp_path)
    groups = group_by_point(runs)
    assert by_steps(groups)  # one validation at 0.17 epochs: a step axis
    fig, ax = plt.subplots()
    band(ax, runs[:1], "val_step", "val/acc", "lenet")
    line = ax.lines[0]
    assert line.get_marker() == "o" and list(line.get_xdata()) == [50]  # one point, drawn as one
    plt.close(fig)
    from bnsweep.report import report

    (tmp_path / "command.txt").write_text("sweep.py\n")
    report(tmp_path, quiet=True, settings={"val_acc_ylim": [0.9, 1.0]})
    assert (tmp_path / "val_acc.png").stat().st_size > 10_000


def test_a_fetched_data_set_says_where_it_came_from_and_went(
    mnist_dir, tmp_path, monkeypatch, capsys
):
    from helpers import write_mnist_copy

    import bnsweep.data.catalog as ds

    def fake_download(spec, dest):  # the files a mirror would give
        write_mnist_copy(mnist_dir, dest, gz=True)

    monkeypatch.setattr(ds, "_torchvision_download", fake_download)
    found = ds.locate(ds.DATASETS["mnist"], tmp_path / "data", download=True)
    assert found["train_images"].parent == tmp_path / "data" / "MNIST" / "raw"
    err = capsys.readouterr().err.strip()
    assert (
        err
        == f"data: MNIST fetched from torchvision's mirrors into {tmp_path / 'data' / 'MNIST' / 'raw'}"
    )
    ds.locate(ds.DATASETS["mnist"], tmp_path / "data", download=True)
    assert capsys.readouterr().err == ""  # once: later runs find them there
    shutil.rmtree(tmp_path / "data")
    with pytest.raises(ds.DataError):
        ds.locate(ds.DATASETS["mnist"], tmp_path / "data", download=False)

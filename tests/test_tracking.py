"""logger=mlflow: a sweep is a parent run of its study's experiment, every run a child run tagged
with its point, seed and status; read back through mlflow.search_runs against metrics.json."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
from helpers import SHORT, TEST_CONF

mlflow = pytest.importorskip("mlflow", reason='needs pip install -e ".[mlflow]" (CI installs it)')


@pytest.fixture(autouse=True)
def no_tracking_uri(monkeypatch):
    """The runs' store is their folder's outputs/mlflow.db (a tracking URI set here would be
    inherited by the scripts: mlflow.set_tracking_uri sets $MLFLOW_TRACKING_URI)."""
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)


def client_of(store: Path):
    return mlflow.tracking.MlflowClient(tracking_uri=f"sqlite:///{store}")


def runs_of(folder: Path, experiment: str, store: Path | None = None) -> list:
    """The experiment's runs, read back as a lab would: mlflow.search_runs on the store."""
    mlflow.set_tracking_uri(f"sqlite:///{store or folder / 'outputs' / 'mlflow.db'}")
    try:
        if mlflow.get_experiment_by_name(experiment) is None:
            return []
        return mlflow.search_runs(experiment_names=[experiment], output_format="list")
    finally:  # not inherited by the scripts a test runs next
        os.environ.pop("MLFLOW_TRACKING_URI", None)


def test_a_sweep_is_a_parent_run_with_a_child_per_run_equal_to_metrics_json(cli, tmp_path):
    proc = cli("sweep.py", "model=lenet_bn1", "optimizer=sgd", "optimizer.lr=0.01,1e30",
               "seeds=[0,1]", "logger=tensorboard_mlflow", *SHORT, "hydra.sweep.dir=sw")  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    runs = runs_of(tmp_path, "custom")
    (parent,) = [r for r in runs if r.data.tags.get("bnsweep.kind") == "sweep"]
    children = [r for r in runs if r.data.tags.get("bnsweep.kind") == "run"]
    assert len(children) == 4 and parent.info.status == "FINISHED"
    assert parent.data.params["optimizer.lr"] == "0.01,1e30"
    for child in children:
        t = child.data.tags
        assert t["mlflow.parentRunId"] == parent.info.run_id
        folder = Path(t["bnsweep.run_dir"])
        record = json.loads((folder / "metrics.json").read_text())
        assert t["seed"] == str(record["seed"]) and t["point"] == t["point"].split(",seed")[0]
        assert t["point"] in ("optimizer.lr=0.01", "optimizer.lr=1e+30")  # as Hydra writes it
        assert t["status"] == ("diverged" if record["diverged"] else "finished")
        assert (t["point"] == "optimizer.lr=1e+30") == record["diverged"]
        assert (
            child.data.params["model"] == "lenet_bn1"
            and child.data.params["optimizer._target_"] == "torch.optim.SGD"
        )
        assert float(child.data.params["optimizer.lr"]) in (0.01, 1e30)
        m = child.data.metrics
        for key in ("val/acc", "val/acc_best", "test/acc", "train/loss"):
            if isinstance(record[key], float) and record[key] == record[key]:
                assert m[f"final/{key}"] == pytest.approx(record[key], rel=1e-7), key
        # the curve: every validation the history holds, at its step
        curve = client_of(tmp_path / "outputs" / "mlflow.db").get_metric_history(
            child.info.run_id, "val/acc"
        )
        h = record["history"]
        assert [p.value for p in curve] == pytest.approx(h["val/acc"], rel=1e-7, nan_ok=True)
        from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

        events = EventAccumulator(str(folder))
        events.Reload()  # the same curve, at the same steps, as TensorBoard's
        assert [(p.step, p.value) for p in curve] == [(e.step, pytest.approx(e.value, rel=1e-7, nan_ok=True))
                                                       for e in events.Scalars("val/acc")]  # fmt: skip
        assert (folder / "mlflow.json").exists() and list(folder.glob("events.out.tfevents.*"))
    artifacts = {
        a.path
        for a in client_of(tmp_path / "outputs" / "mlflow.db").list_artifacts(parent.info.run_id)
    }
    assert {"summary.md", "summary.csv", "val_acc.png"} <= artifacts
    # the same sweep resumed: no run is logged twice
    again = cli("sweep.py", "model=lenet_bn1", "optimizer=sgd", "optimizer.lr=0.01,1e30",
                "seeds=[0,1]", "logger=tensorboard_mlflow", *SHORT, f"resume={tmp_path / 'sw'}")  # fmt: skip
    assert again.returncode == 0, again.stderr[-3000:]
    assert sorted(r.info.run_id for r in runs_of(tmp_path, "custom")) == sorted(
        r.info.run_id for r in runs
    )


def test_a_failed_run_is_shown_failed_and_a_resume_logs_into_the_same_child(cli, tmp_path):
    args = ["model=raise_at_step", "seeds=[0]", TEST_CONF, "logger=mlflow", *SHORT]
    proc = cli("sweep.py", *args, "hydra.sweep.dir=sw")
    assert proc.returncode == 1
    (parent,) = [r for r in runs_of(tmp_path, "custom") if r.data.tags["bnsweep.kind"] == "sweep"]
    (child,) = [r for r in runs_of(tmp_path, "custom") if r.data.tags["bnsweep.kind"] == "run"]
    assert child.info.status == "FAILED" and child.data.tags["status"] == "failed"
    assert parent.info.status == "FAILED"
    again = cli("sweep.py", *args, f"resume={tmp_path / 'sw'}")  # it fails again, at its step 5
    assert again.returncode == 1
    runs = runs_of(tmp_path, "custom")
    assert sorted(r.info.run_id for r in runs) == sorted([parent.info.run_id, child.info.run_id])
    assert all(r.info.status == "FAILED" for r in runs)


def test_a_vectorized_jobs_members_are_child_runs_of_their_own(cli, tmp_path):
    proc = cli("sweep.py", "model=lenet_bn1", "init.std=0.1,0.3", "seeds=[0,1]", "sweep.vectorize=true",
               "logger=mlflow", *SHORT, "hydra.sweep.dir=sw")  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    children = [r for r in runs_of(tmp_path, "custom") if r.data.tags["bnsweep.kind"] == "run"]
    assert sorted((r.data.tags["point"], r.data.tags["seed"]) for r in children) == [
        (f"init.std={s}", str(seed)) for s in ("0.1", "0.3") for seed in (0, 1)
    ]
    for r in children:
        record = json.loads((Path(r.data.tags["bnsweep.run_dir"]) / "metrics.json").read_text())
        assert r.data.metrics["final/test/acc"] == pytest.approx(record["test/acc"], rel=1e-7)


def test_train_py_logs_one_run_into_the_train_experiment_or_a_given_store(cli, tmp_path):
    proc = cli("train.py", "model=lenet", "logger=mlflow", *SHORT, "hydra.run.dir=one",
               "logger.mlflow.checkpoints=true")  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-2000:]
    (run,) = runs_of(tmp_path, "train")
    assert run.info.status == "FINISHED" and "mlflow.parentRunId" not in run.data.tags
    saved = client_of(tmp_path / "outputs" / "mlflow.db").list_artifacts(run.info.run_id, "checkpoints")
    assert sorted(Path(a.path).name for a in saved) == ["best.ckpt", "last.ckpt"]  # asked for
    assert (tmp_path / "outputs" / "mlartifacts" / "train").is_dir()  # beside the store
    store = tmp_path / "lab.db"
    proc = cli("train.py", "model=lenet", "logger=mlflow", *SHORT, "hydra.run.dir=two",
               env={"MLFLOW_TRACKING_URI": f"sqlite:///{store}"})  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert len(runs_of(tmp_path, "train", store)) == 1
    assert len(runs_of(tmp_path, "train")) == 1  # not in the default store


def test_mlflow_missing_is_refused_in_one_line(cli, tmp_path):
    fake = tmp_path / "no_mlflow" / "mlflow"
    fake.mkdir(parents=True)
    (fake / "__init__.py").write_text("raise ImportError('No module named mlflow')\n")
    proc = cli("sweep.py", "model=lenet", "logger=mlflow", *SHORT, "hydra.sweep.dir=sw",
               env={"PYTHONPATH": str(fake.parent)}, process=True)  # fmt: skip
    assert proc.returncode == 2
    assert proc.stderr.strip() == ('error: logger.mlflow logs to MLflow, which is not installed: '
                                   'pip install -e ".[mlflow]"')  # fmt: skip
    assert not (tmp_path / "sw").exists() and not (tmp_path / "outputs").exists()


def test_a_store_uri_mlflow_has_no_store_for_is_one_line(cli, tmp_path):
    """A 105-line MLflow traceback before, with the run's folder made."""
    proc = cli("train.py", "model=lenet", "logger=mlflow", "logger.mlflow.tracking_uri=ftp://x",
               *SHORT, "hydra.run.dir=one", timeout=120)  # fmt: skip
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert proc.stderr.strip().splitlines() == [
        "error: logger.mlflow.tracking_uri=ftp://x: MLflow has no store for the scheme 'ftp'; use "
        "a local path, file:, sqlite:///…, or an http(s):// server"]  # fmt: skip
    assert not (tmp_path / "one").exists() and not (tmp_path / "outputs").exists()


def test_a_server_that_does_not_answer_is_refused_before_training_not_waited_for(cli, tmp_path):
    """MLflow's client retried a closed port for minutes, the run waiting (a hang, in effect)."""
    proc = cli("train.py", "model=lenet", "logger=mlflow", "logger.mlflow.tracking_uri=http://127.0.0.1:9",
               *SHORT, "hydra.run.dir=one", timeout=120)  # fmt: skip
    assert proc.returncode == 2
    (line,) = proc.stderr.strip().splitlines()
    assert line.startswith("error: logger.mlflow.tracking_uri=http://127.0.0.1:9: the MLflow server does not answer (")
    assert not (tmp_path / "one").exists()

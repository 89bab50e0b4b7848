"""Sweeps through a running Slurm cluster, end to end (scripts/slurm-local.sh start gives one
on this machine; .ci/run starts it): the report equals the basic launcher's, a cancelled job is
a failed run of the report and resume= continues it from its checkpoint, a requeued job
continues from its checkpoint, sweep.vectorize=true is one Slurm job per point."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import ROOT


def _slurm_answers() -> str | None:
    """Why the Slurm tests cannot run here, None when a node is idle."""
    if shutil.which("sinfo") is None:
        return "no Slurm here (sinfo not found); scripts/slurm-local.sh start makes one"
    try:
        states = subprocess.run(["sinfo", "-h", "-N", "-o", "%T"], capture_output=True, text=True,
                                timeout=20).stdout.split()  # fmt: skip
    except (OSError, subprocess.TimeoutExpired) as e:
        return f"sinfo does not answer ({e})"
    if not any(s in ("idle", "mixed") for s in states):
        return f"no idle Slurm node (sinfo: {states or 'nothing'}); scripts/slurm-local.sh start"
    if (
        shutil.which("sacct") is None
        or subprocess.run(["sacct", "-n", "-X"], capture_output=True).returncode
    ):
        return "sacct does not answer (no accounting): scripts/slurm-local.sh start sets it up"
    return None


WHY = _slurm_answers()
pytestmark = [pytest.mark.slurm, pytest.mark.skipif(WHY is not None, reason=WHY or "")]

# long enough (300 steps, a checkpoint every 20) to cancel and requeue jobs mid-run
SETTINGS = [
    "model=lenet,lenet_fc_bn2", "seeds=[0,1]", "data.train_size=2000", "trainer.max_steps=300",
    "trainer.val_check_interval=20", "trainer.check_val_every_n_epoch=null",
    "trainer.limit_val_batches=1", "trainer.limit_test_batches=1", "threads=1",
]  # fmt: skip
NAMES = ["0_model=lenet,seed=0", "1_model=lenet,seed=1", "2_model=lenet_fc_bn2,seed=0",
         "3_model=lenet_fc_bn2,seed=1"]  # fmt: skip
COMPARED = ("val/acc", "val/acc_best", "test/acc", "test/loss")


def _metrics(folder: Path) -> dict:
    return json.loads((folder / "metrics.json").read_text())


def _same_numbers(a: dict, b: dict) -> None:
    for key in COMPARED:
        assert a[key] == b[key], key
    for key in ("val/acc", "val/loss", "train/loss"):
        assert a["history"][key] == b["history"][key], key


def _wait_for(path: Path, proc: subprocess.Popen, timeout: float = 240) -> None:
    end = time.time() + timeout
    while not path.exists():
        assert proc.poll() is None, f"the sweep ended before {path} appeared"
        assert time.time() < end, f"{path} did not appear within {timeout} s"
        time.sleep(0.1)


def _start_when_pending(job: str, timeout: float = 60) -> None:
    """Once the requeued ``job`` is pending again, its start time set to now."""
    end = time.time() + timeout
    while True:
        state = subprocess.run(["squeue", "-h", "-j", job, "-o", "%T"], capture_output=True,
                               text=True).stdout.strip()  # fmt: skip
        if state == "PENDING":
            subprocess.run(["scontrol", "update", f"JobId={job}", "StartTime=now"], check=True)
            return
        assert time.time() < end, f"{job} was not pending again within {timeout} s ({state!r})"
        time.sleep(0.2)


def _array_id(sweep: Path) -> str:
    tasks = sorted(p.name for p in (sweep / ".submitit").iterdir()
                   if re.fullmatch(r"\d+_\d+", p.name))  # <array job>_<task>  # fmt: skip
    assert tasks, "no submitit job folder"
    return tasks[0].split("_")[0]


def _sacct(job: str) -> str:
    out = subprocess.run(["sacct", "-n", "-X", "-P", "-o", "JobID,State", "-j", job],
                         capture_output=True, text=True).stdout  # fmt: skip
    return out.strip()


def test_a_sweep_through_slurm_survives_scancel_and_requeue_and_equals_the_basic_launcher(
    cli, tmp_path, mnist_dir
):
    basic = cli("sweep.py", *SETTINGS, f"hydra.sweep.dir={tmp_path / 'basic'}", timeout=900)
    assert basic.returncode == 0, basic.stderr[-3000:]

    sweep = tmp_path / "slurm"
    args = [*SETTINGS, "hydra/launcher=slurm_local", f"hydra.sweep.dir={sweep}"]
    env = dict(os.environ, BNSWEEP_DATA=str(mnist_dir), CI="true")
    proc = subprocess.Popen([sys.executable, str(ROOT / "sweep.py"), *args], cwd=tmp_path, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)  # fmt: skip
    # job 1 cancelled mid-run, job 2 requeued mid-run (then let start at once: Slurm holds a
    # requeued job back for AuthInfo's cred_expire, 2 minutes, from when it is pending again;
    # a StartTime set before that is overwritten)
    _wait_for(sweep / NAMES[1] / "ckpt" / "last.ckpt", proc)
    array = _array_id(sweep)
    assert not (sweep / NAMES[1] / "metrics.json").exists(), "job 1 finished before the cancel"
    subprocess.run(["scancel", f"{array}_1"], check=True)
    _wait_for(sweep / NAMES[2] / "ckpt" / "last.ckpt", proc)
    assert not (sweep / NAMES[2] / "metrics.json").exists(), "job 2 finished before the requeue"
    subprocess.run(["scontrol", "requeue", f"{array}_2"], check=True)
    _start_when_pending(f"{array}_2")
    out, err = proc.communicate(timeout=900)

    # the sweep ends with its report and one line for the cancelled job
    assert proc.returncode == 1, err[-3000:]
    assert err.strip().splitlines()[-1] == f"error: 1 run(s) failed: {NAMES[1]}", err[-3000:]
    assert (sweep / "summary.md").exists()
    lost = _metrics(sweep / NAMES[1])
    assert lost["status"] == "failed"
    assert lost["error"].startswith(
        f"error: Slurm job {array}_1 ended without a result (state CANCELLED"
    )
    assert f"{array}_1|CANCELLED" in _sacct(f"{array}_1")
    for i in (0, 2, 3):
        assert f"{array}_{i}|COMPLETED" in _sacct(f"{array}_{i}")
        _same_numbers(_metrics(sweep / NAMES[i]), _metrics(tmp_path / "basic" / NAMES[i]))
    # the requeued job continued from its checkpoint, not from step 0
    requeued = _metrics(sweep / NAMES[2])
    assert requeued["resumed_from_step"] and requeued["resumed_from_step"] > 0
    jobs = [json.loads(line) for line in (sweep / "jobs.jsonl").read_text().splitlines()]
    ran = {j["run"]: j for j in jobs if "run" in j and j.get("slurm_job")}
    assert ran[NAMES[2]]["slurm_job"] == f"{array}_2" and ran[NAMES[2]]["slurm_restarts"] == 1
    assert {ran[n]["slurm_job"] for n in (NAMES[0], NAMES[3])} == {f"{array}_0", f"{array}_3"}

    # resume= through Slurm continues the cancelled run from its last checkpoint
    again = cli("sweep.py", *args, f"resume={sweep}", timeout=900)
    assert again.returncode == 0, again.stderr[-3000:]
    resumed = _metrics(sweep / NAMES[1])
    assert resumed["status"] == "finished" and resumed["resumed_from_step"] > 0
    _same_numbers(resumed, _metrics(tmp_path / "basic" / NAMES[1]))
    basic_rows = (tmp_path / "basic" / "summary.csv").read_text().splitlines()
    slurm_rows = (sweep / "summary.csv").read_text().splitlines()
    assert len(basic_rows) == len(slurm_rows) == 3


def test_a_vectorized_sweep_through_slurm_is_one_job_per_point(cli, tmp_path):
    """One Slurm job per model, each training its 2 init scales × 2 seeds stacked (the job
    composes its points' configs in the Slurm task, from Hydra's state that submitit carries)."""
    sweep = tmp_path / "vec"
    proc = cli("sweep.py", *SETTINGS, "trainer.max_steps=40", "sweep.vectorize=true", "init=truncated_normal",
               "init.std=0.05,0.1", "hydra/launcher=slurm_local", f"hydra.sweep.dir={sweep}", timeout=900)  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    jobs = [json.loads(line) for line in (sweep / "jobs.jsonl").read_text().splitlines()]
    slurm_jobs = [j["slurm_job"] for j in jobs if "run" in j]
    array = _array_id(sweep)
    assert sorted(slurm_jobs) == [f"{array}_0", f"{array}_1"]  # 2 models: 2 Slurm jobs
    members = sorted(p.parent.name for p in sweep.glob("*/metrics.json"))
    assert members == sorted(f"{j}_model={m},init.std={v},seed={s}" for j, m in enumerate(["lenet", "lenet_fc_bn2"])
                             for v in ("0.05", "0.1") for s in (0, 1))  # fmt: skip
    assert all(_metrics(sweep / m)["status"] == "finished" for m in members)


@pytest.mark.skipif(os.geteuid() != 0, reason="registering the cluster needs root")
def test_cluster_registration_is_idempotent():
    """A second start (after stop, or on a machine whose MariaDB kept an earlier start's database)
    finds the cluster registered and goes on: it once failed there with "sacctmgr could not add
    the cluster", because the listing it searched cuts names to 10 characters."""
    script = str(ROOT / "scripts" / "slurm-local.sh")
    for _ in range(2):
        done = subprocess.run(
            ["bash", script, "register"], capture_output=True, text=True, timeout=60
        )
        assert done.returncode == 0, done.stderr
    listed = subprocess.run(["sacctmgr", "-n", "-P", "list", "cluster", "format=cluster"],
                            capture_output=True, text=True).stdout.split()  # fmt: skip
    assert "bnsweep-local" in listed


def test_a_point_on_two_devices_is_one_slurm_job_of_two_tasks(cli, tmp_path, mnist_dir):
    """hydra/launcher=slurm_local, trainer.devices=2 (gloo on the CPU): the point is one Slurm
    job of two tasks, Lightning's SLURM environment gives the ranks, and the run's numbers are
    those of the same run launched locally by train.py (Lightning's own launcher)."""
    point = ["model=lenet_fc_bn2", "trainer.accelerator=cpu", "trainer.devices=2",
             "data.batch_size=32", "bn.sync=true", "trainer.max_epochs=null",
             "trainer.max_steps=20", "trainer.val_check_interval=10",
             "trainer.check_val_every_n_epoch=null", "threads=1"]  # fmt: skip
    local = cli("train.py", *[a for a in point if not a.startswith("threads")],
                f"hydra.run.dir={tmp_path / 'local'}", timeout=600)  # fmt: skip
    assert local.returncode == 0, local.stderr[-3000:]
    sweep = tmp_path / "slurm"
    proc = cli("sweep.py", *point, "seeds=[0]", "hydra/launcher=slurm_local",
               f"hydra.sweep.dir={sweep}", timeout=600)  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    (run,) = [p.parent for p in sweep.glob("*/metrics.json")]
    _same_numbers(_metrics(run), _metrics(tmp_path / "local"))
    assert _metrics(run)["device"] == "cpu ×2"
    (job,) = [p for p in (sweep / ".submitit").iterdir() if p.name.isdigit()]  # one job
    logs = sorted(p.name for p in job.glob("*_log.out"))
    assert logs == [f"{job.name}_0_log.out", f"{job.name}_1_log.out"]  # of two tasks
    jobs = [json.loads(line) for line in (sweep / "jobs.jsonl").read_text().splitlines()]
    assert [j["status"] for j in jobs if "run" in j] == ["finished"]  # rank 0 alone reports

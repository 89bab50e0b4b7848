"""Sweeps that survive divergence and crashing jobs; runs that repeat exactly."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import pytest
from conftest import ROOT
from helpers import SHORT, numbers_of, read_summary, sweep_dir_of

TEST_CONF = f"hydra.searchpath=[file://{ROOT / 'tests' / 'conf'}]"


DIVERGING = {
    "lenet": ["model=lenet"],
    "lenet_bn1": ["model=lenet_bn1"],  # NaN running statistics: no histogram of them
    "lenet_bn1 vectorized": ["model=lenet_bn1", "sweep.vectorize=true"],
}


@pytest.mark.parametrize("model", list(DIVERGING))
def test_divergence_is_a_result_not_a_crash(cli, tmp_path, model):
    proc = cli("sweep.py", "-m", "optimizer=sgd", "optimizer.lr=0.01,1e38", "seeds=[0,1]", *SHORT,
               *DIVERGING[model])  # fmt: skip
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
        assert m["diverged"] is True and m["status"] == "finished"
        assert m["diverged_step"] == 1 if model == "lenet" else m["diverged_step"] >= 1
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


# on the CPU also where there is a GPU: equal numbers need deterministic kernels (the GPU's
# resume is tested in tests/test_gpu.py)
RESUMABLE = ["-m", "model=lenet_bn1,cnn_bn", "seeds=[0]", "threads=1", "trainer.accelerator=cpu",
             "data.train_size=1280",
             "trainer.max_epochs=3", "trainer.val_check_interval=7", "trainer.limit_val_batches=1",
             "trainer.limit_test_batches=1"]  # fmt: skip


@pytest.mark.slow
def test_kill_9_then_resume_equals_an_uninterrupted_sweep(cli, tmp_path, mnist_dir):
    whole = cli("sweep.py", *RESUMABLE)
    assert whole.returncode == 0, whole.stderr[-3000:]
    (whole_dir,) = (tmp_path / "outputs" / "sweep").iterdir()

    env = dict(os.environ, BNSWEEP_DATA=str(mnist_dir), CI="true")
    proc = subprocess.Popen([sys.executable, str(ROOT / "sweep.py"), *RESUMABLE], cwd=tmp_path, env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)  # fmt: skip
    deadline = time.time() + 300
    killed_in = None
    while time.time() < deadline and killed_in is None:
        for run in (tmp_path / "outputs" / "sweep").glob("*/1_*"):  # the second run (dropout, BN)
            if run not in whole_dir.iterdir() and (run / "ckpt" / "last.ckpt").exists():
                os.killpg(proc.pid, signal.SIGKILL)  # mid-run: checkpointed, not finished
                killed_in = run
        time.sleep(0.02)
    proc.wait()
    assert killed_in is not None and not (killed_in / "metrics.json").exists()
    sweep = killed_in.parent
    assert not (sweep / "summary.csv").exists()

    resumed = cli("sweep.py", *RESUMABLE, f"resume={sweep}")
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    metrics = json.loads((killed_in / "metrics.json").read_text())
    assert metrics["resumed_from_step"] is not None and metrics["resumed_from_step"] > 0
    first = json.loads((sweep / "0_model=lenet_bn1" / "metrics.json").read_text())
    assert first["resumed_from_step"] is None  # finished before the kill: skipped, not rerun
    assert numbers_of(sweep) == numbers_of(whole_dir)
    assert len((sweep / "command.txt").read_text().splitlines()) == 2


def test_a_finished_run_folder_is_never_overwritten(make_cfg, tmp_path):
    from bnsweep.run.training import run

    cfg = make_cfg("trainer.max_steps=3", "data.train_size=256", "logger=none", "trainer.limit_val_batches=1",
                   "trainer.limit_test_batches=1")  # fmt: skip
    first = run(cfg)
    before = (tmp_path / "run" / "metrics.json").read_text()
    with pytest.raises(FileExistsError, match="already holds a run; refusing to overwrite it"):
        run(cfg)
    cfg.resume = True
    assert run(cfg) == json.loads(before) == json.loads(json.dumps(first))  # skipped, unchanged
    other = make_cfg(
        "trainer.max_steps=3", "data.train_size=256", "logger=none", "seed=5", "resume=true"
    )
    with pytest.raises(FileExistsError, match="holds a run of another config"):
        run(other)
    assert (tmp_path / "run" / "metrics.json").read_text() == before


SWEEP_BAD_INPUT = [
    (["model=lenet9"], 1, "Could not find 'model/lenet9'"),
    (["bn.windw=3"], 1, "Key 'windw' is not in struct"),
    (["bn=window", "bn.window=abc"], 2, "error: bn.window must be a positive integer, got 'abc'"),
    (["bn=window", "bn.window=0"], 2, "error: bn.window must be a positive integer, got 0"),
    (["init.std=-1"], 2, "error: init.std must be a finite number > 0, got -1"),
    # checked before any job, not once per job (or never)
    (
        ["data.normalize=foo"],
        2,
        "error: data.normalize must be one of ['scale', 'standardize', 'per_pixel'], got 'foo'",
    ),
    (
        ["model=lenet_fc_bn2", "model.bn=[nonexistent_layer]"],
        2,
        "error: model.bn of LeNet names unknown layer(s) ['nonexistent_layer']; choose from ['conv1', 'conv2', 'fc1', 'fc2']",
    ),
    (
        ["trainer.max_epochs=0"],
        2,
        "error: trainer.max_epochs must be null, -1 (no limit) or an integer >= 1, got 0",
    ),
    (
        ["seeds=[4294967296]"],
        1,
        "error: seeds must be distinct integers in [0, 4294967295], got '[4294967296]'",
    ),
    (
        ["data.root=/nonexistent", "data.download=false"],
        2,
        "error: MNIST not found: put train-images",
    ),
    (["hydra.sweep.dir=/proc/bnsweep"], 2, "error: cannot write the sweep folder /proc/bnsweep"),
    (["seeds=a,b"], 1, "error: seeds must be a list of integers >= 0, got 'a,b'"),
    (
        ["resume=/nonexistent"],
        1,
        "error: resume=/nonexistent is not a sweep folder (no command.txt in it)",
    ),
]


@pytest.mark.parametrize(
    "args, code, message", SWEEP_BAD_INPUT, ids=[" ".join(a) for a, _, _ in SWEEP_BAD_INPUT]
)
def test_sweep_bad_input_one_line_and_no_run_folder(cli, tmp_path, args, code, message):
    proc = cli("sweep.py", *args, "trainer.max_steps=2", timeout=120)
    assert proc.returncode == code
    assert message in proc.stderr, proc.stderr[-2000:]
    if message.startswith("error:"):
        assert proc.stderr.strip().count("\n") == 0, proc.stderr
    sweeps = tmp_path / "outputs" / "sweep"
    assert not sweeps.exists() or list(sweeps.iterdir()) == []


def test_train_unwritable_output_folder(cli):
    proc = cli("train.py", "hydra.run.dir=/proc/bnsweep-run", timeout=120)
    assert proc.returncode == 1
    assert (
        proc.stderr.strip()
        == "error: cannot write the output folder /proc/bnsweep-run (/proc: No such file or directory)"
    )

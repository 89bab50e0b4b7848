"""Ctrl-C and SIGTERM: a run or a sweep ends with one line saying where it stopped and how to go
on, exit 130 / 143; the command it prints continues to the same numbers as an uninterrupted
run; nothing finished is lost and no partial record counts as finished."""

from __future__ import annotations

import json
import os
import re
import shlex
import signal
import subprocess
import sys
import time
from pathlib import Path

import inprocess
import pytest
from conftest import ROOT
from helpers import read_summary

# long enough to be interrupted after its first checkpoint (validated every 25 steps)
LONG = ["model=lenet_fc_bn2", "data.train_size=4000", "trainer.max_steps=125",
        "trainer.max_epochs=null", "trainer.val_check_interval=25",
        "trainer.check_val_every_n_epoch=null", "trainer.limit_val_batches=1",
        "trainer.limit_test_batches=1", "logger=csv"]  # fmt: skip


def start(script: str, args: list[str], cwd: Path, mnist_dir: Path) -> subprocess.Popen:
    env = dict(os.environ, BNSWEEP_DATA=str(mnist_dir), CI="true")
    return subprocess.Popen([sys.executable, str(ROOT / script), *args], cwd=cwd, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)  # fmt: skip


def wait_for(path_glob: str, folder: Path, proc: subprocess.Popen, timeout: float = 120) -> None:
    end = time.time() + timeout
    while not list(folder.glob(path_glob)):
        assert proc.poll() is None, proc.communicate()
        assert time.time() < end, f"no {path_glob} in {timeout} s"
        time.sleep(0.2)


def run_again(command: str, cwd: Path, mnist_dir: Path) -> subprocess.CompletedProcess:
    """The printed command, as a user pastes it (python SCRIPT ARGS)."""
    python, script, *args = shlex.split(command)
    assert python == "python"
    env = dict(os.environ, BNSWEEP_DATA=str(mnist_dir), CI="true")
    return inprocess.run(script, args, cwd=cwd, env=env)


@pytest.fixture(scope="module")
def whole(tmp_path_factory, mnist_dir) -> dict:
    """The record of LONG uninterrupted, trained once for the module's tests."""
    where = tmp_path_factory.mktemp("whole")
    env = dict(os.environ, BNSWEEP_DATA=str(mnist_dir), CI="true")
    proc = inprocess.run("train.py", [*LONG, f"hydra.run.dir={where / 'run'}"], cwd=where, env=env)
    assert proc.returncode == 0, proc.stderr
    return json.loads((where / "run" / "metrics.json").read_text())


@pytest.mark.parametrize("sig, status", [(signal.SIGINT, 130), (signal.SIGTERM, 143)])
def test_an_interrupted_run_says_where_and_goes_on_to_the_same_numbers(
    tmp_path, mnist_dir, whole, sig, status
):
    proc = start("train.py", [*LONG, "hydra.run.dir=cut"], tmp_path, mnist_dir)
    wait_for("cut/ckpt/last.ckpt", tmp_path, proc)
    proc.send_signal(sig)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == status
    (line,) = err.strip().splitlines()[-1:]
    found = re.fullmatch(
        r"interrupted at step (\d+) of 125 \(last checkpoint step (\d+)\); go on with: (.*)", line
    )
    assert found, err
    assert int(found[1]) >= int(found[2]) >= 25 and int(found[2]) % 25 == 0
    assert not (tmp_path / "cut" / "metrics.json").exists()  # no partial record
    command = found[3]
    assert command.startswith("python train.py model=lenet_fc_bn2 ") and command.endswith(
        f"hydra.run.dir={tmp_path / 'cut'} resume=true")  # fmt: skip
    again = run_again(command, tmp_path, mnist_dir)
    assert again.returncode == 0, again.stderr
    cut, full = json.loads((tmp_path / "cut" / "metrics.json").read_text()), whole
    assert cut["status"] == "finished" and cut["resumed_from_step"] == int(found[2])
    assert cut["history"] == full["history"] and cut["test/acc"] == full["test/acc"]


def test_an_interrupted_sweep_says_how_to_go_on_and_loses_nothing(tmp_path, mnist_dir):
    args = [*LONG, "bn=momentum,window,cumulative", "seeds=[0]", "hydra.sweep.dir=sw"]
    proc = start("sweep.py", args, tmp_path, mnist_dir)
    wait_for("sw/0_*/metrics.json", tmp_path, proc)
    wait_for("sw/1_*/ckpt/last.ckpt", tmp_path, proc)
    first = (next((tmp_path / "sw").glob("0_*/metrics.json"))).read_bytes()
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 130
    assert err.strip().splitlines()[-1] == (
        "interrupted at job 2 of 3 (1_bn=window); the runs that finished are kept; go on with: "
        f"python sweep.py {' '.join(LONG)} bn=momentum,window,cumulative 'seeds=[0]' resume={tmp_path / 'sw'}")  # fmt: skip
    assert not list((tmp_path / "sw").glob("1_*/metrics.json"))  # no partial record
    from bnsweep.report import report

    report(tmp_path / "sw", quiet=True)  # asked for now: it names the interrupted run
    assert "Unfinished (interrupted, or running now; resume= continues them): 1_bn=window." in (
        tmp_path / "sw" / "summary.md").read_text()  # fmt: skip
    again = run_again(err.strip().splitlines()[-1].split("go on with: ")[1], tmp_path, mnist_dir)
    assert again.returncode == 0, again.stderr
    assert next((tmp_path / "sw").glob("0_*/metrics.json")).read_bytes() == first  # kept as it was
    rows = read_summary(tmp_path / "sw")
    assert [r["bn"] for r in rows] == ["cumulative", "momentum", "window"]
    assert all(r["n_finished"] == "1" for r in rows)

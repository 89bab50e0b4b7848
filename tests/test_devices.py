"""One run on several devices (trainer.devices=N: Lightning's DDP, gloo processes on the CPU):
the shards of a step are the one-device run's batch, rank 0 alone writes, evaluations count
every image once, bn.sync gives the global batch's history, a rank that ends badly ends the
run in seconds with one line, and what cannot run on several processes is refused first."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import inprocess
import pytest
import torch
from conftest import ROOT
from helpers import refused_with

from bnsweep.config.checks import ConfigError, validate
from bnsweep.data.modules import Batches

STEPS = ["model=lenet_fc_bn2", "trainer.accelerator=cpu", "trainer.max_epochs=null",
         "trainer.max_steps=20", "trainer.val_check_interval=10",
         "trainer.check_val_every_n_epoch=null"]  # fmt: skip


def test_the_shards_of_a_step_are_the_one_device_batch() -> None:
    """Rank r's batches are rows r·B … (r+1)·B of the one-device run's batches of 2·B (the same
    permutation); a last global batch that is not full is left out of training."""
    x = torch.arange(50).float()[:, None]
    y = torch.arange(50)
    one = list(Batches(x, y, 8, shuffle=True, seed=3, drop_last=True))
    shards = [list(Batches(x, y, 4, shuffle=True, seed=3, rank=r, world=2)) for r in range(2)]
    assert len(shards[0]) == len(shards[1]) == len(one) == 6  # 50 // 8: the short one left out
    for step, (_, by) in enumerate(one):
        torch.testing.assert_close(torch.cat([shards[0][step][1], shards[1][step][1]]), by)


def test_evaluation_counts_every_image_once() -> None:
    """No sampler padding: 23 images, eval batches of 4 per rank on 3 ranks, every image in
    exactly one rank's batches."""
    x, y = torch.zeros(23, 1), torch.arange(23)
    seen = [int(v) for r in range(3) for _, by in Batches(x, y, 4, False, rank=r, world=3)
            for v in by]  # fmt: skip
    assert sorted(seen) == list(range(23))


@pytest.fixture(scope="module")
def histories(tmp_path_factory: pytest.TempPathFactory, mnist_dir: Path) -> dict[str, dict]:
    """20 steps of lenet_fc_bn2, global batch 64: two processes of 32 (synchronised BN and
    per-device BN) and one process of 64; validated at steps 10 and 20."""
    out = {}
    runs = {
        "two_sync": ["trainer.devices=2", "data.batch_size=32", "bn.sync=true"],
        "two_own": ["trainer.devices=2", "data.batch_size=32"],
        "one": ["trainer.devices=1", "data.batch_size=64"],
    }
    folder = tmp_path_factory.mktemp("devices")
    env = dict(os.environ, BNSWEEP_DATA=str(mnist_dir), CI="true")
    for name, args in runs.items():
        command = [*STEPS, *args, f"hydra.run.dir={folder / name}"]
        # rank 0 (and a run of one) in this process; Lightning starts rank 1 as a process
        proc = inprocess.run("train.py", command, cwd=folder, env=env, timeout=300)
        assert proc.returncode == 0, proc.stderr
        out[name] = {"record": json.loads((folder / name / "metrics.json").read_text()),
                     "files": sorted(p.name for p in (folder / name).iterdir()),
                     "stderr": proc.stderr}  # fmt: skip
    return out


def test_two_synchronised_processes_train_as_one_with_the_global_batch(histories) -> None:
    two, one = histories["two_sync"]["record"], histories["one"]["record"]
    assert two["history"]["val_step"] == one["history"]["val_step"] == [10, 20]
    for a, b in zip(two["history"]["val/loss"], one["history"]["val/loss"]):
        assert a == pytest.approx(b, rel=1e-4)
    # every one of the 5000 validation and 10000 test images once: the accuracies are counts of
    # them (at 25 % after 20 steps many logits are near ties: a few images may flip)
    assert two["history"]["val/acc"] == pytest.approx(one["history"]["val/acc"], abs=0.005)
    assert two["test/acc"] == pytest.approx(one["test/acc"], abs=0.005)
    for acc, n in ((two["test/acc"], 10000), *((a, 5000) for a in two["history"]["val/acc"])):
        assert round(acc * n, 2) == round(acc * n)
    assert two["device"] == "cpu ×2" and one["device"] == "cpu"


def test_a_sweep_point_on_two_devices_is_the_same_run(histories, tmp_path: Path, cli) -> None:
    """sweep.py's job for a point with trainer.devices=2 runs the point's two processes (its own
    train.py, Lightning's launcher) and computes what train.py computed alone."""
    proc = cli("sweep.py", *STEPS, "trainer.devices=2", "data.batch_size=32", "bn.sync=true",
               "seeds=[0]", f"hydra.sweep.dir={tmp_path / 'sweep'}", timeout=300)  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    (record,) = [json.loads(p.read_text()) for p in (tmp_path / "sweep").glob("*/metrics.json")]
    two = histories["two_sync"]["record"]
    assert record["history"]["val/loss"] == two["history"]["val/loss"]
    assert record["test/acc"] == two["test/acc"] and record["device"] == "cpu ×2"
    assert "| 1 / 0 / 0 |" in (tmp_path / "sweep" / "summary.md").read_text()


def test_per_device_statistics_differ_from_the_global_batch(histories) -> None:
    """Without bn.sync each process normalises its 32: another training (torch's default)."""
    own, one = histories["two_own"]["record"], histories["one"]["record"]
    assert own["history"]["val/loss"][-1] != pytest.approx(one["history"]["val/loss"][-1], rel=1e-4)


def test_rank_0_alone_writes_the_run(histories) -> None:
    two, one = histories["two_sync"], histories["one"]
    assert [f for f in two["files"] if "tfevents" not in f] == [f for f in one["files"]
                                                                 if "tfevents" not in f]  # fmt: skip
    assert sum("tfevents" in f for f in two["files"]) == 1
    assert "sync_dist" not in two["stderr"]  # the logged epoch metrics are already global


def test_a_killed_rank_ends_the_run_in_seconds_with_one_line(tmp_path: Path, mnist_dir: Path) -> None:
    env = dict(os.environ, BNSWEEP_DATA=str(mnist_dir), CI="true")
    proc = subprocess.Popen([sys.executable, str(ROOT / "train.py"), "model=lenet_fc_bn2",
                             "trainer.accelerator=cpu", "trainer.devices=2", "data.batch_size=32",
                             "trainer.max_epochs=5", f"hydra.run.dir={tmp_path / 'run'}"],
                            cwd=tmp_path, env=env, stderr=subprocess.PIPE, text=True)  # fmt: skip
    try:
        child = None
        deadline = time.time() + 120
        while child is None and time.time() < deadline and proc.poll() is None:
            time.sleep(0.5)
            for pid in os.listdir("/proc"):
                if _rank_1_of(proc.pid, pid):
                    child = int(pid)
        assert child is not None, "rank 1 never started"
        time.sleep(3)  # training
        os.kill(child, signal.SIGKILL)
        killed = time.time()
        _, err = proc.communicate(timeout=30)
        took = time.time() - killed
    finally:
        proc.kill()
    assert proc.returncode == 1
    assert took < 10, took
    line = err.strip().splitlines()[-1]
    assert line.startswith(f"error: rank 1 (PID {child}) was killed by signal 9, so every rank "
                           "stopped; resume=true continues from the last checkpoint"), err  # fmt: skip
    assert "Traceback" not in err


@pytest.mark.slow
def test_a_run_on_two_devices_killed_mid_run_resumes_to_the_same_numbers(tmp_path: Path,
                                                                          mnist_dir: Path) -> None:  # fmt: skip
    """Rank 1 killed after a checkpoint; resume=true continues on two processes from it and ends
    with the uninterrupted run's history, to the bit (the CPU's kernels are deterministic)."""
    env = dict(os.environ, BNSWEEP_DATA=str(mnist_dir), CI="true")
    args = [sys.executable, str(ROOT / "train.py"), "model=lenet_fc_bn2", "trainer.accelerator=cpu",
            "trainer.devices=2", "data.batch_size=32", "bn.sync=true", "trainer.max_epochs=null",
            "trainer.max_steps=400", "trainer.val_check_interval=20",
            "trainer.check_val_every_n_epoch=null", "trainer.limit_val_batches=1"]  # fmt: skip
    whole = subprocess.run([*args, f"hydra.run.dir={tmp_path / 'whole'}"], cwd=tmp_path, env=env,
                           capture_output=True, text=True, timeout=600)  # fmt: skip
    assert whole.returncode == 0, whole.stderr
    run = tmp_path / "cut"
    proc = subprocess.Popen([*args, f"hydra.run.dir={run}"], cwd=tmp_path, env=env,
                            stderr=subprocess.PIPE, text=True)  # fmt: skip
    try:
        deadline = time.time() + 300
        while not (run / "ckpt" / "last.ckpt").exists():
            assert proc.poll() is None and time.time() < deadline, "no checkpoint was written"
            time.sleep(0.1)
        children = [int(p) for p in os.listdir("/proc")
                    if _rank_1_of(proc.pid, p)]  # fmt: skip
        os.kill(children[0], signal.SIGKILL)
        proc.communicate(timeout=60)
    finally:
        proc.kill()
    assert proc.returncode == 1 and not (run / "metrics.json").exists()
    again = subprocess.run([*args, f"hydra.run.dir={run}", "resume=true"], cwd=tmp_path, env=env,
                           capture_output=True, text=True, timeout=600)  # fmt: skip
    assert again.returncode == 0, again.stderr
    a = json.loads((run / "metrics.json").read_text())
    b = json.loads((tmp_path / "whole" / "metrics.json").read_text())
    assert a["resumed_from_step"] and 0 < a["resumed_from_step"] < 400
    assert a["history"]["val/loss"] == b["history"]["val/loss"]
    assert a["test/acc"] == b["test/acc"] and a["steps"] == b["steps"] == 400


def _rank_1_of(parent: int, pid: str) -> bool:
    """Whether process ``pid`` is rank 1 started by ``parent`` (Lightning's launcher), not
    another test's, which pytest-xdist may be running beside this one."""
    if not pid.isdigit() or b"train_ddp_process_1" not in _cmdline(pid):
        return False
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return int(stat.rsplit(")", 1)[1].split()[1]) == parent


def _cmdline(pid: str) -> bytes:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return b""


@pytest.mark.parametrize(
    "overrides, message",
    [
        (["bn=population"], "bn.precise_batches='all' with trainer.devices=2: PreciseBN (and "
         "bn=population) recomputes the statistics in one process; use trainer.devices=1"),
        (["+probes.every=10"], "probes.every=10 with trainer.devices=2: the loss-landscape probes "
         "step along one process's gradient; use trainer.devices=1"),
        (["trainer.compile=true"], "trainer.compile=true with trainer.devices=2 is not supported; "
         "use trainer.devices=1 or trainer.compile=false"),
        (["+trainer.strategy=ddp_spawn"], "trainer.strategy=ddp_spawn with trainer.devices=2: "
         "bnsweep runs several devices with Lightning's ddp (trainer.strategy=auto or ddp)"),
        (["bn=ghost", "bn.sync=true"], "bn.sync=true normalises the global batch, which ghost "
         "batches split: got bn.ghost_batch_size=8"),
        (["bn=renorm", "bn.sync=true"], "bn.sync=true: batch renormalization (bn=renorm) keeps "
         "per-device statistics; use bn=momentum, window or cumulative"),
        (["bn=torch", "bn.sync=true"], "bn.sync=true with bn=torch needs GPUs (torch's "
         "SyncBatchNorm); on the CPU our layer synchronises: bn=momentum"),
    ],
)
def test_what_one_process_computes_is_refused_on_several(make_cfg, overrides, message) -> None:
    cfg = make_cfg("model=lenet_fc_bn2", "trainer.accelerator=cpu", "trainer.devices=2", *overrides)
    with pytest.raises(ConfigError) as e:
        validate(cfg)
    assert str(e.value) == message


@pytest.mark.parametrize(
    "script, args, message",
    [
        ("sweep.py", ["sweep.vectorize=true", "seeds=[0,1]"], "sweep.vectorize=true trains a "
         "point's seeds as one network on one device; with trainer.devices=2 use "
         "sweep.vectorize=false"),
        ("train.py", ["bn=torch", "bn.sync=true"], "bn.sync=true with bn=torch needs GPUs "
         "(torch's SyncBatchNorm); on the CPU our layer synchronises: bn=momentum"),
    ],
)
def test_a_refused_run_of_several_leaves_nothing(cli, tmp_path: Path, script, args, message) -> None:
    proc = cli(script, "model=lenet_fc_bn2", "trainer.accelerator=cpu", "trainer.devices=2", *args,
               timeout=60)  # fmt: skip
    assert refused_with(proc, f"error: {message}"), proc.stderr
    assert not (tmp_path / "outputs").exists()


@pytest.mark.parametrize("key", ["bn.sync=true", "trainer.sync_batchnorm=true"])
def test_sync_reaches_our_layers(make_cfg, key: str) -> None:
    """Lightning's sync_batchnorm converts torch's BN only; bnsweep's layers get it too."""
    from bnsweep.nn import BatchNorm, norm_layers
    from bnsweep.run.training import build_net

    args = [key] if key.startswith("bn.") else [f"+{key}"]
    layers = norm_layers(build_net(make_cfg("model=lenet_fc_bn2", *args))).values()
    plain = norm_layers(build_net(make_cfg("model=lenet_fc_bn2"))).values()
    assert [type(m) for m in layers] == [type(m) for m in plain] and len(layers) == 4
    assert all(isinstance(m, BatchNorm) and m.sync for m in layers)
    assert not any(m.sync for m in plain)


def test_torchs_own_bn_kept_in_a_network_is_refused_sync_on_the_cpu(make_cfg) -> None:
    """A network of the user's that keeps torch's BatchNorm (model.convert_bn=false): bn.sync on
    several CPU processes is refused in one line before the run (torch's SyncBatchNorm would
    raise at the first step); on one device it changes nothing."""
    from bnsweep.run.training import synchronised

    net = torch.nn.Sequential(torch.nn.Linear(4, 3), torch.nn.BatchNorm1d(3))
    cfg = make_cfg("trainer.accelerator=cpu", "trainer.devices=2", "bn.sync=true")
    with pytest.raises(ConfigError) as e:
        synchronised(net, cfg)
    assert str(e.value) == ("bn.sync=true: layer 1 is torch's BatchNorm, whose SyncBatchNorm runs "
                            "on GPUs only; on the CPU let bnsweep swap it for its own (without "
                            "model.convert_bn=false)")  # fmt: skip
    one = synchronised(net, make_cfg("trainer.accelerator=cpu", "bn.sync=true"))
    assert isinstance(one[1], torch.nn.SyncBatchNorm)  # one process: it normalises as BN does



def test_a_sweep_point_refused_by_its_train_py_records_nothing(make_cfg, tmp_path, monkeypatch):
    """A point on several devices whose folder holds another run: its train.py refuses it, and
    the job reports a refusal (RunRefused, as in one process) and writes nothing into the folder."""
    from bnsweep.files import write_json
    from bnsweep.run.folders import RunRefused
    from bnsweep.sweep import point_process

    cfg = make_cfg("model=lenet_fc_bn2", "trainer.devices=2", "trainer.accelerator=cpu")
    run_dir = Path(cfg.run_dir)
    run_dir.mkdir(parents=True)
    write_json(run_dir / "run_config.json", {"model": "another run's"})
    before = {p.name: p.read_bytes() for p in run_dir.iterdir()}
    monkeypatch.setattr(point_process, "command", lambda cfg: ["train.py"])
    refused = subprocess.CompletedProcess([], 2, "", f"error: {run_dir} holds a run of another config\n")
    monkeypatch.setattr(point_process.subprocess, "run", lambda *a, **k: refused)
    with pytest.raises(RunRefused, match="holds a run of another config"):
        point_process.run_processes(cfg)
    assert {p.name: p.read_bytes() for p in run_dir.iterdir()} == before

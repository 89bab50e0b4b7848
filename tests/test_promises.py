"""What bnsweep promises: nothing a user finished is ever lost or silently changed, whatever
they type and whatever fails (reruns, resumes, moved folders, kills, full disks, concurrent
processes, damaged files)."""

from __future__ import annotations

import errno
import json
import os
import shutil
import subprocess
import time
from pathlib import Path

import inprocess
import pytest
import torch
from helpers import SHORT, popen, read_summary, refused_with, report_command, tree

# numbers that must repeat exactly after a resume (times and the resume's own step excluded)
VOLATILE = (
    "wall_time_s",
    "fit_time_s",
    "startup_s",
    "resumed_from_step",
    "job_wall_time_s",
    "overrides",
)  # the command line (resume=true), not a result


SWEEP = ["model=lenet_bn1", "seeds=[0,1]", *SHORT, "trainer.accelerator=cpu"]
RUN = ["model=lenet_bn1", *SHORT, "trainer.accelerator=cpu"]


def _made(script: str, folder_key: str, args: list[str], tmp_path_factory, mnist_dir) -> Path:
    where = tmp_path_factory.mktemp("made")
    env = dict(os.environ, BNSWEEP_DATA=str(mnist_dir), CI="true")
    proc = inprocess.run(script, [*args, f"{folder_key}={where / 'folder'}"], cwd=where, env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return where / "folder"


@pytest.fixture(scope="module")
def finished_sweep(tmp_path_factory, mnist_dir) -> Path:
    """A finished sweep of SWEEP (2 runs), made once per module: tests get copies (a copy is a
    sweep folder moved elsewhere, too)."""
    return _made("sweep.py", "hydra.sweep.dir", SWEEP, tmp_path_factory, mnist_dir)


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory, mnist_dir) -> Path:
    """A finished train.py run of RUN, made once per module; tests get copies."""
    return _made("train.py", "hydra.run.dir", RUN, tmp_path_factory, mnist_dir)


def copy_of(folder: Path, dest: Path) -> Path:
    shutil.copytree(folder, dest)
    return dest


def same_numbers(a: dict, b: dict) -> None:
    differ = {k: (a.get(k), b.get(k)) for k in sorted(set(a) | set(b))
              if k not in VOLATILE and a.get(k) != b.get(k)}  # fmt: skip
    assert not differ


# ---------------------------------------------------------------------------------------------
# a rerun or a resume never changes a finished run


def test_a_rerun_into_a_finished_sweep_folder_changes_nothing(cli, tmp_path, finished_sweep):
    """Item 1: the same sweep again into its folder, or a resume with another setting, is
    refused in one line before any job; a job whose folder holds another config is refused
    and its folder left byte for byte; neither is recorded as a failure of that run."""
    d = copy_of(finished_sweep, tmp_path / "D")
    args = [*SWEEP, f"hydra.sweep.dir={d}"]
    before = tree(d)

    again = cli("sweep.py", *args)
    assert refused_with(
        again,
        (
            f"error: hydra.sweep.dir={d} already holds a sweep; resume={d} continues it, or choose "
            "another folder"
        ),
    )
    assert tree(d) == before

    changed = cli("sweep.py", *args, "optimizer.lr=0.01", f"resume={d}")
    assert changed.returncode == 2
    assert changed.stderr.strip().startswith(f"error: resume={d} would change the sweep it holds")
    assert "optimizer.lr: (unset) → 0.01" in changed.stderr
    assert tree(d) == before

    # the config a run was made with changed under it (say, a default in conf/ since): that
    # job is refused, its folder untouched; the other run is skipped as finished
    victim = d / "0_seed=0"
    saved = json.loads((victim / "run_config.json").read_text())
    saved["optimizer"]["lr"] = 0.002
    (victim / "run_config.json").write_text(json.dumps(saved))
    victim_before = tree(victim)
    resumed = cli("sweep.py", *args, f"resume={d}")
    assert resumed.returncode == 1
    lines = resumed.stderr.strip().splitlines()
    assert (
        f"refused: {victim} holds a run of another config (optimizer.lr: 0.002 → 0.001)" in lines[0]
    )
    assert lines[-1].startswith("error: 1 job(s) refused, their folders left as they were:")
    assert tree(victim) == victim_before
    assert json.loads((victim / "metrics.json").read_text())["status"] == "finished"
    other = json.loads((d / "1_seed=1" / "metrics.json").read_text())
    assert other["resumed_from_step"] is None  # finished: skipped, not run again
    assert sorted(p.name for p in d.iterdir() if p.is_dir() and p.name != "aggregate") == [
        "0_seed=0", "1_seed=1"
    ]  # fmt: skip


def test_a_moved_sweep_folder_resumes(cli, tmp_path, finished_sweep):
    """Item 2: configs are compared without the paths of the folder itself, so a sweep moved
    elsewhere (here: copied from where it was made) resumes: its finished run is skipped, its
    interrupted one continues."""
    d = copy_of(finished_sweep, tmp_path / "B")
    interrupted = d / "1_seed=1" / "metrics.json"
    whole = json.loads(interrupted.read_text())
    interrupted.unlink()  # as if killed after its last checkpoint
    finished = tree(d / "0_seed=0")
    csv_before = (d / "1_seed=1" / "csv" / "metrics.csv").read_text().splitlines()
    resumed = cli("sweep.py", *SWEEP, f"resume={d}")
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert tree(d / "0_seed=0") == finished
    # the interrupted run's CSV history is kept, the resumed part appended after it
    csv_after = (d / "1_seed=1" / "csv" / "metrics.csv").read_text().splitlines()
    assert csv_after[: len(csv_before)] == csv_before and len(csv_after) > len(csv_before)
    after = json.loads(interrupted.read_text())
    assert after["resumed_from_step"] == 20
    same_numbers(after, whole)
    assert [r["n_finished"] for r in read_summary(d)] == ["2"]


def test_a_resume_that_extends_a_swept_list_never_counts_a_seed_twice(
    cli, tmp_path, finished_sweep
):
    """Item 6: resuming with more values of a swept key (here a fixed key turned into a swept
    one) finds the existing runs by their config, whatever the new job numbers and names."""
    d = copy_of(finished_sweep, tmp_path / "D")
    finished = {name: tree(d / name) for name in ("0_seed=0", "1_seed=1")}
    more = cli("sweep.py", "model=lenet_bn1,lenet_fc_bn2", *SWEEP[1:], f"resume={d}")
    assert more.returncode == 0, more.stderr[-3000:]
    runs = sorted(p.parent.name for p in d.glob("*/metrics.json"))
    assert runs == ["0_seed=0", "1_seed=1", "2_model=lenet_fc_bn2,seed=0",
                    "3_model=lenet_fc_bn2,seed=1"]  # fmt: skip
    for name, files in finished.items():
        assert tree(d / name) == files
    rows = {r["model"]: r for r in read_summary(d)}
    assert {m: (r["n_finished"], r["seeds"]) for m, r in rows.items()} == {
        "lenet_bn1": ("2", "0 1"), "lenet_fc_bn2": ("2", "0 1")
    }  # fmt: skip


def test_a_refused_train_run_leaves_the_finished_folder_as_it_was(cli, tmp_path, finished_run):
    """Item 9: train.py into a folder holding a finished run, without resume or with another
    setting, is refused in one line; the folder, its .hydra/ included, is unchanged."""
    d = copy_of(finished_run, tmp_path / "run")
    args = [*RUN, f"hydra.run.dir={d}"]
    assert (d / ".hydra" / "config.yaml").is_file() and (d / ".hydra" / "overrides.yaml").is_file()
    before = tree(d)
    again = cli("train.py", *args)
    assert refused_with(
        again,
        (
            f"error: {d} already holds a run; refusing to overwrite it (resume=true skips a "
            "finished run and continues an interrupted one)"
        ),
    )
    other = cli("train.py", *args, "optimizer.lr=0.01", "resume=true")
    assert other.returncode == 2
    assert other.stderr.strip().startswith(
        f"error: {d} holds a run of another config (optimizer.lr: 0.001 → 0.01)"
    )
    assert tree(d) == before


# ---------------------------------------------------------------------------------------------
# kills and full disks: the files on disk are always whole, and a resume is exact


def _run_cfg(make_cfg, run_dir: Path, *extra: str):
    return make_cfg("model=lenet_bn1", "data.train_size=640", "trainer.limit_val_batches=1",
                    "trainer.limit_test_batches=1", f"run_dir={run_dir}", *extra)  # fmt: skip


SCHEDULES = {
    "epochs": ["trainer.max_epochs=2"],  # the last validation at the last epoch's end
    "steps": ["trainer.max_epochs=null", "trainer.max_steps=25", "trainer.val_check_interval=10",
              "trainer.check_val_every_n_epoch=null"],  # stops mid-epoch: a final validation
}  # fmt: skip


@pytest.mark.parametrize("schedule", list(SCHEDULES))
@pytest.mark.parametrize("killed_at", ["final checkpoint", "metrics.json"])
def test_a_kill_after_training_ended_resumes_to_the_same_metrics(
    make_cfg, tmp_path, monkeypatch, schedule, killed_at
):
    """Item 5: a kill after the last training step (before or after the final state's
    checkpoint, before metrics.json) resumes to exactly the metrics of an uninterrupted run,
    training metrics, epochs and history included."""
    import bnsweep.run.training
    from bnsweep.run.lit import LitClassifier
    from bnsweep.run.training import run

    whole = run(_run_cfg(make_cfg, tmp_path / "whole", *SCHEDULES[schedule]))

    def killed(*args, **kwargs):
        raise KeyboardInterrupt("killed")

    if killed_at == "metrics.json":
        monkeypatch.setattr(bnsweep.run.training, "write_record", lambda run_dir, record: killed())
    else:
        save = LitClassifier.on_save_checkpoint
        monkeypatch.setattr(LitClassifier, "on_save_checkpoint",
                            lambda self, c: killed() if self.fit_done else save(self, c))  # fmt: skip
    with pytest.raises(KeyboardInterrupt):
        run(_run_cfg(make_cfg, tmp_path / "run", *SCHEDULES[schedule]))
    monkeypatch.undo()
    assert not (tmp_path / "run" / "metrics.json").exists()
    resumed = run(_run_cfg(make_cfg, tmp_path / "run", *SCHEDULES[schedule], "resume=true"))
    same_numbers(resumed, whole)
    assert resumed["train/acc"] is not None and resumed["epochs"] == whole["epochs"]


def test_a_kill_after_a_vectorized_job_ended_resumes_to_the_same_metrics(
    tmp_path, mnist_dir, monkeypatch
):
    """Item 5, vectorized: killed after the members' final checkpoints, before their
    metrics.json: the resumed members' metrics equal the uninterrupted job's."""
    from conftest import compose_cfg

    import bnsweep.sweep.vectorize
    from bnsweep.sweep.vectorize import run_members

    def cfg(name: str, *extra: str):
        return compose_cfg("sweep", [f"run_dir={tmp_path / name}", f"data.root={mnist_dir}",
                                     "data.download=false", "trainer.accelerator=cpu",
                                     "model=lenet_fc_bn2", "seeds=[0,1]", *SHORT, *extra])  # fmt: skip

    whole = run_members(cfg("whole"))

    def killed_at_metrics(run_dir, record):  # the kill comes as metrics.json is written
        raise KeyboardInterrupt("killed")

    monkeypatch.setattr(bnsweep.sweep.vectorize, "write_record", killed_at_metrics)
    with pytest.raises(KeyboardInterrupt):
        run_members(cfg("job"))
    monkeypatch.undo()
    resumed = run_members(cfg("job", "resume=true"))
    for r, w in zip(resumed, whole):
        same_numbers(r, w)


def test_a_failed_write_leaves_the_old_file_whole(tmp_path, monkeypatch):
    """Item 4: a write that fails midway (a kill, a full disk) leaves the old file byte for byte
    and no temporary file beside it."""
    from bnsweep.files import atomic_write

    path = tmp_path / "last.ckpt"
    path.write_bytes(b"old checkpoint")

    def failing_fsync(fd):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "fsync", failing_fsync)
    with pytest.raises(OSError, match="No space left"):
        atomic_write(path, b"new" * 1000, keep_previous=tmp_path / "prev.ckpt")
    assert path.read_bytes() == b"old checkpoint"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["last.ckpt"]


@pytest.fixture
def small_disk(tmp_path):
    """A tmpfs of a few MiB at tmp_path/disk (a file system of its own, as a run folder on
    another disk than /tmp is), and a way to fill it; needs root (CI runs as root)."""
    disk = tmp_path / "disk"
    disk.mkdir()
    made = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=48m", "tmpfs", str(disk)],
                          capture_output=True, text=True)  # fmt: skip
    if made.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here (needs root): {made.stderr.strip()}")
    yield disk
    subprocess.run(["umount", "-l", str(disk)], check=False)


def fill(disk: Path) -> Path:
    """Fill ``disk`` to the last page; returns the filler file (delete it to free the space)."""
    filler = disk / "filler"
    with open(filler, "wb", buffering=0) as f:
        for chunk in (1 << 20, 4096, 1):
            try:
                while True:
                    f.write(b"\0" * chunk)
            except OSError as e:
                assert e.errno == errno.ENOSPC
    return filler


def test_a_full_disk_mid_run_keeps_the_last_checkpoint_and_the_resume_is_exact(
    make_cfg, tmp_path, small_disk, monkeypatch
):
    """Item 4: the disk fills after the first checkpoint; the next write fails with ENOSPC,
    last.ckpt is still the whole first checkpoint, and once there is space again the resume
    ends with the numbers of an uninterrupted run."""
    import pytorch_lightning as pl

    from bnsweep.run.training import run

    schedule = SCHEDULES["steps"]
    whole = run(_run_cfg(make_cfg, tmp_path / "whole", *schedule))
    save, filled = pl.Trainer.save_checkpoint, []

    def save_then_fill(trainer, path, *args, **kwargs):
        save(trainer, path, *args, **kwargs)
        if Path(path).name == "last.ckpt" and not filled:
            filled.append((fill(small_disk), trainer.global_step))

    monkeypatch.setattr(pl.Trainer, "save_checkpoint", save_then_fill)
    run_dir = small_disk / "run"
    with pytest.raises(OSError) as err:
        run(_run_cfg(make_cfg, run_dir, *schedule))
    assert err.value.errno == errno.ENOSPC
    monkeypatch.undo()
    ckpt = run_dir / "ckpt"
    filler, step = filled[0]
    last = torch.load(ckpt / "last.ckpt", map_location="cpu", weights_only=True)
    assert last["global_step"] == step  # whole, readable
    assert not [p for p in ckpt.iterdir() if ".tmp" in p.name]
    filler.unlink()
    resumed = run(_run_cfg(make_cfg, run_dir, *schedule, "resume=true"))
    assert resumed["resumed_from_step"] == step
    same_numbers(resumed, whole)


def test_a_damaged_last_checkpoint_falls_back_to_the_previous_one(make_cfg, tmp_path, capfd):
    """Items 4 and 13: a truncated or garbage last.ckpt is named in a one-line warning, the run
    resumes from prev.ckpt, and ends with the uninterrupted run's numbers; with no readable
    checkpoint at all it starts over (one line), never a traceback."""
    from bnsweep.run import checkpoints
    from bnsweep.run.training import run

    schedule = SCHEDULES["steps"]
    whole = run(_run_cfg(make_cfg, tmp_path / "whole", *schedule))
    run_dir = tmp_path / "run"
    run(_run_cfg(make_cfg, run_dir, *schedule))
    (run_dir / "metrics.json").unlink()  # as if killed while writing the next checkpoint
    last, prev = run_dir / "ckpt" / "last.ckpt", run_dir / "ckpt" / "prev.ckpt"
    step_prev = checkpoints.load(prev)["global_step"]
    last.write_bytes(last.read_bytes()[:1000])  # truncated
    capfd.readouterr()
    resumed = run(_run_cfg(make_cfg, run_dir, *schedule, "resume=true"))
    warning = capfd.readouterr().err.strip().splitlines()
    assert warning == [f"warning: {last} cannot be read (RuntimeError); resuming from {prev} "
                       f"(step {step_prev})"]  # fmt: skip
    assert resumed["resumed_from_step"] == step_prev
    same_numbers(resumed, whole)

    (run_dir / "metrics.json").unlink()
    for p in (run_dir / "ckpt").glob("*.ckpt"):
        p.write_bytes(b"garbage")
    again = run(_run_cfg(make_cfg, run_dir, *schedule, "resume=true"))
    err = capfd.readouterr().err.strip().splitlines()
    assert err[-1].endswith("and no earlier checkpoint reads; the run starts over")
    assert again["resumed_from_step"] is None
    same_numbers(again, whole)


@pytest.mark.parametrize("damaged", ["run_config.json", "metrics.json"])
def test_a_damaged_run_file_is_named_in_one_line(cli, tmp_path, finished_run, damaged):
    """Item 13: a resume into a run folder whose run_config.json or metrics.json does not read
    names that file in one line (exit 2) and leaves the folder as it was."""
    d = copy_of(finished_run, tmp_path / "run")
    args = [*RUN, f"hydra.run.dir={d}"]
    (d / damaged).write_text('{"status": "fini')
    before = tree(d)
    proc = cli("train.py", *args, "resume=true")
    assert proc.returncode == 2
    assert proc.stderr.strip().startswith(f"error: {d / damaged} is damaged (not valid JSON:")
    assert proc.stderr.strip().count("\n") == 0
    assert tree(d) == before


def test_the_report_names_and_skips_a_damaged_run(tmp_path, finished_sweep):
    """Item 13: python -m bnsweep.report over a sweep with one unreadable metrics.json reports
    the others and names the bad one in a one-line warning."""
    sweep = copy_of(finished_sweep, tmp_path / "D")
    bad = sweep / "1_seed=1" / "metrics.json"
    bad.write_text("not json")
    again = report_command(str(sweep))
    assert again.returncode == 0, again.stderr
    assert again.stderr.strip().splitlines() == [
        f"warning: skipped {bad}: it is damaged (not valid JSON: Expecting value: line 1 column 1 (char 0))"
    ]
    assert [r["n_finished"] for r in read_summary(sweep)] == ["1"]


def sys_executable() -> str:
    import sys

    return sys.executable


def test_a_full_disk_during_a_sweep_is_one_line_and_what_finished_is_kept(
    tmp_path, small_disk, mnist_dir
):
    """Item 15: the disk fills while the second of three runs trains: one line naming the
    folder, exit 1, no traceback; the first run is intact; the third never starts; once there
    is room again, resume= finishes the sweep."""
    d = small_disk / "sweep"
    args = [
        "model=lenet_bn1",
        "seeds=[0,1,2]",
        *SHORT,
        "trainer.max_steps=60",
        f"hydra.sweep.dir={d}",
    ]
    proc = popen("sweep.py", *args, cwd=tmp_path, mnist_dir=mnist_dir)
    filler = None
    deadline = time.time() + 300
    while filler is None and time.time() < deadline and proc.poll() is None:
        if (d / "1_seed=1" / "ckpt" / "last.ckpt").exists():
            filler = fill(small_disk)
        time.sleep(0.01)
    out, err = proc.communicate(timeout=300)
    assert filler is not None and proc.returncode == 1, err[-3000:]
    lines = err.strip().splitlines()
    assert "Traceback" not in err
    assert any(line.startswith("error: no space left on the device of") for line in lines), err
    assert lines[-1].startswith("error: the sweep stopped early (no space left on the device of")
    first = json.loads((d / "0_seed=0" / "metrics.json").read_text())
    assert first["status"] == "finished"
    assert not (d / "2_seed=2").exists()
    filler.unlink()
    resumed = inprocess.run("sweep.py", [*args, f"resume={d}"], cwd=tmp_path,
                            env=dict(os.environ, BNSWEEP_DATA=str(mnist_dir), CI="true"))  # fmt: skip
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert [r["n_finished"] for r in read_summary(d)] == ["3"]


# ---------------------------------------------------------------------------------------------
# one process per folder


def test_a_folder_lock_names_the_holder(tmp_path):
    from bnsweep.files import FolderInUse, FolderLock

    with FolderLock(tmp_path, "run folder"):
        probe = subprocess.run(
            [sys_executable(), "-c", "import sys; from bnsweep.files import FolderLock; "
             "FolderLock(sys.argv[1], 'run folder')", str(tmp_path)],
            capture_output=True, text=True,
        )  # fmt: skip
        assert probe.returncode != 0
        assert (
            f"bnsweep.files.FolderInUse: run folder {tmp_path} is in use by PID {os.getpid()}"
            in probe.stderr
        )
    with FolderLock(tmp_path):  # released: free again
        pass
    assert list(tmp_path.iterdir()) == []  # the lock wrote nothing into the folder
    with FolderLock(tmp_path), pytest.raises(FolderInUse):  # within one process as well
        FolderLock(tmp_path)


def test_two_sweeps_into_one_folder_the_second_is_refused(cli, tmp_path, mnist_dir):
    """Item 7: while a sweep runs, a second one into its folder is refused in one line naming
    the first one's PID, and writes nothing there; so is a second train.py into a run folder."""
    d = tmp_path / "D"
    args = [
        "model=lenet_bn1",
        "seeds=[0,1]",
        *SHORT,
        "trainer.max_steps=200",
        f"hydra.sweep.dir={d}",
    ]
    first = popen("sweep.py", *args, cwd=tmp_path, mnist_dir=mnist_dir)
    try:
        deadline = time.time() + 120
        while not (d / "0_seed=0" / "run_config.json").exists() and time.time() < deadline:
            time.sleep(0.05)
        before = (d / "command.txt").read_text()
        second = cli("sweep.py", *args, f"resume={d}")
        assert second.returncode == 2
        assert second.stderr.strip() == (
            f"error: sweep folder {d} is in use by PID {first.pid}; wait for it to end, or use "
            "another folder"
        )
        assert (d / "command.txt").read_text() == before
        run = d / "0_seed=0"
        train = cli("train.py", "model=lenet_bn1", *SHORT, f"hydra.run.dir={run}", "resume=true")
        if first.poll() is None and not (run / "metrics.json").exists():
            assert train.returncode == 2
            assert train.stderr.strip().startswith(f"error: run folder {run} is in use by PID")
    finally:
        first.kill()
        first.communicate()


# ---------------------------------------------------------------------------------------------
# the data a run trains on is what was checked


def test_a_changed_byte_in_the_dataset_cache_is_noticed(mnist_dir, tmp_path, monkeypatch):
    """Item 11: the decoded cache carries the CRC-32 of the verified arrays; a cache whose bytes
    changed (same size: a flipped byte, two bytes swapped, which a sum would miss) is not used:
    the sources are decoded and checked again, and the cache rewritten."""
    from bnsweep.data.cache import load_raw
    from bnsweep.data.catalog import DATASETS

    monkeypatch.setenv("BNSWEEP_CACHE", str(tmp_path / "cache"))
    mnist = DATASETS["mnist"]
    truth = load_raw(mnist, mnist_dir, download=False, cache=False)
    load_raw(mnist, mnist_dir, download=False)
    (cache,) = (tmp_path / "cache").glob("mnist-*.u8")
    clean = cache.read_bytes()
    middle = 28 * 28 * 30000 + 400  # a pixel of a training image near its centre

    def flipped(data: bytearray) -> None:
        data[-1] ^= 0xFF  # the last test label

    def swapped(data: bytearray) -> None:
        i = next(j for j in range(middle, len(data)) if data[j] != data[j + 1])
        data[i], data[i + 1] = data[i + 1], data[i]

    for damage in (flipped, swapped):
        data = bytearray(clean)
        damage(data)
        cache.write_bytes(bytes(data))
        again = load_raw(mnist, mnist_dir, download=False)
        for key, value in truth.items():
            assert torch.equal(again[key], value), (damage.__name__, key)
        assert cache.read_bytes() == clean, damage.__name__  # the cache was rewritten

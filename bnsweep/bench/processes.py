"""Benchmark rows that time whole processes: a sweep's launchers, the data path, start-up to
the first training step, and peak memory."""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

from bnsweep.bench.steps import STEP_RUN
from bnsweep.bench.timing import ROOT

SHORT_RUN = [
    "model=lenet_fc_bn2",
    "trainer.max_epochs=1",
    "trainer.limit_train_batches=300",
    "trainer.limit_val_batches=1",
    "trainer.limit_test_batches=1",
    "trainer.enable_progress_bar=false",
]


def run_sweep(args: list[str], out: Path) -> tuple[float, list[dict]]:
    """Wall seconds of ``python sweep.py ARGS`` writing into ``out``, and its runs' metrics.json
    (each with the job's own wall time: building, training, validation, test, no start-up)."""
    cmd = [sys.executable, str(ROOT / "sweep.py"), *args, f"hydra.sweep.dir={out}"]
    start = time.perf_counter()
    proc = subprocess.run(cmd, cwd=out.parent, capture_output=True, text=True)
    wall = time.perf_counter() - start
    if proc.returncode != 0:
        raise RuntimeError(f"sweep failed ({' '.join(cmd)}):\n{proc.stderr[-2000:]}")
    return wall, [json.loads(p.read_text()) for p in out.glob("*/metrics.json")]


def timed_sweep(n: int, launcher: list[str], out: Path) -> tuple[float, list[float], int]:
    """``run_sweep`` of n short runs (n seeds of one point): its wall seconds, each job's, and
    how many process start-ups they paid (the processes that ran them)."""
    seeds = ",".join(str(s) for s in range(n))
    wall, runs = run_sweep([f"seeds=[{seeds}]", *SHORT_RUN, *launcher], out)
    from bnsweep.sweep.jobs import jobs_since

    startups = len({j["pid"] for j in jobs_since(out, 0)})  # one per process that ran jobs
    return wall, [r["wall_time_s"] for r in runs], startups


def sweep_rows(ns: list[int], rounds: int) -> list[str]:
    """N short runs: the basic launcher (one after another) vs joblib with 2 workers, alternating
    over ``rounds`` (medians: this machine's speed drifts by tens of percent between minutes);
    then one job's time in each, which bounds what two workers on two cores can gain, and the
    largest N's joblib speed-up as a fraction of that ceiling."""
    joblib = ["hydra/launcher=joblib", "hydra.launcher.n_jobs=2"]
    rows, seq_jobs, par_jobs, last = [], [], [], None
    with tempfile.TemporaryDirectory() as tmp:
        for n in ns:
            seq, par, startups = [], [], []
            for r in range(rounds):
                wall, jobs, _ = timed_sweep(n, [], Path(tmp) / f"seq{n}-{r}")
                seq.append(wall)
                seq_jobs += jobs
                wall, jobs, paid = timed_sweep(n, joblib, Path(tmp) / f"joblib{n}-{r}")
                par.append(wall)
                par_jobs += jobs if n >= 2 else []  # side by side only from 2 jobs on
                startups.append(paid)
            a, b = statistics.median(seq), statistics.median(par)
            last = (n, a / b)
            rows.append(
                f"| sweep, N = {n} short runs ({rounds} rounds) | sequential (basic launcher) vs "
                f"joblib × 2 (start-ups paid: {max(startups)} for {n} jobs) | {a:.1f} s | {b:.1f} s "
                f"| joblib {a / b:.2f}× as fast | |"
            )
    if not par_jobs:
        return rows
    a, b = statistics.median(seq_jobs), statistics.median(par_jobs)
    ceiling = 2 * a / b
    rows.append(
        f"| one job of those sweeps (its own wall time, start-up excluded) | sequential (all "
        f"{torch.get_num_threads()} torch threads) vs joblib (1 thread each, 2 jobs side by side) "
        f"| {a:.2f} s | {b:.2f} s | two workers' ceiling 2 × {a:.2f} / {b:.2f} = "
        f"{ceiling:.2f}× | |"
    )
    n, speedup = last
    rows.append(
        f"| joblib at N = {n} against that ceiling | {speedup:.2f}× of {ceiling:.2f}× | | "
        f"| {speedup / ceiling:.2f} of the ceiling | ≥ 0.9 |"
    )
    return rows


def data_rows(rounds: int) -> list[str]:
    import gzip

    from torch.utils.data import DataLoader
    from torchvision import datasets, transforms

    from bnsweep.data.modules import MNISTDataModule

    dm = MNISTDataModule(download=False, batch_size=64)  # the default data root
    dm.setup()
    ours_loader = dm.train_dataloader()
    with tempfile.TemporaryDirectory() as tmp:
        raw = Path(tmp) / "MNIST" / "raw"
        raw.mkdir(parents=True)
        from bnsweep.data.catalog import DATASETS, locate

        for key, path in locate(DATASETS["mnist"], download=False).items():
            data = path.read_bytes()
            name = DATASETS["mnist"].files[key].name
            (raw / name).write_bytes(gzip.decompress(data) if path.suffix == ".gz" else data)
        tf = transforms.Compose([transforms.ToTensor(), transforms.Normalize((0.1307,), (0.3081,))])
        tv = datasets.MNIST(tmp, train=True, download=False, transform=tf)
        tv_loader = DataLoader(tv, batch_size=64, shuffle=True)

        def epoch(loader) -> float:
            start = time.perf_counter()
            n = sum(len(y) for _, y in loader)
            assert n >= 55_000
            return time.perf_counter() - start

        ours, theirs = [], []
        for _ in range(rounds):
            ours.append(epoch(ours_loader))
            theirs.append(epoch(tv_loader))
    a, b = statistics.median(ours), statistics.median(theirs)
    return [
        f"| data, one epoch of training batches (64) | bnsweep DataModule vs torchvision MNIST "
        f"+ ToTensor/Normalize + DataLoader | {a * 1e3:.1f} ms | {b * 1e3:.0f} ms "
        f"| torchvision/bnsweep {b / a:.0f}× faster | ≥ 10× |"
    ]


# runs a script or code in this interpreter and, at exit, writes the process's own peak resident
# memory (VmHWM: this process image only; a child's ru_maxrss would count its parent's pages
# from before exec) to the file named by BNSWEEP_BENCH_HWM
_HWM_WRAPPER = """
import atexit, os, runpy, sys
def _hwm():
    for line in open("/proc/self/status"):
        if line.startswith("VmHWM:"):
            open(os.environ["BNSWEEP_BENCH_HWM"], "w").write(line.split()[1])
atexit.register(_hwm)
target, sys.argv = sys.argv[1], sys.argv[1:]
if target == "-c":
    sys.argv = ["-c"]
    exec(compile(os.environ["BNSWEEP_BENCH_CODE"], "<bench>", "exec"))
else:
    runpy.run_path(target, run_name="__main__")
"""


def _peak_mib(args: list[str], cwd: Path, code: str = "") -> float:
    """Peak resident memory (MiB) of ``python <args>`` (or of ``code``), from its own VmHWM."""
    hwm = cwd / f"hwm{time.monotonic_ns()}"
    env = dict(os.environ, BNSWEEP_BENCH_HWM=str(hwm), BNSWEEP_BENCH_CODE=code)
    cmd = [sys.executable, "-c", _HWM_WRAPPER, *(["-c"] if code else args)]
    proc = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True)
    if proc.returncode != 0:
        raise RuntimeError(f"failed ({' '.join(args) or code}):\n{proc.stderr[-2000:]}")
    return int(hwm.read_text()) / 1024


def startup_rows(rounds: int) -> list[str]:
    """process start → first training step of train.py, with the dataset cache and without;
    the floor under both: a process that only imports pytorch_lightning (which imports torch,
    torch._dynamo and torchmetrics whatever the run does); and bnsweep's own part of the
    start-up, measured inside each process (its start-up minus its own import of torch and
    Lightning, ``import_s``), which this machine's drift between processes does not blur."""

    def once(tmp: Path, tag: str, cache: bool) -> dict:
        run_dir = tmp / tag
        cmd = [sys.executable, str(ROOT / "train.py"), *STEP_RUN, "trainer.max_epochs=null",
               "trainer.max_steps=1", "trainer.limit_val_batches=1", "trainer.limit_test_batches=1",
               f"data.cache={str(cache).lower()}", f"run_dir={run_dir}"]  # fmt: skip
        subprocess.run(cmd, cwd=tmp, check=True, capture_output=True)
        return json.loads((run_dir / "metrics.json").read_text())

    def lightning_import(tmp: Path) -> float:
        code = "import time, pytorch_lightning; print(time.time())"
        start = time.time()
        proc = subprocess.run(
            [sys.executable, "-c", code], cwd=tmp, check=True, capture_output=True, text=True
        )
        return float(proc.stdout) - start

    warm, cold, floor, own = [], [], [], []
    with tempfile.TemporaryDirectory() as tmp:
        once(Path(tmp), "prime", True)  # the cache exists from here on
        for i in range(rounds):
            m = once(Path(tmp), f"warm{i}", True)
            warm.append(m["startup_s"])
            own.append(m["startup_s"] - m["import_s"])
            cold.append(once(Path(tmp), f"cold{i}", False)["startup_s"])
            floor.append(lightning_import(Path(tmp)))
    a, b, c = statistics.median(warm), statistics.median(cold), statistics.median(floor)
    o = statistics.median(own)
    return [
        f"| job start-up: process start → first training step (train.py) | with the decoded "
        f"dataset cache vs decoding the .gz files | {a:.2f} s | {b:.2f} s "
        f"| cached/uncached {a / b:.2f}× | ≤ 3 s |",
        f"| the floor under it: a process that only runs `import pytorch_lightning` | train.py's "
        f"start-up (cached) vs that import | {a:.2f} s | {c:.2f} s | {a / c:.2f}× "
        f"({a - c:.2f} s ours) | |",
        f"| bnsweep's own part of train.py's start-up, in the same process (start-up minus its "
        f"own import of torch and Lightning; interpreter start included) | {rounds} runs, "
        f"median | {o:.2f} s | | min {min(own):.2f} s, max {max(own):.2f} s | ≤ 0.5 s |",
    ]


def memory_rows() -> list[str]:
    """Peak RSS of one process training lenet_fc_bn2 for 300 steps: bnsweep vs the plain loop."""
    with tempfile.TemporaryDirectory() as tmp:
        args = [str(ROOT / "train.py"), *STEP_RUN, "trainer.limit_train_batches=300",
                f"run_dir={tmp}/run"]  # fmt: skip
        ours = _peak_mib(args, Path(tmp))
        code = ("from bnsweep.bench import compose_train, plain_epoch, STEP_RUN\n"
                f"plain_epoch(compose_train([*STEP_RUN, 'run_dir={tmp}/plain']))")  # fmt: skip
        plain = _peak_mib([], Path(tmp), code=code)
    return [
        f"| peak memory of one job (lenet_fc_bn2, MNIST in memory; VmHWM) | bnsweep train.py vs "
        f"plain loop process | {ours:.0f} MiB | {plain:.0f} MiB | bnsweep/plain {ours / plain:.2f}× "
        "| — |"
    ]

"""python -m bnsweep.bench [--only SECTION ...]: side-by-side timings, one table of ratios.

Sections (rows), each measured against the best alternative in the same run:
- bn: our BN layer vs torch.nn.BatchNorm, forward + backward in training mode and forward in eval
  mode, at the LeNet shapes and a large one (alternating, several rounds, medians);
- step: one epoch of lenet_fc_bn2 through bnsweep's full path (Hydra config, LightningModule,
  DataModule, loggers, checkpoints) vs a plain PyTorch loop with the same model, optimizer, data
  and batch order, and bnsweep with trainer.compile=true (alternating rounds, medians);
- data: one epoch of training batches from bnsweep's DataModule vs torchvision's MNIST with
  ToTensor + Normalize through a default DataLoader;
- startup: process start to the first training step of ``python train.py``, with the decoded
  dataset cache vs without it, and against a process that only imports pytorch_lightning;
- memory: peak resident memory of one training process, bnsweep vs the plain loop;
- sweep: N short runs one after another (basic launcher) vs hydra/launcher=joblib with 2 workers,
  and one job's own time in each (which bounds what the two workers can gain);
- vectorize: S seeds of lenet_fc_bn2 trained as one stacked network (sweep.vectorize=true) vs
  S runs one after another: one training step (the arithmetic alone, per-member and fused
  kernels, on the CPU and, when there is one, the GPU), the same for members of the init-scale
  study's CNN (init scales stacked with seeds), and one epoch through ``python sweep.py``
  (everything a user waits for).
Needs the MNIST files (README: Getting the data).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import torch
from torch import nn

from bnsweep.nn import make_batchnorm, make_torch_batchnorm
from bnsweep.runtime import tune_allocator

ROOT = Path(__file__).resolve().parents[1]

SHAPES = [(64, 6, 28, 28), (64, 16, 12, 12), (64, 120), (64, 84), (256, 64, 28, 28)]


def _timer(fn: Callable[[], None], inner: int) -> float:
    start = time.perf_counter()
    for _ in range(inner):
        fn()
    return (time.perf_counter() - start) / inner


def side_by_side(
    a: Callable[[], None], b: Callable[[], None], repeats: int, inner: int
) -> tuple[float, float]:
    """Median seconds per call of a and b, measured alternately (a, b, a, b, …) after warm-up."""
    for _ in range(3):
        a(), b()
    ta, tb = [], []
    for _ in range(repeats):
        ta.append(_timer(a, inner))
        tb.append(_timer(b, inner))
    return statistics.median(ta), statistics.median(tb)


def bn_cases(shape: tuple[int, ...]) -> dict[str, tuple[Callable[[], None], Callable[[], None]]]:
    spatial = len(shape) == 4
    ours, ref = make_batchnorm(shape[1], spatial), make_torch_batchnorm(shape[1], spatial)
    x = torch.randn(*shape, requires_grad=True)
    grad = torch.randn(*shape)

    def train(layer: nn.Module) -> Callable[[], None]:
        def step() -> None:
            layer.train()
            layer(x).backward(grad)

        return step

    def evaluate(layer: nn.Module) -> Callable[[], None]:
        def step() -> None:
            layer.eval()
            with torch.no_grad():
                layer(x)

        return step

    return {"train fwd+bwd": (train(ours), train(ref)), "eval fwd": (evaluate(ours), evaluate(ref))}


# short runs for the launcher rows: one epoch of 300 batches, validation and test on 1k images
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
    from bnsweep.sweep import jobs_since

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


def compose_train(overrides: list[str]):
    from hydra import compose, initialize_config_dir

    with initialize_config_dir(version_base="1.3", config_dir=str(ROOT / "conf")):
        return compose("train", overrides=overrides)


STEP_RUN = ["model=lenet_fc_bn2", "init=glorot", "trainer.max_epochs=1", "trainer.accelerator=cpu",
            "trainer.enable_progress_bar=false"]  # fmt: skip


@torch.no_grad()
def _accuracy(net: nn.Module, x: torch.Tensor, y: torch.Tensor) -> float:
    net.eval()
    correct = sum(
        (net(a).argmax(1) == b).sum().item() for a, b in zip(x.split(1000), y.split(1000))
    )
    net.train()
    return correct / len(y)


def plain_epoch(cfg) -> tuple[float, float]:
    """The same network, init, optimizer, data and batch order without Lightning: seconds for
    one epoch of training plus a validation, and the validation accuracy."""
    import torch.nn.functional as F

    from bnsweep.train import build

    module, dm = build(cfg)
    dm.setup()
    net, opt = module.net, module.configure_optimizers()
    batches = dm.train_dataloader()
    start = time.perf_counter()
    for x, y in batches:
        loss = F.cross_entropy(net(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
    acc = _accuracy(net, dm.tensors["x_val"], dm.tensors["y_val"])
    return time.perf_counter() - start, acc


def bnsweep_epoch(cfg) -> tuple[float, float]:
    """The full path: seconds of trainer.fit for one epoch (training + validation, loggers,
    checkpoint), and the validation accuracy."""
    from bnsweep.train import run

    m = run(cfg)
    return m["fit_time_s"], m["val/acc"]


def step_rows(rounds: int) -> list[str]:
    """One epoch, alternating: plain loop, bnsweep, bnsweep with trainer.compile=true."""
    times: dict[str, list[float]] = {"plain": [], "bnsweep": [], "compiled": []}
    accs = {}
    with tempfile.TemporaryDirectory() as tmp:
        for i in range(rounds):
            cfg = compose_train([*STEP_RUN, f"run_dir={tmp}/run{i}"])
            t, accs["plain"] = plain_epoch(cfg)
            times["plain"].append(t)
            t, accs["bnsweep"] = bnsweep_epoch(cfg)
            times["bnsweep"].append(t)
            cfg = compose_train([*STEP_RUN, "trainer.compile=true", f"run_dir={tmp}/comp{i}"])
            t, accs["compiled"] = bnsweep_epoch(cfg)
            times["compiled"].append(t)
    med = {k: statistics.median(v) for k, v in times.items()}
    ours, plain, comp = med["bnsweep"], med["plain"], med["compiled"]
    return [
        f"| training epoch, lenet_fc_bn2, batch 64 (860 steps + validation) | bnsweep full "
        f"path vs plain PyTorch loop (val acc {accs['bnsweep']:.4f} vs {accs['plain']:.4f}) "
        f"| {ours:.2f} s | {plain:.2f} s | bnsweep/plain {ours / plain:.2f}× | ≤ 1.15× |",
        f"| training epoch with trainer.compile=true (first round {times['compiled'][0]:.1f} s "
        f"incl. compiling; val acc {accs['compiled']:.4f}) | compiled vs eager bnsweep "
        f"| {comp:.2f} s | {ours:.2f} s | compiled/eager {comp / ours:.2f}× | < 1× to turn it on |",
    ]


def generic_rows(rounds: int) -> list[str]:
    """The own-network path: a training step of lenet_fc_bn2 built by ``_target_`` through
    bnsweep.networks (signature read, norm factory passed, swap walked) against the same net
    built by calling its constructor, side by side; and the pre-flight check's one-off cost."""
    import functools

    import torch.nn.functional as F

    from bnsweep import preflight
    from bnsweep.nn import LeNet
    from bnsweep.nn.init import glorot_uniform
    from bnsweep.train import build, build_net

    cfg = compose_train([*STEP_RUN, "run_dir=/tmp/bnsweep-bench-generic"])
    generic = build_net(cfg)
    torch.manual_seed(0)
    direct = LeNet(bn=["conv1", "conv2", "fc1", "fc2"], norm=functools.partial(make_batchnorm))
    glorot_uniform(direct, generator=torch.Generator().manual_seed(0))
    g = torch.Generator().manual_seed(0)
    x, y = torch.rand(64, 1, 28, 28, generator=g), torch.randint(10, (64,), generator=g)

    def stepper(net: nn.Module) -> Callable[[], None]:
        opt = torch.optim.Adam(net.parameters(), 1e-3)

        def step() -> None:
            opt.zero_grad()
            F.cross_entropy(net(x), y).backward()
            opt.step()

        return step

    t_gen, t_dir = side_by_side(stepper(generic), stepper(direct), repeats=5 * rounds, inner=20)
    module, dm = build(cfg)
    dm.prepare_data()
    start = time.perf_counter()
    dm.setup()  # the split: the run's own, which the check does first and training then reuses
    split = time.perf_counter() - start
    start = time.perf_counter()
    preflight.check(module, dm, torch.device("cpu"))
    once = time.perf_counter() - start
    return [
        f"| training step, lenet_fc_bn2, batch 64 | built by _target_ (bnsweep.networks) vs by "
        f"its constructor | {t_gen * 1e3:.2f} ms | {t_dir * 1e3:.2f} ms | {t_gen / t_dir:.3f}× | ≤ 1.02× |",
        f"| the pre-flight check, once per run | one step + one eval batch on copies (the data "
        f"split, {split:.2f} s, is the run's own, set up once) | {once:.2f} s | | | |",
    ]


def data_rows(rounds: int) -> list[str]:
    import gzip

    from torch.utils.data import DataLoader
    from torchvision import datasets, transforms

    from bnsweep.data import MNISTDataModule

    dm = MNISTDataModule(download=False, batch_size=64)  # the default data root
    dm.setup()
    ours_loader = dm.train_dataloader()
    with tempfile.TemporaryDirectory() as tmp:
        raw = Path(tmp) / "MNIST" / "raw"
        raw.mkdir(parents=True)
        from bnsweep.data import DATASETS, locate

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


def _stacked_step_pair(members: int, fused: bool | None, device: str, model: str = "lenet_fc_bn2"):
    """(S plain steps one after another, one stacked step of S members): lenet_fc_bn2 at batch
    64, or the init study's CNN (dropout 0.5) at its batch 50, members of 3 init scales."""
    from functools import partial

    import torch.nn.functional as F

    from bnsweep.nn import InitCNN, LeNet, truncated_normal
    from bnsweep.nn.stacked import StackedNet, stack_inputs

    stds = (0.01, 0.1, 1.0)

    def nets() -> list[nn.Module]:
        norm = partial(make_batchnorm, estimator="momentum")
        out = []
        for m in range(members):
            torch.manual_seed(m)
            if model == "cnn":
                net = InitCNN(dropout=0.5)
                truncated_normal(net, std=stds[m % 3])
            else:
                net = LeNet(bn=["conv1", "conv2", "fc1", "fc2"], norm=norm)
            out.append(net.to(device))
        return out

    batch = 50 if model == "cnn" else 64
    plain = nets()
    opts = [torch.optim.Adam(n.parameters(), 1e-3) for n in plain]
    gens = [torch.Generator(device).manual_seed(m) for m in range(members)]
    stacked = StackedNet(nets(), gens, fused=fused).to(device)
    opt = torch.optim.Adam(stacked.parameters(), 1e-3)
    xs = [torch.rand(batch, 1, 28, 28, device=device) for _ in range(members)]
    ys = [torch.randint(0, 10, (batch,), device=device) for _ in range(members)]
    x, y = stack_inputs(xs), torch.stack(ys, 1)
    sync = torch.cuda.synchronize if device == "cuda" else (lambda: None)

    def alone() -> None:
        for net, o, xm, ym in zip(plain, opts, xs, ys):
            o.zero_grad()
            F.cross_entropy(net(xm), ym).backward()
            o.step()
        sync()

    def together() -> None:
        opt.zero_grad()
        logits = stacked(x)
        torch.stack(  # as bnsweep.members: unbind (one backward for all members)
            [F.cross_entropy(lm, ym) for lm, ym in zip(logits.unbind(1), y.unbind(1))]
        ).sum().backward()
        opt.step()
        sync()

    return alone, together


def _histogram_pair(device: str):
    """(bnsweep.tensorboard.histogram_proto of one member's conv1 pre-activations on 1,000
    validation images; the same summary as it was made before: numpy.histogram given the bucket
    edges as an array, which sorts the values)."""
    import numpy as np

    from bnsweep.tensorboard import histogram_proto

    values = torch.randn(1000 * 6 * 24 * 24, device=device)

    def ours() -> None:
        histogram_proto(values)

    def before() -> None:
        v = values.cpu().double().numpy()
        v = v[np.isfinite(v)]
        np.histogram(v, bins=np.linspace(v.min(), v.max(), 31))
        float(v.sum()), float(v @ v)

    return ours, before


def vectorize_rows(rounds: int, devices: list[str]) -> list[str]:
    rows = []
    for device in devices:
        ours, before = _histogram_pair(device)
        ta, tb = side_by_side(ours, before, repeats=5, inner=1)
        rows.append(
            f"| histogram of one member's conv1 pre-activations (3.46M values, a BN dashboard of "
            f"a validation), {device} | histogram_proto (equal-width buckets in one pass, on the "
            f"tensor's device) vs numpy with bucket edges (sorts; as before) | {ta * 1e3:.0f} ms "
            f"| {tb * 1e3:.0f} ms | {tb / ta:.2f}× faster | |"
        )
    for device in devices:
        for members in (3, 8):
            for fused in (False, True):
                alone, together = _stacked_step_pair(members, fused, device)
                ta, tb = side_by_side(together, alone, repeats=7, inner=10)
                kind = "fused kernels" if fused else "per-member kernels"
                target = "≥ 2×" if device == "cpu" and members == 3 else ""
                target = "≥ 5×" if device == "cuda" and members == 8 else target
                rows.append(
                    f"| training step, {members} seeds of lenet_fc_bn2, batch 64, {device}, {kind} "
                    f"| stacked vs {members} plain steps one after another | {ta * 1e3:.1f} ms "
                    f"| {tb * 1e3:.1f} ms | {tb / ta:.2f}× faster | {target} |"
                )
        # the init_scale study stacked (sweep.vectorize=true): 9 scales × 3 seeds in one job
        for members in (6, 27) if device == "cuda" else (6,):
            for fused in (False, True):
                alone, together = _stacked_step_pair(members, fused, device, model="cnn")
                ta, tb = side_by_side(together, alone, repeats=5, inner=3)
                kind = "fused kernels" if fused else "per-member kernels"
                rows.append(
                    f"| training step, {members} members of study=init_scale (CNN, dropout, 3 init "
                    f"scales), batch 50, {device}, {kind} | stacked vs {members} plain steps one "
                    f"after another | {ta * 1e3:.1f} ms | {tb * 1e3:.1f} ms | {tb / ta:.2f}× faster "
                    f"| {'≥ 5×' if device == 'cuda' and members == 27 else ''} |"
                )
    if "cuda" not in devices:
        rows.append(
            "| training step on a GPU | not measured: no GPU on this machine | | | | ≥ 5× (8 seeds) |"
        )
    device = "cuda" if torch.cuda.is_available() else "cpu"  # where sweep.py trains (auto)
    for seeds in (3, 8) if device == "cuda" else (3,):
        rows.append(_vectorized_sweep_row(seeds, rounds, device))
    stacked = ("init=truncated_normal", "init.std=0.05,0.1,0.2")
    rows.append(_vectorized_sweep_row(3 if device == "cuda" else 2, rounds, device, stacked))
    return rows


def _vectorized_sweep_row(seeds: int, rounds: int, device: str, points: tuple[str, ...] = ()) -> str:
    """A one-epoch sweep of lenet_fc_bn2, vectorized and not: ``seeds`` seeds of one point, or
    of each of ``points``' values (``init.std=0.05,0.1``: stacked into the one job)."""
    one_epoch = ["model=lenet_fc_bn2", f"seeds=[{','.join(map(str, range(seeds)))}]",
                 "trainer.max_epochs=1", "trainer.enable_progress_bar=false", *points]  # fmt: skip
    runs_n = seeds * (len(points[-1].split("=", 1)[1].split(",")) if points else 1)
    times: dict[str, list[float]] = {"vectorized": [], "sequential": []}
    jobs: dict[str, list[float]] = {"vectorized": [], "sequential": []}  # the jobs' own walls
    with tempfile.TemporaryDirectory() as tmp:
        for i in range(rounds):
            for kind, extra in (("vectorized", ["sweep.vectorize=true"]), ("sequential", [])):
                wall, runs = run_sweep([*one_epoch, *extra], Path(tmp) / f"{kind}{i}")
                times[kind].append(wall)
                jobs[kind].append(runs[0]["job_wall_time_s"] if kind == "vectorized"  # one job
                                  else sum(r["wall_time_s"] for r in runs))  # fmt: skip
    vec, seq = statistics.median(times["vectorized"]), statistics.median(times["sequential"])
    vec_job, seq_job = statistics.median(jobs["vectorized"]), statistics.median(jobs["sequential"])
    target = {("cpu", 3): "≥ 2×", ("cuda", 8): "≥ 5×"}.get((device, seeds), "") if not points else ""
    what = f"{seeds} seeds" if not points else f"{seeds} seeds × {points[-1]} (stacked: one job)"
    return (
        f"| sweep of {what} × 1 epoch of lenet_fc_bn2 on {device} (python sweep.py, "
        f"start-up, validation, test, report) | sweep.vectorize=true vs the {runs_n} runs one "
        f"after another | {vec:.1f} s | {seq:.1f} s | {seq / vec:.2f}× faster | {target} |\n"
        f"| the same sweeps without the process start-up (the jobs' wall times in metrics.json: "
        f"build, train, validate, test, write), per run | vectorized job / {runs_n} vs the runs' "
        f"mean | {vec_job / runs_n:.1f} s | {seq_job / runs_n:.1f} s | {seq_job / vec_job:.2f}× faster | |"
    )


SECTIONS = ("bn", "step", "generic", "data", "startup", "memory", "sweep", "vectorize")


def bn_rows(repeats: int) -> list[str]:
    rows = []
    for shape in SHAPES:
        inner = 3 if shape[0] == 256 else 20
        for mode, (a, b) in bn_cases(shape).items():
            ta, tb = side_by_side(a, b, repeats, inner)
            target = "≤ 1.5×" if mode.startswith("train") else "≤ 1.2×"
            rows.append(
                f"| BN {mode} {tuple(shape)} | ours vs torch.nn.BatchNorm | {ta * 1e3:.3f} ms "
                f"| {tb * 1e3:.3f} ms | ours/torch {ta / tb:.2f}× | {target} |"
            )
    return rows


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="python -m bnsweep.bench", description=__doc__.splitlines()[0])
    p.add_argument("--only", nargs="+", choices=SECTIONS, default=list(SECTIONS))
    p.add_argument("--repeats", type=int, default=30, help="rounds per BN layer pair")
    p.add_argument("--rounds", type=int, default=3, help="rounds of the step, data, startup rows")
    p.add_argument("--sweep-n", nargs="+", type=int, default=[1, 2, 4, 8])
    p.add_argument("--sweep-rounds", type=int, default=3, help="alternating rounds per N")
    p.add_argument("--devices", nargs="+", choices=("cpu", "cuda"), default=None,
                   help="devices of the stacked-step rows (default: the CPU and any CUDA GPU)")
    args = p.parse_args(argv)
    devices = args.devices or ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
    if "cuda" in devices and not torch.cuda.is_available():
        p.error("--devices cuda: torch sees no CUDA GPU")
    tuned = tune_allocator()  # as train.py runs; both sides of every in-process row share it
    cpu = platform.processor() or platform.machine()
    print(
        f"machine: {cpu}, {os.cpu_count()} cores, {torch.get_num_threads()} torch threads, "
        f"torch {torch.__version__}, python {platform.python_version()}, "
        f"malloc thresholds {'raised (bnsweep.runtime)' if tuned else 'default'}"
    )
    print(
        f"command: python -m bnsweep.bench {' '.join(argv if argv is not None else sys.argv[1:])}"
    )
    print()
    print("| row | compared | bnsweep | alternative | ratio | target |")
    print("|---|---|---|---|---|---|")
    sections: dict[str, Callable[[], list[str]]] = {
        "bn": lambda: bn_rows(args.repeats),
        "step": lambda: step_rows(args.rounds),
        "generic": lambda: generic_rows(args.rounds),
        "data": lambda: data_rows(args.rounds),
        "startup": lambda: startup_rows(args.rounds),
        "memory": memory_rows,
        "sweep": lambda: sweep_rows(args.sweep_n, args.sweep_rounds),
        "vectorize": lambda: vectorize_rows(args.rounds, devices),
    }
    for section in args.only:
        for row in sections[section]():
            print(row, flush=True)


if __name__ == "__main__":
    main()

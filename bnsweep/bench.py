"""python -m bnsweep.bench [--repeats 30]: side-by-side timings, printed as one table of ratios.

Rows: our BN layer vs torch.nn.BatchNorm (forward + backward in training mode, forward in eval
mode) at the LeNet shapes and a large one. Each pair is timed alternately in one process, in
several rounds; the table shows the medians and their ratio.
"""

from __future__ import annotations

import argparse
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


def timed_sweep(n: int, launcher: list[str], out: Path) -> float:
    """Wall seconds of ``python sweep.py`` running n short runs (n seeds of one point)."""
    seeds = ",".join(str(s) for s in range(n))
    cmd = [sys.executable, str(ROOT / "sweep.py"), f"seeds=[{seeds}]", *SHORT_RUN, *launcher]
    cmd.append(f"hydra.sweep.dir={out}")
    start = time.perf_counter()
    proc = subprocess.run(cmd, cwd=out.parent, capture_output=True, text=True)
    wall = time.perf_counter() - start
    if proc.returncode != 0:
        raise RuntimeError(f"sweep failed ({' '.join(cmd)}):\n{proc.stderr[-2000:]}")
    return wall


def sweep_rows(ns: list[int]) -> list[str]:
    """N short runs: the basic launcher (one after another) vs joblib with 2 workers."""
    joblib = ["hydra/launcher=joblib", "hydra.launcher.n_jobs=2"]
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for n in ns:
            seq = timed_sweep(n, [], Path(tmp) / f"seq{n}")
            par = timed_sweep(n, joblib, Path(tmp) / f"joblib{n}")
            rows.append(
                f"| sweep, N={n} short runs | sequential vs joblib ×2 | {seq:.1f} s | {par:.1f} s "
                f"| {seq / par:.2f}× faster |"
            )
    return rows


SECTIONS = ("bn", "sweep")


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
    p.add_argument("--repeats", type=int, default=30, help="rounds per side-by-side pair")
    p.add_argument("--only", nargs="+", choices=SECTIONS, default=list(SECTIONS))
    p.add_argument("--sweep-n", nargs="+", type=int, default=[1, 2, 4, 8])
    args = p.parse_args(argv)
    cpu = platform.processor() or platform.machine()
    print(
        f"machine: {cpu}, {os.cpu_count()} cores, {torch.get_num_threads()} torch threads, "
        f"torch {torch.__version__}, python {platform.python_version()}"
    )
    print(f"command: python -m bnsweep.bench {' '.join(argv if argv is not None else sys.argv[1:])}")
    print()
    print("| row | compared | bnsweep | alternative | ratio | target |")
    print("|---|---|---|---|---|---|")
    for section in args.only:
        rows = bn_rows(args.repeats) if section == "bn" else sweep_rows(args.sweep_n)
        for row in rows:
            print(row, flush=True)


if __name__ == "__main__":
    main()

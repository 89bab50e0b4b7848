"""The benchmarks' clock (alternating rounds, medians) and the BN layer rows: ours vs
torch.nn.BatchNorm, forward + backward in training mode and forward in eval mode."""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from pathlib import Path

import torch
from torch import nn

from bnsweep.nn import make_batchnorm, make_torch_batchnorm

ROOT = Path(__file__).resolve().parents[2]  # the checkout: train.py, sweep.py, conf/
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

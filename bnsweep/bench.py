"""python -m bnsweep.bench [--repeats 30]: side-by-side timings, printed as one table of ratios.

Rows: our BN layer vs torch.nn.BatchNorm (forward + backward in training mode, forward in eval
mode) at the LeNet shapes and a large one. Each pair is timed alternately in one process, in
several rounds; the table shows the medians and their ratio.
"""

from __future__ import annotations

import argparse
import platform
import statistics
import time
from collections.abc import Callable

import torch
from torch import nn

from bnsweep.nn import make_batchnorm, make_torch_batchnorm

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


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="python -m bnsweep.bench", description=__doc__.splitlines()[0])
    p.add_argument("--repeats", type=int, default=30)
    args = p.parse_args(argv)
    print(
        f"machine: {platform.machine()}, {torch.get_num_threads()} torch threads, torch {torch.__version__}"
    )
    print(f"command: python -m bnsweep.bench --repeats {args.repeats}\n")
    print("| row | shape | ours (ms) | torch (ms) | ours / torch |")
    print("|---|---|---|---|---|")
    for shape in SHAPES:
        inner = 3 if shape[0] == 256 else 20
        for mode, (a, b) in bn_cases(shape).items():
            ta, tb = side_by_side(a, b, args.repeats, inner)
            print(
                f"| BN {mode} | {tuple(shape)} | {ta * 1e3:.3f} | {tb * 1e3:.3f} | {ta / tb:.2f}× |"
            )


if __name__ == "__main__":
    main()

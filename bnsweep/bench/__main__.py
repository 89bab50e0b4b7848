"""python -m bnsweep.bench: the sections asked for, as one table (the sections: bnsweep.bench)."""

from __future__ import annotations

import argparse
import os
import platform
import sys
from collections.abc import Callable

import torch

import bnsweep.bench
from bnsweep.bench.devices import device_rows
from bnsweep.bench.processes import data_rows, memory_rows, startup_rows, sweep_rows
from bnsweep.bench.steps import generic_rows, step_rows
from bnsweep.bench.timing import bn_rows
from bnsweep.bench.vectorized import vectorize_rows
from bnsweep.run.runtime import tune_allocator

SECTIONS = ("bn", "step", "generic", "data", "startup", "memory", "sweep", "vectorize", "devices")


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="python -m bnsweep.bench", description=bnsweep.bench.__doc__.splitlines()[0])
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
        f"malloc thresholds {'raised (bnsweep.run.runtime)' if tuned else 'default'}"
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
        "devices": lambda: device_rows(args.rounds),
    }
    for section in args.only:
        for row in sections[section]():
            print(row, flush=True)


if __name__ == "__main__":
    main()

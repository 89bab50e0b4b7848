"""Benchmark rows of one run on several processes: lenet_fc_bn2 training steps of a global
batch of 64 in two gloo processes (32 each, DDP) against one process (64), the same cores in
all; and the cost of bn.sync (the BN layers' all-reduces) in the two processes."""

from __future__ import annotations

import statistics
import tempfile
import time
from pathlib import Path

import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import torch.nn.functional as F

from bnsweep.bench.steps import STEP_RUN, compose_train

STEPS = 60  # timed steps per round, after 10 untimed
GLOBAL_BATCH = 64


def _steps(world: int, rank: int, sync: bool, threads: int) -> float:
    """Seconds per training step of this process's share of the global batch."""
    from bnsweep.nn import BatchNorm, norm_layers
    from bnsweep.run.training import build_net

    torch.set_num_threads(threads)
    net = build_net(compose_train(STEP_RUN))
    for layer in norm_layers(net).values():
        if isinstance(layer, BatchNorm):
            layer.sync = sync
    if world > 1:
        net = torch.nn.parallel.DistributedDataParallel(net)
    opt = torch.optim.SGD(net.parameters(), lr=0.01)
    g = torch.Generator().manual_seed(rank)
    n = GLOBAL_BATCH // world
    x, y = torch.randn(n, 1, 28, 28, generator=g), torch.randint(0, 10, (n,), generator=g)
    for i in range(STEPS + 10):
        if i == 10:
            if world > 1:
                dist.barrier()
            start = time.perf_counter()
        loss = F.cross_entropy(net(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
    return (time.perf_counter() - start) / STEPS


def _worker(rank: int, world: int, init: str, out: str, sync: bool, threads: int) -> None:
    dist.init_process_group("gloo", init_method=init, rank=rank, world_size=world)
    try:
        took = _steps(world, rank, sync, threads)
        Path(out, f"{rank}.txt").write_text(str(took))
    finally:
        dist.destroy_process_group()


def _two(sync: bool, cores: int) -> float:
    with tempfile.TemporaryDirectory() as folder:
        init = f"file://{Path(folder) / 'rendezvous'}"
        threads = max(1, cores // 2)
        mp.spawn(_worker, args=(2, init, folder, sync, threads), nprocs=2, join=True)
        return max(float(Path(folder, f"{r}.txt").read_text()) for r in range(2))


def device_rows(rounds: int) -> list[str]:
    cores = torch.get_num_threads()
    one, two, synced = [], [], []
    for _ in range(rounds):  # alternating
        one.append(_steps(1, 0, False, cores))
        two.append(_two(False, cores))
        synced.append(_two(True, cores))
    o, t, s = (statistics.median(v) * 1e3 for v in (one, two, synced))
    return [
        f"| devices: 2 CPU processes vs 1 | a lenet_fc_bn2 step of a global batch of 64 "
        f"({cores} cores in all) | 2 gloo processes of 32: {t:.2f} ms | 1 process of 64: "
        f"{o:.2f} ms | {t / o:.2f}× | (none: the CPU gains no cores) |",
        f"| devices: bn.sync | the same step in 2 processes, BN statistics all-reduced | "
        f"{s:.2f} ms | per device: {t:.2f} ms | {s / t:.2f}× | (none) |",
    ]

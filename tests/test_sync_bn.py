"""BN across processes: ``bn.sync`` (our layer's all-reduced statistics and backward sums) against
torch's BN on the concatenated batch in one process, in two real gloo processes; per-device
statistics (no sync) against ghost BN over the concatenated batch."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from bnsweep.nn import BatchNorm1d, BatchNorm2d

C = 3
# (shard sizes, input shape after the batch dim, sync); shards are each rank's samples
CASES = {
    "equal": ((4, 4), (C, 5, 5), True),
    "unequal": ((5, 2), (C, 5, 5), True),  # a short last batch
    "fc": ((32, 32), (C,), True),
    "per_device": ((4, 4), (C, 5, 5), False),
}


def _data(case: str) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    """Each rank's shard and the weights of its loss Σ w·y (gradients that are not uniform)."""
    sizes, shape, _ = CASES[case]
    g = torch.Generator().manual_seed(len(case))
    xs = [torch.randn(n, *shape, generator=g, dtype=torch.float64) * 3 + 1 for n in sizes]
    ws = [torch.randn(n, *shape, generator=g, dtype=torch.float64) for n in sizes]
    return xs, ws


def _layer(shape: tuple[int, ...], **kw) -> torch.nn.Module:
    cls = BatchNorm2d if len(shape) == 3 else BatchNorm1d
    layer = cls(C, dtype=torch.float64, **kw)
    with torch.no_grad():
        layer.weight.copy_(torch.tensor([0.5, 1.5, -2.0], dtype=torch.float64))
        layer.bias.copy_(torch.tensor([0.1, -0.3, 0.7], dtype=torch.float64))
    return layer


def _worker(rank: int, world: int, init: str, out: str) -> None:
    dist.init_process_group("gloo", init_method=init, rank=rank, world_size=world)
    try:
        found = {}
        for case, (_, shape, sync) in CASES.items():
            xs, ws = _data(case)
            layer = _layer(shape)
            layer.sync = sync
            x = xs[rank].clone().requires_grad_()
            for _ in range(2):  # two steps: the running statistics' second update too
                x.grad = None
                layer.zero_grad()
                y = layer(x)
                (y * ws[rank]).sum().backward()
            found[case] = {"y": y.detach(), "gx": x.grad, "gw": layer.weight.grad,
                           "gb": layer.bias.grad, "rm": layer.running_mean,
                           "rv": layer.running_var}  # fmt: skip
        torch.save(found, Path(out) / f"{rank}.pt")
    finally:
        dist.destroy_process_group()


@pytest.fixture(scope="module")
def ranks(tmp_path_factory: pytest.TempPathFactory) -> list[dict]:
    """What each of two gloo processes computed, case by case."""
    folder = tmp_path_factory.mktemp("sync")
    init = f"file://{folder / 'rendezvous'}"
    mp.spawn(_worker, args=(2, init, str(folder)), nprocs=2, join=True)
    return [torch.load(folder / f"{r}.pt") for r in range(2)]


def _reference(case: str, **kw) -> dict:
    """torch.nn.BatchNorm on the concatenated batch, one process, the same two steps."""
    xs, ws = _data(case)
    shape = CASES[case][1]
    if kw:  # ghost BN: our layer
        layer = _layer(shape, **kw)
    else:
        cls = torch.nn.BatchNorm2d if len(shape) == 3 else torch.nn.BatchNorm1d
        layer = cls(C, dtype=torch.float64)
        with torch.no_grad():
            layer.weight.copy_(torch.tensor([0.5, 1.5, -2.0], dtype=torch.float64))
            layer.bias.copy_(torch.tensor([0.1, -0.3, 0.7], dtype=torch.float64))
    x = torch.cat(xs).requires_grad_()
    for _ in range(2):
        x.grad = None
        layer.zero_grad()
        y = layer(x)
        (y * torch.cat(ws)).sum().backward()
    return {"y": y.detach(), "gx": x.grad, "gw": layer.weight.grad, "gb": layer.bias.grad,
            "rm": layer.running_mean, "rv": layer.running_var}  # fmt: skip


@pytest.mark.parametrize("case", ["equal", "unequal", "fc"])
def test_sync_equals_one_process_on_the_global_batch(ranks: list[dict], case: str) -> None:
    ref = _reference(case)
    sizes = CASES[case][0]
    for key in ("y", "gx"):  # each rank's rows of the global batch's output and input gradient
        torch.testing.assert_close(torch.cat([r[case][key] for r in ranks]), ref[key])
    for key in ("gw", "gb"):  # the shards' parameter gradients add up to the global batch's
        torch.testing.assert_close(ranks[0][case][key] + ranks[1][case][key], ref[key])
    for r in ranks:  # running statistics (unbiased with the global count) equal on every rank
        torch.testing.assert_close(r[case]["rm"], ref["rm"])
        torch.testing.assert_close(r[case]["rv"], ref["rv"])
    assert ranks[0][case]["y"].shape[0] == sizes[0]


def test_per_device_statistics_are_ghost_batches(ranks: list[dict]) -> None:
    """bn.sync=false: each rank normalises its own 4 samples, as ghost BN with k = 4 does in one
    process on the concatenated 8 (outputs, input and parameter gradients)."""
    ref = _reference("per_device", ghost_batch_size=4)
    for key in ("y", "gx"):
        torch.testing.assert_close(torch.cat([r["per_device"][key] for r in ranks]), ref[key])
    for key in ("gw", "gb"):
        torch.testing.assert_close(ranks[0]["per_device"][key] + ranks[1]["per_device"][key],
                                   ref[key])  # fmt: skip
    # and the ranks' running statistics differ: each saw only its shard
    assert not torch.allclose(ranks[0]["per_device"]["rm"], ranks[1]["per_device"]["rm"])


def _torch_sync_worker(rank: int, world: int, init: str, out: str) -> None:
    """Two processes on one GPU (gloo moves CUDA tensors through the host): our synchronised
    layer and torch.nn.SyncBatchNorm on the same shards."""
    dist.init_process_group("gloo", init_method=init, rank=rank, world_size=world)
    try:
        xs, ws = _data("unequal")
        found = {}
        for name in ("ours", "torch"):
            if name == "ours":
                layer = _layer((C, 5, 5)).cuda()
                layer.sync = True
            else:
                layer = torch.nn.SyncBatchNorm(C, dtype=torch.float64).cuda()
                with torch.no_grad():
                    layer.weight.copy_(torch.tensor([0.5, 1.5, -2.0]))
                    layer.bias.copy_(torch.tensor([0.1, -0.3, 0.7]))
            x = xs[rank].cuda().requires_grad_()
            y = layer(x)
            (y * ws[rank].cuda()).sum().backward()
            found[name] = {"y": y.detach().cpu(), "gx": x.grad.cpu(), "gw": layer.weight.grad.cpu(),
                           "rm": layer.running_mean.cpu(), "rv": layer.running_var.cpu()}  # fmt: skip
        torch.save(found, Path(out) / f"{rank}.pt")
    finally:
        dist.destroy_process_group()


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU (torch's SyncBatchNorm)")
def test_sync_equals_torchs_sync_batchnorm_on_a_gpu(tmp_path: Path) -> None:
    """torch runs its SyncBatchNorm on GPUs only: there, ours equals it (outputs, input and
    weight gradients, running statistics), with unequal shards."""
    init = f"file://{tmp_path / 'rendezvous'}"
    mp.spawn(_torch_sync_worker, args=(2, init, str(tmp_path)), nprocs=2, join=True)
    for rank in range(2):
        found = torch.load(tmp_path / f"{rank}.pt")
        for key in ("y", "gx", "gw", "rm", "rv"):
            torch.testing.assert_close(found["ours"][key], found["torch"][key])


def test_sync_in_one_process_is_plain_bn() -> None:
    """Without a process group (one process) a synchronised layer is the plain layer."""
    xs, _ = _data("equal")
    plain, synced = _layer((C, 5, 5)), _layer((C, 5, 5))
    synced.sync = True
    x = torch.cat(xs)
    torch.testing.assert_close(synced(x), plain(x), rtol=0, atol=0)

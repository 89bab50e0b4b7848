"""Benchmark rows of ``sweep.vectorize``: S seeds as one stacked network vs S runs one after
another (one step, per-member and fused kernels; one epoch through sweep.py)."""

from __future__ import annotations

import statistics
import tempfile
from pathlib import Path

import torch
from torch import nn

from bnsweep.bench.processes import run_sweep
from bnsweep.bench.timing import side_by_side
from bnsweep.nn import make_batchnorm


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
        torch.stack(  # as bnsweep.sweep.members: unbind (one backward for all members)
            [F.cross_entropy(lm, ym) for lm, ym in zip(logits.unbind(1), y.unbind(1))]
        ).sum().backward()
        opt.step()
        sync()

    return alone, together


def _histogram_pair(device: str):
    """(bnsweep.run.tensorboard.histogram_proto of one member's conv1 pre-activations on 1,000
    validation images; the same summary as it was made before: numpy.histogram given the bucket
    edges as an array, which sorts the values)."""
    import numpy as np

    from bnsweep.run.tensorboard import histogram_proto

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

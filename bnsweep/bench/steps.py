"""Benchmark rows of one training epoch: bnsweep's full path vs a plain PyTorch loop (eager and
compiled), and a network of one's own through the generic path."""

from __future__ import annotations

import statistics
import tempfile
import time
from collections.abc import Callable

import torch
from torch import nn

from bnsweep.bench.timing import ROOT, side_by_side
from bnsweep.nn import make_batchnorm


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

    from bnsweep.run.training import build

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


def lightning_epoch(cfg) -> tuple[float, float]:
    """The floor Lightning itself sets: the plain loop's network, optimizer, batches and
    validation, trained by a bare LightningModule (training_step returns the loss) in a Trainer
    with nothing of bnsweep's (no loggers, checkpoints, callbacks, metrics or checks)."""
    import pytorch_lightning as pl
    import torch.nn.functional as F

    from bnsweep.run.training import build

    module, dm = build(cfg)
    dm.setup()
    net, make_optimizer = module.net, module.optimizer_factory

    class Bare(pl.LightningModule):
        def __init__(self) -> None:
            super().__init__()
            self.net = net

        def training_step(self, batch: tuple[torch.Tensor, torch.Tensor], _: int) -> torch.Tensor:
            x, y = batch
            return F.cross_entropy(self.net(x), y)

        def configure_optimizers(self) -> torch.optim.Optimizer:
            return make_optimizer(self.net.parameters())

    # deterministic kernels, as bnsweep trains on the CPU
    trainer = pl.Trainer(max_epochs=1, accelerator="cpu", logger=False, enable_checkpointing=False,
                         enable_progress_bar=False, enable_model_summary=False,
                         deterministic=True)  # fmt: skip
    start = time.perf_counter()
    trainer.fit(Bare(), train_dataloaders=dm.train_dataloader())
    acc = _accuracy(net, dm.tensors["x_val"], dm.tensors["y_val"])
    return time.perf_counter() - start, acc


def bnsweep_epoch(cfg) -> tuple[float, float]:
    """The full path: seconds of trainer.fit for one epoch (training + validation, loggers,
    checkpoint), and the validation accuracy."""
    from bnsweep.run.training import run

    m = run(cfg)
    return m["fit_time_s"], m["val/acc"]


def step_rows(rounds: int) -> list[str]:
    """One epoch, alternating: plain loop, a bare LightningModule, bnsweep, bnsweep with
    trainer.compile=true (its first round compiles; the per-epoch time is the later rounds')."""
    times: dict[str, list[float]] = {"plain": [], "lightning": [], "bnsweep": [], "compiled": []}
    accs = {}
    with tempfile.TemporaryDirectory() as tmp:
        for i in range(rounds):
            cfg = compose_train([*STEP_RUN, f"run_dir={tmp}/run{i}"])
            for kind, epoch in (("plain", plain_epoch), ("lightning", lightning_epoch),
                                ("bnsweep", bnsweep_epoch)):  # fmt: skip
                t, accs[kind] = epoch(cfg)
                times[kind].append(t)
            cfg = compose_train([*STEP_RUN, "trainer.compile=true", f"run_dir={tmp}/comp{i}"])
            t, accs["compiled"] = bnsweep_epoch(cfg)
            times["compiled"].append(t)
    med = {k: statistics.median(v) for k, v in times.items()}
    ours, plain, bare = med["bnsweep"], med["plain"], med["lightning"]
    compiled = times["compiled"][1:] or times["compiled"]
    comp = statistics.median(compiled)
    return [
        f"| training epoch, lenet_fc_bn2, batch 64 (860 steps + validation) | bnsweep full "
        f"path vs plain PyTorch loop (val acc {accs['bnsweep']:.4f} vs {accs['plain']:.4f}) "
        f"| {ours:.2f} s | {plain:.2f} s | bnsweep/plain {ours / plain:.2f}× | ≤ 1.15× |",
        f"| the same epoch in a bare LightningModule and Trainer (Lightning's own floor) | bare "
        f"Lightning vs plain loop; bnsweep vs bare Lightning | {bare:.2f} s | {plain:.2f} s "
        f"| Lightning/plain {bare / plain:.2f}×; bnsweep/Lightning {ours / bare:.2f}× | |",
        f"| training epoch with trainer.compile=true, once compiled (first round "
        f"{times['compiled'][0]:.1f} s: compiling ≈ {times['compiled'][0] - comp:.1f} s; val acc "
        f"{accs['compiled']:.4f}) | compiled vs eager bnsweep | {comp:.2f} s | {ours:.2f} s "
        f"| compiled/eager {comp / ours:.2f}× | ≤ 0.83× (1.2× faster) to be worth it |",
    ]


def generic_rows(rounds: int) -> list[str]:
    """The own-network path: a training step of lenet_fc_bn2 built by ``_target_`` through
    bnsweep.nn.networks (signature read, norm factory passed, swap walked) against the same net
    built by calling its constructor, side by side; and the pre-flight check's one-off cost."""
    import functools

    import torch.nn.functional as F

    from bnsweep.nn import LeNet
    from bnsweep.nn.init import glorot_uniform
    from bnsweep.run import preflight
    from bnsweep.run.training import build, build_net

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
        f"| training step, lenet_fc_bn2, batch 64 | built by _target_ (bnsweep.nn.networks) vs by "
        f"its constructor | {t_gen * 1e3:.2f} ms | {t_dir * 1e3:.2f} ms | {t_gen / t_dir:.3f}× | ≤ 1.02× |",
        f"| the pre-flight check, once per run | one step + one eval batch on copies (the data "
        f"split, {split:.2f} s, is the run's own, set up once) | {once:.2f} s | | | |",
    ]

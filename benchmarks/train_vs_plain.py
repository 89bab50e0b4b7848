"""bnsweep's full training path vs a plain PyTorch loop, same model, data, optimizer and seed.

    python benchmarks/train_vs_plain.py [--epochs 10] [--model lenet_fc_bn2] [--bn momentum]

Prints one table: seconds per epoch of each (side by side, one process), their ratio, and the
final validation / test accuracy of each. Needs the MNIST files (README: Getting the data).
"""

from __future__ import annotations

import argparse
import platform
import tempfile
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from hydra import compose, initialize_config_dir

from bnsweep.train import build, run

CONF = Path(__file__).resolve().parents[1] / "conf"


def config(run_dir: Path, args: argparse.Namespace):
    overrides = [
        f"run_dir={run_dir}",
        f"model={args.model}",
        f"bn={args.bn}",
        f"init={args.init}",
        f"trainer.max_epochs={args.epochs}",
        "trainer.accelerator=cpu",
    ]
    with initialize_config_dir(version_base="1.3", config_dir=str(CONF)):
        return compose("train", overrides=overrides)


@torch.no_grad()
def accuracy(net: torch.nn.Module, x: torch.Tensor, y: torch.Tensor) -> float:
    net.eval()
    correct = sum(
        (net(xb).argmax(1) == yb).sum().item() for xb, yb in zip(x.split(1000), y.split(1000))
    )
    net.train()
    return correct / len(y)


def plain_loop(cfg) -> dict[str, float]:
    """The same network, init, optimizer, data and batch order, without Lightning."""
    module, dm = build(cfg)
    dm.setup()
    net, opt = module.net, module.configure_optimizers()
    batches = dm.train_dataloader()
    start = time.perf_counter()
    for epoch in range(cfg.trainer.max_epochs):
        batches.set_epoch(epoch)
        for x, y in batches:
            loss = F.cross_entropy(net(x), y)
            opt.zero_grad()
            loss.backward()
            opt.step()
        accuracy(net, dm.tensors["x_val"], dm.tensors["y_val"])  # validate each epoch, as bnsweep
    train_time = time.perf_counter() - start
    return {
        "s_per_epoch": train_time / cfg.trainer.max_epochs,
        "val_acc": accuracy(net, dm.tensors["x_val"], dm.tensors["y_val"]),
        "test_acc": accuracy(net, dm.tensors["x_test"], dm.tensors["y_test"]),
    }


def bnsweep_run(cfg) -> dict[str, float]:
    m = run(cfg)
    return {
        "s_per_epoch": m["wall_time_s"] / m["epochs"],
        "val_acc": m["val/acc"],
        "test_acc": m["test/acc"],
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--epochs", type=int, default=10)
    p.add_argument("--model", default="lenet_fc_bn2")
    p.add_argument("--bn", default="momentum")
    p.add_argument("--init", default="glorot")
    args = p.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        cfg = config(Path(tmp) / "run", args)
        plain = plain_loop(cfg)
        ours = bnsweep_run(cfg)
    print(
        f"machine: {platform.processor() or platform.machine()}, {torch.get_num_threads()} threads, "
        f"torch {torch.__version__}"
    )
    print(
        f"{args.model}, bn={args.bn}, init={args.init}, {args.epochs} epochs, batch 64, Adam 1e-3, seed 0"
    )
    print("| path | s/epoch | val acc | test acc |\n|---|---|---|---|")
    for name, r in (("plain PyTorch loop", plain), ("bnsweep (Hydra + Lightning + loggers)", ours)):
        print(f"| {name} | {r['s_per_epoch']:.2f} | {r['val_acc']:.4f} | {r['test_acc']:.4f} |")
    print(f"| ratio bnsweep / plain | {ours['s_per_epoch'] / plain['s_per_epoch']:.2f}× | | |")


if __name__ == "__main__":
    main()

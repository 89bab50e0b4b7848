"""The sweep's TensorBoard view: one aggregate run per point, the custom-scalars layout and
the HPARAMS experiment, all in aggregate/ (bnsweep.run.tensorboard writes them, without torch)."""

from __future__ import annotations

import shutil
from collections import defaultdict
from collections.abc import Sequence
from pathlib import Path

from bnsweep.config.keys import HPARAMS_SHOWN
from bnsweep.report.plots import curves
from bnsweep.report.runs import Run, point_label

# the aggregate runs' tags sit in a category of their own ("points"), apart from the runs'
AGGREGATE_LAYOUT = {
    "bnsweep: points compared (mean over seeds)": {
        "val/acc mean": ("Multiline", [r"^points/val_acc_mean$"]),
        "val/loss mean": ("Multiline", [r"^points/val_loss_mean$"]),
        "train/acc mean (per epoch)": ("Multiline", [r"^points/train_acc_mean$"]),
        "val/acc mean ± std": (
            "Margin",
            ["points/val_acc_mean", "points/val_acc_lower", "points/val_acc_upper"],
        ),
    },
    "bnsweep: every run": {"val/acc": ("Multiline", [r"^val/acc$"])},
}


def steps_per_epoch(run: Run) -> float | None:
    """Training steps of one epoch, from the run's validation history (step / epoch)."""
    h = run.metrics["history"]
    pairs = [(s, e) for s, e in zip(h.get("val_step", []), h.get("val_epoch", [])) if e]
    return pairs[0][0] / pairs[0][1] if pairs else None


def write_tensorboard(sweep_dir: Path, groups: dict, swept: Sequence[str] = ()) -> Path:
    """``aggregate/``, written whole by each report: one run per point (mean, mean ± std of
    val/acc, val/loss and train/acc, against the training step as the runs' own curves), a
    custom-scalars layout that draws every point's mean in one chart, and the sweep's HPARAMS
    experiment (the swept keys, the seed and HPARAMS_SHOWN, each with its domain)."""
    from bnsweep.run.tensorboard import EventWriter, experiment_summary

    root = sweep_dir / "aggregate"
    shutil.rmtree(root, ignore_errors=True)  # derived from the runs: never merged with an old one
    for point, members in groups.items():
        good = [r for r in members if r.ok]
        if not good:
            continue
        per_epoch = steps_per_epoch(good[0]) or 1.0
        with EventWriter(root / point_label(point).replace("/", "_")) as w:
            for yk, xk, scale in (
                ("val/acc", "val_step", 1.0),
                ("val/loss", "val_step", 1.0),
                ("train/acc", "train_epoch", per_epoch),  # epochs (fractions) to steps
            ):
                x, mean, std = curves(good, xk, yk)
                name = "points/" + yk.replace("/", "_")
                for step, m, s in zip(x, mean, std):
                    step = round(step * scale)
                    w.add_scalar(f"{name}_mean", m, step)
                    w.add_scalar(f"{name}_lower", m - s, step)
                    w.add_scalar(f"{name}_upper", m + s, step)
    shown = [*swept, "seed", *(k for k in HPARAMS_SHOWN if k not in swept)]
    values: dict[str, list] = defaultdict(list)
    for members in groups.values():
        for r in members:
            recorded = r.metrics.get("hparams") or {}
            for key in shown:
                if key in recorded:
                    values[key].append(recorded[key])
    with EventWriter(root) as w:
        w.add_custom_scalars(AGGREGATE_LAYOUT)
        if values:
            w.add_summary(experiment_summary(values))
    return root

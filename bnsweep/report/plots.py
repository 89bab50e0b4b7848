"""The report's PNG plots: validation and training accuracy per point (mean ± std over seeds),
final accuracy against a numeric swept key, and the paper's Figure 1 layout for percentiles."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from bnsweep.report.runs import Run, point_label
from bnsweep.report.summary import mean_std, percentile_keys, sort_key


def curves(
    members: Sequence[Run], x_key: str, y_key: str
) -> tuple[list[float], list[float], list[float]]:
    """Mean and std over seeds of y at the x values all seeds share."""
    series = [dict(zip(r.metrics["history"][x_key], r.metrics["history"][y_key])) for r in members]
    common = sorted(set.intersection(*(set(s) for s in series))) if series else []
    means, stds = zip(*(mean_std([s[x] for s in series]) for x in common)) if common else ((), ())
    return list(common), list(means), list(stds)


def finished_points(groups: dict) -> list[tuple[tuple, list[Run]]]:
    """(point, its finished runs) for every point with any, in the order of the summary rows."""
    ordered = sorted(groups.items(), key=lambda g: tuple(sort_key(v) for _, v in g[0]))
    return [(point, good) for point, m in ordered if (good := [r for r in m if r.ok])]


def band(ax, members: Sequence[Run], x_key: str, y_key: str, label: str) -> tuple[float, float]:
    """The mean over seeds with markers and a ±std band (a single point: its ±std bar); returns
    the band's lowest and highest value."""
    x, mean, std = curves(members, x_key, y_key)
    lo, hi = [m - d for m, d in zip(mean, std)], [m + d for m, d in zip(mean, std)]
    if len(x) == 1:
        ax.errorbar(x, mean, yerr=std, marker="o", capsize=4, label=label)
    else:
        line = ax.plot(x, mean, marker="o", markersize=3, label=label)[0]
        ax.fill_between(x, lo, hi, color=line.get_color(), alpha=0.2)
    return min(lo, default=0.0), max(hi, default=0.0)


def by_steps(groups: dict) -> bool:
    """Whether the runs validated mid-epoch (step-limited runs, val_check_interval in steps):
    their curves are drawn against steps, whole-epoch runs' against epochs."""
    return any(e != int(e) for members in groups.values() for r in members if r.ok
               for e in r.metrics["history"]["val_epoch"])  # fmt: skip


def plot(sweep_dir: Path, keys: list[str], groups: dict, rows: list[dict[str, Any]],
         settings: dict[str, Any] | None = None) -> list[Path]:  # fmt: skip
    """val_acc.png, train_acc.png, final_acc_vs_<key>.png per numeric swept key, and with
    percentiles accuracy_and_percentiles.png. ``settings``: ``val_acc_ylim`` ([low, high])."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    written = []
    steps = by_steps(groups)
    x_key, x_label = ("val_step", "training step") if steps else ("val_epoch", "epoch")
    ylim = (settings or {}).get("val_acc_ylim")
    for name, (xk, yk, xl, yl) in {
        "val_acc.png": (x_key, "val/acc", x_label, "validation accuracy"),
        "train_acc.png": ("train_epoch", "train/acc",
                          "epoch (a fraction: where a run stopped mid-epoch)" if steps else "epoch",
                          "training accuracy (epoch mean)"),
    }.items():  # fmt: skip
        fig, ax = plt.subplots(figsize=(8, 5))
        for point, good in finished_points(groups):
            band(ax, good, xk, yk, f"{point_label(point)} (n={len(good)})")
        ax.set_xlabel(xl)
        ax.set_ylabel(yl + " (mean ± std over seeds)")
        if ylim and name == "val_acc.png":
            ax.set_ylim(*ylim)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8, title="point (seeds)", title_fontsize=8)
        fig.tight_layout()
        fig.savefig(sweep_dir / name, dpi=110)
        plt.close(fig)
        written.append(sweep_dir / name)
    tracked = any(percentile_keys(r.metrics["history"]) for m in groups.values() for r in m if r.ok)
    if tracked:
        written.append(plot_percentiles(sweep_dir, groups))
    numeric = [k for k in keys if all(sort_key(r[k])[0] == 0 for r in rows)]
    for key in numeric:
        fig, ax = plt.subplots(figsize=(7, 4.5))
        others = [k for k in keys if k != key]
        series: dict[str, list[tuple[float, float, float]]] = defaultdict(list)
        for r in rows:
            if r["n_finished"]:
                label = ",".join(f"{k}={r[k]}" for k in others) or "final"
                series[label].append((float(r[key]), r["val_acc_mean"], r["val_acc_std"]))
        for label, pts in series.items():
            pts.sort()
            ax.errorbar([p[0] for p in pts], [p[1] for p in pts], yerr=[p[2] for p in pts],
                        marker="o", capsize=3, label=label)  # fmt: skip
        if all(float(r[key]) > 0 for r in rows):
            ax.set_xscale("log")
        ax.set_xlabel(key)
        ax.set_ylabel("final validation accuracy (mean ± std)")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
        fig.tight_layout()
        path = sweep_dir / f"final_acc_vs_{key.replace('.', '_')}.png"
        fig.savefig(path, dpi=110)
        plt.close(fig)
        written.append(path)
    return written


def plot_percentiles(sweep_dir: Path, groups: dict) -> Path:
    """The paper's Figure 1 layout: (a) accuracy vs step for every point (mean ± std over seeds),
    then one panel per point with the recorded percentiles of the tracked pre-activation
    (each percentile's mean over seeds, ± std band)."""
    import matplotlib.pyplot as plt

    points = finished_points(groups)
    fig, axes = plt.subplots(1, 1 + len(points), figsize=(4.2 * (1 + len(points)), 3.8))
    ax = axes[0]
    for point, good in points:
        band(ax, good, "val_step", "val/acc", point_label(point))
    ax.set_title("(a) accuracy (mean ± std over seeds)", fontsize=9)
    ax.set_xlabel("training step")
    ax.set_ylabel("validation accuracy")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    lows, highs = [], []
    for i, (ax, (point, good)) in enumerate(zip(axes[1:], points)):
        tracked = percentile_keys(good[0].metrics["history"])  # preact/<layer>_u<unit>/p<q>
        for key in tracked:
            lo, hi = band(ax, good, "val_step", key, key.rsplit("/", 1)[-1])
            lows.append(lo), highs.append(hi)
        unit = tracked[0].split("/")[1] if tracked else "no"
        ax.set_title(f"({chr(ord('b') + i)}) {unit} input percentiles: {point_label(point)}",
                     fontsize=9)  # fmt: skip
        ax.set_xlabel("training step")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    for ax in axes[1:]:  # one scale, so that the panels compare
        ax.set_ylim(min(lows) - 0.2, max(highs) + 0.2)
    fig.tight_layout()
    path = sweep_dir / "accuracy_and_percentiles.png"
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path

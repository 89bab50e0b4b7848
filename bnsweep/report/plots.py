"""The report's PNG plots: validation and training accuracy per point (mean ± std over seeds),
final accuracy against a numeric swept key, and the paper's Figure 1 layout for percentiles."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from bnsweep.report.runs import Run, point_label
from bnsweep.report.summary import mean_std, percentile_keys, sort_key


def curves(
    members: Sequence[Run], x_key: str, y_key: str | Callable[[dict], list[float]]
) -> tuple[list[float], list[float], list[float]]:
    """Mean and std over seeds of y (a history key, or a function of a run's history giving
    one value per x) at the x values all seeds share."""

    def ys(h: dict) -> list[float]:
        return y_key(h) if callable(y_key) else h[y_key]

    series = [dict(zip(r.metrics["history"][x_key], ys(r.metrics["history"]))) for r in members]
    common = sorted(set.intersection(*(set(s) for s in series))) if series else []
    means, stds = zip(*(mean_std([s[x] for s in series]) for x in common)) if common else ((), ())
    return list(common), list(means), list(stds)


def finished_points(groups: dict) -> list[tuple[tuple, list[Run]]]:
    """(point, its finished runs) for every point with any, in the order of the summary rows."""
    ordered = sorted(groups.items(), key=lambda g: tuple(sort_key(v) for _, v in g[0]))
    return [(point, good) for point, m in ordered if (good := [r for r in m if r.ok])]


def band(ax, members: Sequence[Run], x_key: str, y_key: str | Callable[[dict], list[float]],
         label: str, color: Any = None, linestyle: str = "-") -> tuple[float, float]:  # fmt: skip
    """The mean over seeds with markers and a ±std band (a single point: its ±std bar); returns
    the band's lowest and highest value."""
    x, mean, std = curves(members, x_key, y_key)
    lo, hi = [m - d for m, d in zip(mean, std)], [m + d for m, d in zip(mean, std)]
    if len(x) == 1:
        ax.errorbar(x, mean, yerr=std, marker="o", capsize=4, label=label, color=color)
    else:
        line = ax.plot(
            x, mean, marker="o", markersize=3, label=label, color=color, linestyle=linestyle
        )[0]
        ax.fill_between(x, lo, hi, color=line.get_color(), alpha=0.2 if color is None else 0.08)
    return min(lo, default=0.0), max(hi, default=0.0)


LEGEND_INSIDE = 10  # points a legend holds inside the axes; more go beside them


def point_colors(plt, points: Sequence[tuple]) -> tuple[list, Any] | None:  # noqa: ANN001
    """For points that differ in one numeric key: each point's colour on a continuous colour
    map of its value (log when the values span two decades or more), and the ScalarMappable
    of the colour bar; None otherwise (a legend names the points)."""
    import matplotlib.colors as mcolors

    if len(points) < 2 or any(len(p) != 1 for p in points):
        return None
    values = [sort_key(p[0][1]) for p in points]
    if any(kind != 0 for kind, _ in values):
        return None
    numbers = [float(v) for _, v in values]
    lo, hi = min(numbers), max(numbers)
    log = lo > 0 and hi / lo >= 100
    norm = (mcolors.LogNorm if log else mcolors.Normalize)(vmin=lo, vmax=hi if hi > lo else lo + 1)
    cmap = plt.get_cmap("viridis")
    mappable = plt.cm.ScalarMappable(norm=norm, cmap=cmap)
    return [cmap(norm(v)) for v in numbers], mappable


def legend_or_colorbar(fig, ax, points: Sequence[tuple], colors) -> None:  # noqa: ANN001
    """A colour bar for a numeric key's points; a legend in the axes for up to LEGEND_INSIDE
    points, beside them (in columns of 25) for more."""
    if colors is not None:
        bar = fig.colorbar(colors[1], ax=ax)
        bar.set_label(
            points[0][0][0] + (" (log scale)" if "Log" in type(colors[1].norm).__name__ else "")
        )
        return
    n = len(points)
    if n <= LEGEND_INSIDE:
        ax.legend(fontsize=8, title="point (seeds)", title_fontsize=8)
    else:
        ax.legend(fontsize=7, title="point (seeds)", title_fontsize=8, loc="upper left",
                  bbox_to_anchor=(1.01, 1.0), borderaxespad=0, ncols=-(-n // 25))  # fmt: skip


def curve_figure(plt, groups: dict, xk: str, yk: str, xl: str, yl: str, ylim=None):  # noqa: ANN001, ANN201
    """One curve (mean ± std band) per point: coloured by the value of a numeric swept key with
    a colour bar, else named in a legend (beside the axes past LEGEND_INSIDE points)."""
    fig, ax = plt.subplots(figsize=(8, 5))
    shown = finished_points(groups)
    colors = point_colors(plt, [p for p, _ in shown])
    many = colors is None and len(shown) > LEGEND_INSIDE  # 20 colours, then another dash
    for i, (point, good) in enumerate(shown):
        color = colors[0][i] if colors else plt.get_cmap("tab20")(i % 20) if many else None
        band(ax, good, xk, yk, f"{point_label(point)} (n={len(good)})", color,
             ("-", "--", ":", "-.")[i // 20 % 4] if many else "-")  # fmt: skip
    ax.set_xlabel(xl)
    ax.set_ylabel(yl + " (mean ± std over seeds)")
    if ylim:
        ax.set_ylim(*ylim)
    ax.grid(alpha=0.3)
    legend_or_colorbar(fig, ax, [p for p, _ in shown], colors)
    fig.tight_layout()
    return fig


def by_steps(groups: dict) -> bool:
    """Whether the runs validated mid-epoch (step-limited runs, val_check_interval in steps):
    their curves are drawn against steps, whole-epoch runs' against epochs."""
    return any(e != int(e) for members in groups.values() for r in members if r.ok
               for e in r.metrics["history"]["val_epoch"])  # fmt: skip


def plot(sweep_dir: Path, keys: list[str], groups: dict, rows: list[dict[str, Any]],
         settings: dict[str, Any] | None = None) -> list[Path]:  # fmt: skip
    """val_acc.png, train_acc.png, final_acc_vs_<key>.png per numeric swept key (final_error_vs_
    with ``final_y: error``), with percentiles accuracy_and_percentiles.png, with probes
    probes.png, with PreciseBN precise_gap.png. ``settings``: ``val_acc_ylim`` ([low, high]),
    ``final_y`` (acc or error)."""
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
        fig = curve_figure(plt, groups, xk, yk, xl, yl, ylim if name == "val_acc.png" else None)
        fig.savefig(sweep_dir / name, dpi=110, bbox_inches="tight")  # a legend beside: kept whole
        plt.close(fig)
        written.append(sweep_dir / name)
    tracked = any(percentile_keys(r.metrics["history"]) for m in groups.values() for r in m if r.ok)
    if tracked:
        written.append(plot_percentiles(sweep_dir, groups))
    histories = [r.metrics["history"] for m in groups.values() for r in m if r.ok]
    if any("probe_step" in h for h in histories):
        written.append(plot_probes(sweep_dir, groups))
    if any("val/acc_precise" in h or "val/acc_running" in h for h in histories):
        written.append(plot_precise_gap(sweep_dir, groups, x_key, x_label))
    error = (settings or {}).get("final_y") == "error"
    numeric = [k for k in keys if all(sort_key(r[k])[0] == 0 for r in rows)]
    for key in numeric:
        fig, ax = plt.subplots(figsize=(7, 4.5))
        others = [k for k in keys if k != key]
        series: dict[str, list[tuple[float, float, float]]] = defaultdict(list)
        for r in rows:
            if r["n_finished"]:
                label = ",".join(f"{k}={r[k]}" for k in others) or "final"
                mean = 1 - r["val_acc_mean"] if error else r["val_acc_mean"]
                series[label].append((float(r[key]), mean, r["val_acc_std"]))
        for label, pts in series.items():
            pts.sort()
            ax.errorbar([p[0] for p in pts], [p[1] for p in pts], yerr=[p[2] for p in pts],
                        marker="o", capsize=3, label=label)  # fmt: skip
        values = sorted({float(r[key]) for r in rows})
        if values[0] > 0:
            ax.set_xscale("log")
            if len(values) <= 12:  # every swept value named on the axis
                ax.set_xticks(values, [f"{v:g}" for v in values])
                ax.minorticks_off()
        ax.set_xlabel(key + (" (log axis)" if values[0] > 0 else ""))
        ax.set_ylabel(("final val error, 1 − acc" if error else "final validation accuracy")
                      + " (mean ± std)")  # fmt: skip
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
        fig.tight_layout()
        path = sweep_dir / f"final_{'error' if error else 'acc'}_vs_{key.replace('.', '_')}.png"
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


def _precise_gap(h: dict) -> list[float]:
    """Per validation: the accuracy with PreciseBN's statistics minus that with the running
    ones, whichever of the two is the headline val/acc."""
    if "val/acc_precise" in h:
        return [p - a for p, a in zip(h["val/acc_precise"], h["val/acc"])]
    return [a - r for a, r in zip(h["val/acc"], h["val/acc_running"])]


def plot_precise_gap(sweep_dir: Path, groups: dict, x_key: str, x_label: str) -> Path:
    """precise_gap.png: per point, the validation accuracy with PreciseBN's statistics minus
    that with the statistics the layers kept in training (mean ± std over seeds), over
    training; above 0: the running estimate costs accuracy."""
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 5))
    for point, good in finished_points(groups):
        good = [r for r in good if "val/acc_precise" in r.metrics["history"]
                or "val/acc_running" in r.metrics["history"]]  # fmt: skip
        if good:
            band(ax, good, x_key, _precise_gap, f"{point_label(point)} (n={len(good)})")
    ax.axhline(0, color="black", linewidth=0.8)
    ax.set_xlabel(x_label)
    ax.set_ylabel("val acc with PreciseBN − with running statistics\n(mean ± std over seeds)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, title="point (seeds)", title_fontsize=8)
    fig.tight_layout()
    path = sweep_dir / "precise_gap.png"
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


PROBE_PANELS = (
    ("(a) loss landscape: L(w − ηg) over η", "probe/loss_min", "probe/loss_max", "loss"),
    ("(b) gradient predictiveness: ‖∇L(w − ηg) − g‖ over η", "probe/grad_change_min",
     "probe/grad_change_max", "ℓ2 change of the gradient"),
    ("(c) effective β-smoothness", "probe/beta", "probe/beta", "max ‖Δ∇L‖ / ‖ηg‖"),
)  # fmt: skip


def plot_probes(sweep_dir: Path, groups: dict) -> Path:
    """probes.png, Santurkar et al. (2018) Fig. 4's layout: per point, (a) the band from the
    smallest to the largest loss along the gradient, (b) the same for the gradient's change,
    each end the mean over seeds; (c) the effective β-smoothness, mean ± std over seeds."""
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 3, figsize=(15, 4.2))
    points = [(p, [r for r in good if "probe_step" in r.metrics["history"]])
              for p, good in finished_points(groups)]  # fmt: skip
    for ax, (title, low, high, ylabel) in zip(axes, PROBE_PANELS):
        for point, good in points:
            if not good:
                continue
            label = f"{point_label(point)} (n={len(good)})"
            if low == high:
                band(ax, good, "probe_step", low, label)
                continue
            x, lo, _ = curves(good, "probe_step", low)
            _, hi, _ = curves(good, "probe_step", high)
            fill = ax.fill_between(x, lo, hi, alpha=0.35, label=label)
            ax.plot(x, hi, color=fill.get_facecolor()[0][:3], linewidth=0.8)
        ax.set_title(title, fontsize=9)
        ax.set_xlabel("training step")
        ax.set_ylabel(ylabel + (" (mean over seeds of min and max)" if low != high
                                else " (mean ± std over seeds)"), fontsize=8)  # fmt: skip
        ax.set_yscale("log")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    fig.tight_layout()
    path = sweep_dir / "probes.png"
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path

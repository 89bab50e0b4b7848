"""Studies: seeds fan-out, one job per (point, seed), and the aggregate report of a sweep folder.

A *point* is one combination of the swept keys (everything a run's overrides set, except the
seed, that differs between runs). The report groups the runs of a sweep folder by point and
writes summary.csv / summary.md (mean ± sample std over seeds), PNG plots, and one TensorBoard
aggregate run per point with the mean and ±std curves.
"""

from __future__ import annotations

import csv
import io
import json
import math
import os
import shlex
import statistics
import sys
import tempfile
import time
import traceback
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from hydra.experimental.callback import Callback
from omegaconf import DictConfig, OmegaConf

from bnsweep.files import atomic_write, write_json

# overrides that never define a point
NOT_SWEPT = ("seed", "seeds", "run_dir", "study", "resume", "threads", "sweep.vectorize")
THRESHOLDS = (0.97, 0.98)


# ---------------------------------------------------------------------------------------------
# reading runs


@dataclass
class Run:
    path: Path
    metrics: dict[str, Any]
    params: dict[str, str] = field(default_factory=dict)  # override key -> value, seed excluded

    @property
    def status(self) -> str:
        return self.metrics.get("status", "finished")

    @property
    def ok(self) -> bool:
        return self.status == "finished" and not self.metrics.get("diverged", False)


def _parse_override(text: str) -> tuple[str, str] | None:
    if "=" not in text:
        return None
    key, value = text.split("=", 1)
    key = key.lstrip("+~")
    if key in NOT_SWEPT or key.startswith("hydra"):
        return None
    return key, value


def load_runs(sweep_dir: Path) -> list[Run]:
    runs = []
    for f in sorted(sweep_dir.glob("*/metrics.json")):
        metrics = json.loads(f.read_text())
        params = dict(p for o in metrics.get("overrides", []) if (p := _parse_override(o)))
        runs.append(Run(f.parent, metrics, params))
    return runs


def swept_keys(runs: Sequence[Run]) -> list[str]:
    """Keys whose value differs between runs, in the order the overrides name them."""
    keys: dict[str, set[str]] = {}
    for r in runs:
        for k, v in r.params.items():
            keys.setdefault(k, set()).add(v)
    for r in runs:  # a key some runs lack is swept too
        for k in keys:
            if k not in r.params:
                keys[k].add("")
    return [k for k, values in keys.items() if len(values) > 1]


def point_label(point: tuple[tuple[str, str], ...]) -> str:
    return ",".join(f"{k}={v}" for k, v in point) or "all"


def group_by_point(runs: Sequence[Run]) -> dict[tuple[tuple[str, str], ...], list[Run]]:
    keys = swept_keys(runs)
    groups: dict[tuple[tuple[str, str], ...], list[Run]] = defaultdict(list)
    for r in runs:
        groups[tuple((k, r.params.get(k, "")) for k in keys)].append(r)
    return dict(groups)


# ---------------------------------------------------------------------------------------------
# statistics


def mean_std(values: Sequence[float]) -> tuple[float, float]:
    """Mean and sample standard deviation (n − 1); std 0 for a single value, NaN for none."""
    if not values:
        return math.nan, math.nan
    return statistics.fmean(values), statistics.stdev(values) if len(values) > 1 else 0.0


def first_reaching(history: dict[str, list[float]], threshold: float, axis: str) -> float | None:
    """The first validation step (or epoch) at which val/acc ≥ threshold; None if never."""
    for x, acc in zip(history.get(axis, []), history.get("val/acc", [])):
        if acc >= threshold:
            return x
    return None


COLUMNS = [  # (summary column, metric key in metrics.json or a derived name)
    ("val_acc", "val/acc"),
    ("val_acc_best", "val/acc_best"),
    ("test_acc", "test/acc"),
    ("train_loss", "train/loss"),
    ("val_loss", "val/loss"),
    ("steps_to_97", "steps_to_97"),
    ("steps_to_98", "steps_to_98"),
    ("epochs_to_97", "epochs_to_97"),
    ("epochs_to_98", "epochs_to_98"),
    ("wall_time_s", "wall_time_s"),
]


# the first part of training that a percentile's drift leaves out (the paper's 1k of 50k steps)
DRIFT_SKIP = 0.02


def drift(history: dict[str, list[float]], key: str) -> float | None:
    """Max − min of a recorded series (a percentile of a pre-activation) over the validations
    after the first DRIFT_SKIP of training: how far the distribution moves while training."""
    steps, values = history.get("val_step", []), history.get(key, [])
    if not steps or not values:
        return None
    kept = [v for s, v in zip(steps, values) if s >= DRIFT_SKIP * steps[-1]]
    return max(kept) - min(kept) if kept else None


def percentile_keys(history: dict[str, list[float]]) -> list[str]:
    """The pre-activation percentile series a run recorded (``percentiles`` in the config)."""
    return [k for k in history if k.startswith("preact/")]


def drift_column(key: str) -> str:
    """preact/fc3_u0/p50 → fc3_u0_p50_drift"""
    return key.removeprefix("preact/").replace("/", "_") + "_drift"


def run_values(run: Run) -> dict[str, float | None]:
    m, h = run.metrics, run.metrics.get("history", {})
    out = {key: m.get(key) for _, key in COLUMNS if "/" in key or key == "wall_time_s"}
    for t in THRESHOLDS:
        pct = round(t * 100)
        out[f"steps_to_{pct}"] = first_reaching(h, t, "val_step")
        out[f"epochs_to_{pct}"] = first_reaching(h, t, "val_epoch")
    for key in percentile_keys(h):
        out[drift_column(key)] = drift(h, key)
    return out


def summarize(runs: Sequence[Run]) -> tuple[list[str], list[dict[str, Any]]]:
    """One row per point: swept keys, seeds finished / diverged / failed, mean ± std columns."""
    keys = swept_keys(runs)
    rows = []
    for point, members in group_by_point(runs).items():
        good = [r for r in members if r.ok]
        row: dict[str, Any] = dict(point)
        row["seeds"] = " ".join(str(r.metrics.get("seed")) for r in sorted(good, key=_seed))
        row["n_finished"] = len(good)
        row["n_diverged"] = sum(r.metrics.get("diverged", False) for r in members)
        row["n_failed"] = sum(r.status == "failed" for r in members)
        values = [run_values(r) for r in good]
        extra = [k for k in dict.fromkeys(k for v in values for k in v) if k.endswith("_drift")]
        for col, key in [*COLUMNS, *((k, k) for k in extra)]:
            present = [v[key] for v in values if v.get(key) is not None]
            row[f"{col}_mean"], row[f"{col}_std"] = mean_std(present)
            if col.startswith(("steps_to", "epochs_to")):
                row[f"{col}_n"] = len(present)  # seeds that reached it
        rows.append(row)
    rows.sort(key=lambda r: tuple(_sort_key(r[k]) for k in keys))
    return keys, rows


def _seed(r: Run) -> int:
    return int(r.metrics.get("seed", 0))


def _sort_key(value: str) -> tuple[int, float | str]:
    try:
        return (0, float(value))
    except ValueError:
        return (1, value)


# ---------------------------------------------------------------------------------------------
# writing the report


def _fmt(mean: float, std: float, digits: int = 4) -> str:
    if math.isnan(mean):
        return "—"
    return f"{mean:.{digits}f} ± {std:.{digits}f}"


def markdown_table(keys: list[str], rows: list[dict[str, Any]]) -> str:
    head = [*keys, "seeds ok / div / fail", "val acc (final)", "val acc (best)", "test acc",
            "train loss", "steps to 97%", "steps to 98%", "wall s/run"]  # fmt: skip
    # medians' drift only (the CSV has every percentile's)
    drifts = [c.removesuffix("_mean") for c in dict.fromkeys(k for r in rows for k in r)
              if c.endswith("_p50_drift_mean")]  # fmt: skip
    head += [f"{c.removesuffix('_drift')} drift" for c in drifts]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:

        def reach(col: str, r: dict[str, Any] = r) -> str:
            n, total = r[f"{col}_n"], r["n_finished"]
            if n == 0:
                return "never"
            cell = f"{r[f'{col}_mean']:.0f} ± {r[f'{col}_std']:.0f}"
            return cell if n == total else f"{cell} ({n}/{total})"

        cells = [str(r[k]) for k in keys]
        cells.append(f"{r['n_finished']} / {r['n_diverged']} / {r['n_failed']}")
        cells += [
            _fmt(r[f"{c}_mean"], r[f"{c}_std"])
            for c in ("val_acc", "val_acc_best", "test_acc", "train_loss")
        ]
        cells += [reach("steps_to_97"), reach("steps_to_98")]
        cells.append(_fmt(r["wall_time_s_mean"], r["wall_time_s_std"], 1))
        cells += [_fmt(r.get(f"{c}_mean", math.nan), r.get(f"{c}_std", math.nan), 3) for c in drifts]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def write_csv(path: Path, rows: list[dict[str, Any]]) -> None:
    fields = list(dict.fromkeys(k for r in rows for k in r))
    out = io.StringIO(newline="")
    w = csv.DictWriter(out, fieldnames=fields)
    w.writeheader()
    w.writerows(rows)
    atomic_write(path, out.getvalue())


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
    ordered = sorted(groups.items(), key=lambda g: tuple(_sort_key(v) for _, v in g[0]))
    return [(point, good) for point, m in ordered if (good := [r for r in m if r.ok])]


def band(ax, members: Sequence[Run], x_key: str, y_key: str, label: str) -> tuple[float, float]:
    """Draw the mean over seeds with a ±std band; returns the band's lowest and highest value."""
    x, mean, std = curves(members, x_key, y_key)
    line = ax.plot(x, mean, label=label)[0]
    lo, hi = [m - d for m, d in zip(mean, std)], [m + d for m, d in zip(mean, std)]
    ax.fill_between(x, lo, hi, color=line.get_color(), alpha=0.2)
    return min(lo, default=0.0), max(hi, default=0.0)


def plot(sweep_dir: Path, keys: list[str], groups: dict, rows: list[dict[str, Any]]) -> list[Path]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    written = []
    by_steps = any(len(r.metrics["history"]["val_step"]) > len(r.metrics["history"]["train_epoch"]) + 1
                   for members in groups.values() for r in members if r.ok)  # fmt: skip
    x_key, x_label = ("val_step", "training step") if by_steps else ("val_epoch", "epoch")
    for name, (xk, yk, xl, yl) in {
        "val_acc.png": (x_key, "val/acc", x_label, "validation accuracy"),
        "train_acc.png": ("train_epoch", "train/acc", "epoch", "training accuracy (epoch mean)"),
    }.items():
        fig, ax = plt.subplots(figsize=(8, 5))
        for point, good in finished_points(groups):
            band(ax, good, xk, yk, f"{point_label(point)} (n={len(good)})")
        ax.set_xlabel(xl)
        ax.set_ylabel(yl + " (mean ± std over seeds)")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
        fig.tight_layout()
        fig.savefig(sweep_dir / name, dpi=110)
        plt.close(fig)
        written.append(sweep_dir / name)
    tracked = any(percentile_keys(r.metrics["history"]) for m in groups.values() for r in m if r.ok)
    if tracked:
        written.append(plot_percentiles(sweep_dir, groups))
    numeric = [k for k in keys if all(_sort_key(r[k])[0] == 0 for r in rows)]
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


class EventWriter:
    """A TensorBoard event file written with tensorboard's own writer: scalars as
    ``SummaryWriter.add_scalar`` writes them, and a custom-scalars layout as its
    ``add_custom_scalars`` does. Without torch: a joblib sweep's parent process imports torch
    for nothing else, and that import was 2.7 s of a 4.4 s report here."""

    def __init__(self, logdir: Path) -> None:
        from tensorboard.compat.proto.event_pb2 import Event
        from tensorboard.compat.proto.summary_pb2 import Summary
        from tensorboard.summary.writer.event_file_writer import EventFileWriter

        self._event, self._summary = Event, Summary
        self._writer = EventFileWriter(str(logdir))

    def add_summary(self, summary: Any, step: int | None = None) -> None:
        event = self._event(wall_time=time.time(), summary=summary)
        if step is not None:
            event.step = step
        self._writer.add_event(event)

    def add_scalar(self, tag: str, value: float, step: int) -> None:
        value = self._summary.Value(tag=tag, simple_value=float(value))
        self.add_summary(self._summary(value=[value]), step)

    def add_custom_scalars(self, layout: dict[str, dict[str, tuple[str, list[str]]]]) -> None:
        self.add_summary(custom_scalars_summary(layout))

    def __enter__(self) -> EventWriter:
        return self

    def __exit__(self, *exc: object) -> None:
        self._writer.close()


def custom_scalars_summary(layout: dict[str, dict[str, tuple[str, list[str]]]]) -> Any:
    """{category: {chart title: ("Multiline", [tag regexes]) | ("Margin", [value, lower,
    upper])}} as the Summary proto TensorBoard's custom-scalars dashboard reads."""
    from tensorboard.compat.proto.summary_pb2 import Summary, SummaryMetadata
    from tensorboard.compat.proto.tensor_pb2 import TensorProto
    from tensorboard.compat.proto.tensor_shape_pb2 import TensorShapeProto
    from tensorboard.plugins.custom_scalar import layout_pb2

    categories = []
    for title, charts in layout.items():
        made = []
        for chart_title, (kind, tags) in charts.items():
            if kind == "Margin":
                value, lower, upper = tags
                series = layout_pb2.MarginChartContent.Series(value=value, lower=lower, upper=upper)
                content = layout_pb2.MarginChartContent(series=[series])
                made.append(layout_pb2.Chart(title=chart_title, margin=content))
            else:
                content = layout_pb2.MultilineChartContent(tag=tags)
                made.append(layout_pb2.Chart(title=chart_title, multiline=content))
        categories.append(layout_pb2.Category(title=title, chart=made))
    tensor = TensorProto(
        dtype="DT_STRING",
        string_val=[layout_pb2.Layout(category=categories).SerializeToString()],
        tensor_shape=TensorShapeProto(),
    )
    metadata = SummaryMetadata(plugin_data=SummaryMetadata.PluginData(plugin_name="custom_scalars"))
    value = Summary.Value(tag="custom_scalars__config__", tensor=tensor, metadata=metadata)
    return Summary(value=[value])


AGGREGATE_LAYOUT = {
    "bnsweep: points compared (mean over seeds)": {
        "val/acc mean": ("Multiline", [r"val/acc_mean"]),
        "val/loss mean": ("Multiline", [r"val/loss_mean"]),
        "train/acc mean (per epoch)": ("Multiline", [r"train/acc_mean"]),
        "val/acc mean ± std": ("Margin", ["val/acc_mean", "val/acc_lower", "val/acc_upper"]),
    },
    "bnsweep: every run": {"val/acc": ("Multiline", [r"^val/acc$"])},
}


def write_tensorboard(sweep_dir: Path, groups: dict) -> Path:
    """One aggregate run per point (mean, mean ± std of val/acc, val/loss, train/acc) and a
    custom-scalars layout that draws every point's mean in one chart."""
    root = sweep_dir / "aggregate"
    for point, members in groups.items():
        good = [r for r in members if r.ok]
        if not good:
            continue
        with EventWriter(root / point_label(point).replace("/", "_")) as w:
            for yk, xk in (
                ("val/acc", "val_step"),
                ("val/loss", "val_step"),
                ("train/acc", "train_epoch"),
            ):
                x, mean, std = curves(good, xk, yk)
                for step, m, s in zip(x, mean, std):
                    step = int(step)
                    w.add_scalar(f"{yk}_mean", m, step)
                    w.add_scalar(f"{yk}_lower", m - s, step)
                    w.add_scalar(f"{yk}_upper", m + s, step)
    with EventWriter(root) as w:
        w.add_custom_scalars(AGGREGATE_LAYOUT)
    return root


def report(sweep_dir: Path | str, quiet: bool = False) -> list[dict[str, Any]]:
    """Aggregate a sweep folder: summary.csv/.md, plots, TensorBoard aggregate runs."""
    sweep_dir = Path(sweep_dir)
    runs = load_runs(sweep_dir)
    if not runs:
        raise FileNotFoundError(f"no runs (*/metrics.json) in {sweep_dir}")
    keys, rows = summarize(runs)
    groups = group_by_point(runs)
    table = markdown_table(keys, rows)
    excluded = sum(not r.ok for r in runs)
    note = (
        f"\n{len(runs)} runs in {len(rows)} points; mean ± sample std over the seeds that finished"
        + (
            f"; {excluded} diverged or failed runs are counted but left out of the means"
            if excluded
            else ""
        )
        + ".\n"
    )
    write_csv(sweep_dir / "summary.csv", rows)
    atomic_write(
        sweep_dir / "summary.md", f"# Sweep summary: {sweep_dir.resolve().name}\n\n" + table + note
    )
    plot(sweep_dir, keys, groups, rows)
    write_tensorboard(sweep_dir, groups)
    if not quiet:
        print(table + note)
    return rows


# ---------------------------------------------------------------------------------------------
# running a sweep


def run_job(cfg: DictConfig) -> float:
    """One job of a sweep: a training run (with sweep.vectorize, all seeds of a point) whose
    failure is recorded, not raised.

    Returns the best validation accuracy (the objective of search sweepers such as Optuna;
    vectorized: the mean over the seeds), NaN for a failed run.
    """
    from bnsweep.train import USER_ERRORS, run

    if OmegaConf.select(cfg, "sweep.vectorize", default=False):
        from bnsweep.vectorize import run_point as run

    run_dir = Path(cfg.run_dir)
    threads = cfg.get("threads") or threads_per_job()
    if threads:
        import torch

        torch.set_num_threads(int(threads))
    try:
        return run(cfg)["val/acc_best"]
    except USER_ERRORS as e:
        _record_failure(run_dir, cfg, f"error: {e}", traceback.format_exc())
        print(f"error: {e}", file=sys.stderr)
    except Exception as e:  # noqa: BLE001 - one job's crash must not end the sweep
        _record_failure(run_dir, cfg, f"{type(e).__name__}: {e}", traceback.format_exc())
        traceback.print_exc()
    return math.nan


def threads_per_job() -> int | None:
    """Cores / parallel jobs, when the launcher runs jobs side by side (joblib's n_jobs)."""
    from hydra.core.hydra_config import HydraConfig

    if not HydraConfig.initialized():
        return None
    n_jobs = HydraConfig.get().launcher.get("n_jobs")
    if not n_jobs:
        return None
    cores = os.cpu_count() or 1
    return max(1, cores // (cores if n_jobs < 0 else n_jobs))


def _record_failure(run_dir: Path, cfg: DictConfig, message: str, tb: str) -> None:
    from bnsweep.train import overrides

    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / "traceback.txt").write_text(tb)
    write_json(run_dir / "metrics.json", {
        "status": "failed", "error": message, "seed": cfg.get("seed"), "overrides": overrides(),
    })  # fmt: skip


def preflight(cfg: DictConfig, sweep_dir: Path) -> None:
    """Before any job: the values every job shares, the data, the output folder. On a problem,
    one line and exit status 2, and no sweep folder is left behind."""
    from bnsweep.config import ConfigError, check_vectorize, validate

    existed = sweep_dir.exists()
    try:
        validate(cfg)  # light: a bad value is refused before Lightning is imported
        if OmegaConf.select(cfg, "sweep.vectorize", default=False):
            check_vectorize(cfg)
        if not cfg.data.get("download", True):
            _check_data(cfg)
        sweep_dir.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=sweep_dir):
            pass
    except ConfigError as e:
        _abort(f"error: {e}", sweep_dir, existed)
    except OSError as e:
        _abort(
            f"error: cannot write the sweep folder {sweep_dir}: {e.strerror or e}",
            sweep_dir,
            existed,
        )


def _check_data(cfg: DictConfig) -> None:
    """The dataset files exist and verify (data.download=false): else ConfigError's one line."""
    from bnsweep.config import ConfigError
    from bnsweep.data import DATASETS, DataError, locate

    if cfg.data.get("name") in DATASETS:
        root = cfg.data.get("root")
        try:
            locate(DATASETS[cfg.data.name], Path(root) if root else None, download=False)
        except DataError as e:
            raise ConfigError(str(e)) from e


def _abort(message: str, sweep_dir: Path, existed: bool) -> None:
    if not existed and sweep_dir.is_dir() and not any(sweep_dir.iterdir()):
        sweep_dir.rmdir()
    print(message, file=sys.stderr)
    sys.exit(2)


class SweepCallback(Callback):
    """Records the command line at the start of a sweep and writes the report at its end."""

    failed: list[str] = []

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        sweep_dir = Path(config.hydra.sweep.dir)
        preflight(config, sweep_dir)
        from bnsweep import cli

        typed = cli.TYPED or sys.argv[1:]  # what the user typed, before the seeds fan-out
        with (sweep_dir / "command.txt").open("a") as f:  # a resume adds its line
            f.write(shlex.join([Path(sys.argv[0]).name, *typed]) + "\n")

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        sweep_dir = Path(config.hydra.sweep.dir)
        runs = load_runs(sweep_dir)
        SweepCallback.failed = [r.path.name for r in runs if r.status == "failed"]
        if runs:
            report(sweep_dir)


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m bnsweep.report <sweep dir>``: (re)write a sweep folder's report."""
    import argparse

    p = argparse.ArgumentParser(prog="python -m bnsweep.report", description=report.__doc__)
    p.add_argument("sweep_dir", type=Path)
    args = p.parse_args(argv)
    try:
        report(args.sweep_dir)
    except FileNotFoundError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0

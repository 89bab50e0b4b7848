"""Studies: seeds fan-out, one job per (point, seed), and the aggregate report of a sweep folder.

A *point* is one combination of the swept keys (everything a run's overrides set, except the
seed, that differs between runs). The report groups the runs of a sweep folder by point and
writes summary.csv / summary.md (mean ± sample std over seeds), PNG plots, and one TensorBoard
aggregate run per point with the mean and ±std curves.
"""

from __future__ import annotations

import contextlib
import csv
import io
import json
import math
import os
import shlex
import shutil
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
    """The runs of a sweep folder; a metrics.json that does not read is named and skipped."""
    from bnsweep.files import DamagedFile, read_json

    runs = []
    for f in sorted(Path(sweep_dir).glob("*/metrics.json")):
        try:
            metrics = read_json(f)
        except DamagedFile as e:
            print(f"warning: skipped {f}: it is damaged{str(e).removeprefix(str(f) + ' is damaged')}",
                  file=sys.stderr)  # fmt: skip
            continue
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
    """``aggregate/``, written whole by each report: one run per point (mean, mean ± std of
    val/acc, val/loss, train/acc), a custom-scalars layout that draws every point's mean in one
    chart, and the sweep's HPARAMS experiment (every key the runs record, with its domain)."""
    from bnsweep.tensorboard import EventWriter, experiment_summary

    root = sweep_dir / "aggregate"
    shutil.rmtree(root, ignore_errors=True)  # derived from the runs: never merged with an old one
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
    values: dict[str, list] = defaultdict(list)
    for members in groups.values():
        for r in members:
            for key, value in (r.metrics.get("hparams") or {}).items():
                values[key].append(value)
    with EventWriter(root) as w:
        w.add_custom_scalars(AGGREGATE_LAYOUT)
        if values:
            w.add_summary(experiment_summary(values))
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

JOBS_LOG = "jobs.jsonl"  # one line per job of every invocation: what became of it


class SweepStopped(BaseException):
    """Ends a sweep early (a full disk: every later job would fail too). A BaseException, so
    that Hydra's launchers, which record a job's Exception and run the next job, let it
    through to sweep.py, which reports what finished (``stopped``) and exits."""

    def __init__(self, message: str, sweep_dir: Path) -> None:
        super().__init__(message)
        self.sweep_dir = Path(sweep_dir)


def stopped(e: SweepStopped) -> int:
    """After a sweep stopped early: the report of what finished, where it fits; exit status."""
    with contextlib.suppress(OSError, FileNotFoundError):
        report(e.sweep_dir, quiet=True)
    print(f"error: the sweep stopped early ({e}); runs finished before are intact, and "
          f"resume={e.sweep_dir} continues it", file=sys.stderr)  # fmt: skip
    return 1


def run_job(cfg: DictConfig) -> float:
    """One job of a sweep: a training run (with sweep.vectorize, all seeds of a point) whose
    failure is recorded, not raised. A refused job (its folder holds another run, or is in use)
    writes nothing into that folder; the sweep lists it at its end.

    Returns the best validation accuracy (the objective of search sweepers such as Optuna;
    vectorized: the mean over the seeds), NaN for a failed or refused run.
    """
    from bnsweep.files import DamagedFile, FolderInUse, is_no_space, remove_unstarted
    from bnsweep.runs import RunRefused
    from bnsweep.train import USER_ERRORS, no_space_message, run

    vectorize = OmegaConf.select(cfg, "sweep.vectorize", default=False)
    if vectorize:
        from bnsweep.vectorize import run_point as run

    hydra_dir = Path(cfg.run_dir)  # the folder Hydra made for this job
    fresh = not hydra_dir.exists() or all(p.suffix == ".log" for p in hydra_dir.iterdir())
    if cfg.get("resume") and not vectorize:
        _use_existing_folder(cfg)
    run_dir = Path(cfg.run_dir)
    threads = cfg.get("threads") or threads_per_job()
    if threads:
        import torch

        torch.set_num_threads(int(threads))
    started = time.time()
    status, error, value = "finished", None, math.nan
    try:
        result = run(cfg)
        value = result["val/acc_best"]
        status = "diverged" if result.get("diverged") else "finished"
    except (RunRefused, FolderInUse, DamagedFile) as e:
        status, error = "refused", str(e)
        print(f"refused: {e}", file=sys.stderr)
    except USER_ERRORS as e:
        status, error = "failed", f"error: {e}"
        _record_failure(run_dir, cfg, error, traceback.format_exc())
        print(error, file=sys.stderr)
    except Exception as e:  # noqa: BLE001 - one job's crash must not end the sweep
        if is_no_space(e):
            message = no_space_message(e, run_dir)
            with contextlib.suppress(OSError):
                _record_failure(run_dir, cfg, f"error: {message}", traceback.format_exc())
            print(f"error: {message}", file=sys.stderr)
            raise SweepStopped(message, run_dir.parent) from None
        status, error = "failed", f"{type(e).__name__}: {e}"
        _record_failure(run_dir, cfg, error, traceback.format_exc())
        traceback.print_exc()
    finally:
        if fresh and (hydra_dir != run_dir or status == "refused"):
            remove_unstarted(hydra_dir)  # Hydra's new folder, unused: no stray folder
    _log_job(run_dir, status, error, time.time() - started)
    return value


def _use_existing_folder(cfg: DictConfig) -> None:
    """A resumed sweep runs each job in the folder that holds its config, whatever its name
    (the swept lists may have changed since, and with them the job numbers and names)."""
    from omegaconf import open_dict

    from bnsweep.runs import config_snapshot, find_run

    found = find_run(Path(cfg.run_dir).parent, config_snapshot(cfg))
    if found is not None and found != Path(cfg.run_dir):
        with open_dict(cfg):
            cfg.run_dir = str(found)


def _log_job(run_dir: Path, status: str, error: str | None, seconds: float) -> None:
    """A line in the sweep folder's jobs.jsonl (appended: one short write per job, whole even
    when jobs end side by side)."""
    line = json.dumps({"run": run_dir.name, "status": status, "error": error,
                       "seconds": round(seconds, 3), "at": time.time()})  # fmt: skip
    with contextlib.suppress(OSError), (run_dir.parent / JOBS_LOG).open("a") as f:
        f.write(line + "\n")


def jobs_since(sweep_dir: Path, offset: int) -> list[dict[str, Any]]:
    """The jobs.jsonl entries written after byte ``offset`` (this invocation's jobs)."""
    path = Path(sweep_dir) / JOBS_LOG
    if not path.exists():
        return []
    with path.open("rb") as f:
        f.seek(offset)
        return [json.loads(line) for line in f.read().decode().splitlines() if line.strip()]


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
    """traceback.txt and a failed metrics.json, never over a finished run's metrics."""
    from bnsweep.train import overrides

    metrics = run_dir / "metrics.json"
    with contextlib.suppress(ValueError, OSError):
        if json.loads(metrics.read_text()).get("status") == "finished":
            return
    run_dir.mkdir(parents=True, exist_ok=True)
    atomic_write(run_dir / "traceback.txt", tb)
    write_json(metrics, {
        "status": "failed", "error": message, "seed": cfg.get("seed"), "overrides": overrides(),
    })  # fmt: skip


def preflight(cfg: DictConfig, sweep_dir: Path, lock_holder: list) -> None:
    """Before any job: the values every job shares, the data, the output folder, its lock, and
    on resume the sweep it holds. On a problem, one line and exit status 2, and the folder is
    left as it was (no folder is left behind where there was none)."""
    from bnsweep.config import ConfigError, check_vectorize, validate
    from bnsweep.files import FolderInUse, FolderLock, is_no_space

    existed = sweep_dir.exists()
    try:
        validate(cfg)  # light: a bad value is refused before Lightning is imported
        if OmegaConf.select(cfg, "sweep.vectorize", default=False):
            check_vectorize(cfg)
        if not cfg.data.get("download", True):
            _check_data(cfg)
        sweep_dir.mkdir(parents=True, exist_ok=True)
        lock_holder.append(FolderLock(sweep_dir, "sweep folder"))
        _check_resume(cfg, sweep_dir)
        with tempfile.NamedTemporaryFile(dir=sweep_dir) as f:
            f.write(b"\0" * 65536)  # room for a run's first files at least
            f.flush()
            os.fsync(f.fileno())
    except (ConfigError, FolderInUse) as e:
        _abort(f"error: {e}", sweep_dir, existed)
    except OSError as e:
        reason = "no space left on its device" if is_no_space(e) else (e.strerror or str(e))
        _abort(f"error: cannot write the sweep folder {sweep_dir}: {reason}", sweep_dir, existed)


SWEEP_FILE = "sweep.json"  # the sweep's settings as first started: what a resume must keep


def sweep_settings(cfg: DictConfig) -> dict[str, dict[str, Any]]:
    """key -> {"swept": bool, "value": text} for every setting the command line or the study
    preset gives, except those that do not change what runs compute (bnsweep.runs)."""
    from bnsweep.cli import is_sweep
    from bnsweep.runs import LOCATION_KEYS, NOT_COMPARED

    given: dict[str, str] = {}
    hydra = cfg.hydra
    for key, value in (OmegaConf.select(cfg, "hydra.sweeper.params", default=None) or {}).items():
        given[str(key)] = str(value)
    for text in hydra.overrides.task:
        if "=" in text:
            key, value = text.split("=", 1)
            given[key.lstrip("+~")] = value
    given["study"] = str(hydra.runtime.choices.get("study", "custom"))
    skip = {"seed", *NOT_COMPARED, *LOCATION_KEYS}
    return {k: {"swept": is_sweep(v), "value": v} for k, v in sorted(given.items())
            if k not in skip and not k.startswith(("hydra.", "hydra/"))}  # fmt: skip


def _check_resume(cfg: DictConfig, sweep_dir: Path) -> None:
    """A sweep folder is continued only with resume=, and only with the sweep it holds: the
    values of a swept key may change (runs are matched by their config), nothing else may."""
    from bnsweep.config import ConfigError

    holds = (sweep_dir / "command.txt").exists()
    now = sweep_settings(cfg)
    saved = sweep_dir / SWEEP_FILE
    if holds and not cfg.get("resume"):
        raise ConfigError(
            f"hydra.sweep.dir={sweep_dir} already holds a sweep; resume={sweep_dir} continues "
            "it, or choose another folder"
        )
    if holds and saved.exists():
        before = json.loads(saved.read_text())
        changed = [k for k in dict.fromkeys([*before, *now])
                   if k not in before or k not in now
                   or not (before[k]["swept"] or now[k]["swept"])
                   and before[k]["value"] != now[k]["value"]]  # fmt: skip
        if changed:
            shown = ", ".join(
                f"{k}: {before.get(k, {}).get('value', '(unset)')} → "
                f"{now.get(k, {}).get('value', '(unset)')}"
                for k in changed
            )
            raise ConfigError(
                f"resume={sweep_dir} would change the sweep it holds ({shown}); only the values "
                "of a swept key may change: start a new sweep for other settings"
            )
    elif not holds:
        write_json(saved, now)


def _check_data(cfg: DictConfig) -> None:
    """The dataset files exist and verify (data.download=false): else ConfigError's one line."""
    from bnsweep.config import ConfigError
    from bnsweep.datasets import DATASETS, DataError, locate

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
    """Checks and locks the sweep folder and records the command line at the start of a
    sweep; writes the report and names what failed or was refused at its end (exit status 1
    then)."""

    def __init__(self) -> None:
        self._lock: list = []  # the sweep folder's lock, held until the process ends
        self._jobs_offset = 0

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        try:
            self._start(config)
        except Exception:  # Hydra would turn it into a warning and run the jobs unchecked
            traceback.print_exc()
            raise SystemExit(1) from None

    def _start(self, config: DictConfig) -> None:
        sweep_dir = Path(config.hydra.sweep.dir)
        preflight(config, sweep_dir, self._lock)
        jobs = sweep_dir / JOBS_LOG
        self._jobs_offset = jobs.stat().st_size if jobs.exists() else 0
        typed = _typed_command(config)
        with (sweep_dir / "command.txt").open("a") as f:  # a resume adds its line
            f.write(shlex.join([Path(sys.argv[0]).name, *typed]) + "\n")

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        _release_workers(config)
        sweep_dir = Path(config.hydra.sweep.dir)
        end_of_sweep(sweep_dir, jobs_since(sweep_dir, self._jobs_offset))


def _release_workers(config: DictConfig) -> None:
    """After a joblib sweep, end its idle worker processes at once: every job has returned and
    flushed its files, and an orderly exit of a process holding torch and Lightning took ~2 s
    here, which the sweep's process waited for before it could exit."""
    if "joblib" not in str(OmegaConf.select(config, "hydra.launcher._target_", default="")):
        return
    from joblib.externals.loky import get_reusable_executor

    get_reusable_executor(reuse=True).shutdown(wait=False, kill_workers=True)


def _typed_command(config: DictConfig) -> list[str]:
    """What the user typed, before the seed fan-out (sweep.py records it in BNSWEEP_TYPED)."""
    typed = os.environ.get("BNSWEEP_TYPED")
    return json.loads(typed) if typed else sys.argv[1:]


def end_of_sweep(sweep_dir: Path, jobs: list[dict[str, Any]]) -> None:
    """The report of the sweep folder, then one line per kind of trouble; exit status 1 when a
    run failed or a job was refused."""
    runs = load_runs(sweep_dir)
    if runs:
        try:
            report(sweep_dir)
        except OSError as e:
            print(f"error: the report could not be written in {sweep_dir}: {e.strerror or e}",
                  file=sys.stderr)  # fmt: skip
    refused = [j for j in jobs if j["status"] == "refused"]
    failed = [r.path.name for r in runs if r.status == "failed"]
    if refused:
        print(f"error: {len(refused)} job(s) refused, their folders left as they were: "
              + "; ".join(j["error"] for j in refused), file=sys.stderr)  # fmt: skip
    if failed:
        print(f"error: {len(failed)} run(s) failed: {' '.join(failed)}", file=sys.stderr)
    if refused or failed:
        raise SystemExit(1)


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

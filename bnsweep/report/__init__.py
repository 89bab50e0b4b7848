"""A sweep folder's report: summary.csv / summary.md (per point: n, mean ± sample std and the
95 % CI of the mean over seeds; then each point's difference from the baseline point, tested),
comparisons.csv, PNG plots (compare.png: the differences with their CIs), and TensorBoard
aggregates (``python -m bnsweep.report <sweep folder>``).

Imports no torch and no Lightning (nor does anything it imports): a sweep's own process, which
writes the report at the end, never pays for them.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from bnsweep.files import atomic_write
from bnsweep.report import compare
from bnsweep.report.aggregate import AGGREGATE_LAYOUT, write_tensorboard
from bnsweep.report.compare import ReportError
from bnsweep.report.plots import finished_points, plot
from bnsweep.report.runs import Run, group_by_point, load_run_folders, load_runs
from bnsweep.report.summary import DRIFT_SKIP, markdown_table, summarize, tuned_column, write_csv
from bnsweep.report.tuning import plot_tuning, read_tuning, tuning_markdown

__all__ = ["AGGREGATE_LAYOUT", "DRIFT_SKIP", "ReportError", "Run", "load_runs", "main", "report"]


def settings_of(sweep_dir: Path) -> dict[str, Any]:
    """The sweep's ``report`` settings (conf/sweep.yaml), from the config Hydra saved in its
    folder; none for a folder without one."""
    saved = Path(sweep_dir) / "multirun.yaml"
    if not saved.exists():
        return {}
    from omegaconf import OmegaConf

    node = OmegaConf.select(OmegaConf.load(saved), "report", default=None)
    return OmegaConf.to_container(node, resolve=False) if node is not None else {}


def report(
    out_dir: Path | str,
    quiet: bool = False,
    runs: Sequence[Run] | None = None,
    settings: dict[str, Any] | None = None,
) -> list[dict[str, Any]]:
    """summary.csv / summary.md, plots and TensorBoard aggregates in ``out_dir``, of the runs
    in it (a sweep folder) or of ``runs``; ``settings``: the sweep's ``report`` keys (default:
    those the sweep was run with)."""
    out_dir = Path(out_dir)
    runs = load_runs(out_dir) if runs is None else list(runs)
    if not runs:
        raise FileNotFoundError(f"no runs (*/metrics.json) in {out_dir}")
    settings = settings_of(out_dir) if settings is None else settings
    tuning = read_tuning(out_dir)
    tuned = tuning["key"] if tuning else None
    keys, rows = summarize(runs, tuned)
    groups = group_by_point(runs, tuned)
    compared = compare.comparisons(finished_points(groups), settings)  # a bad baseline: here
    table = markdown_table([*keys, tuned_column(tuned)] if tuned else keys, rows)
    excluded = sum(not r.ok for r in runs)
    note = (
        f"\n{len(runs)} runs in {len(rows)} points; mean ± sample std [95 % CI of the mean] over "
        "the seeds that finished"
        + (
            f"; {excluded} diverged or failed runs are counted but left out of the means"
            if excluded
            else ""
        )
        + ".\n"
        + diverged_note(groups)
        + unfinished_note(out_dir)
    )
    differences = compare.markdown(compared, settings.get("power"))
    out_dir.mkdir(parents=True, exist_ok=True)
    write_csv(out_dir / "summary.csv", rows)
    if compared:
        write_csv(out_dir / "comparisons.csv", compared)
    tuned_note = tuning_markdown(tuning) if tuning else ""
    atomic_write(
        out_dir / "summary.md",
        f"# Sweep summary: {out_dir.resolve().name}\n\n" + table + note + differences + tuned_note,
    )
    plot(out_dir, keys, groups, rows, settings)
    if tuning:
        plot_tuning(out_dir / "tuning.png", tuning)
    if compared:
        compare.forest_plot(out_dir / "compare.png", compared)
    write_tensorboard(out_dir, groups, keys)
    if not quiet:
        print(table + note + differences + tuned_note)
    return rows


def unfinished_note(sweep_dir: Path) -> str:
    """The run folders of a sweep that hold no result (interrupted, or running now): named,
    not counted (a resume continues them)."""
    names = sorted(p.parent.name for p in Path(sweep_dir).glob("*/run_config.json")
                   if not (p.parent / "metrics.json").exists())  # fmt: skip
    return (
        f"Unfinished (interrupted, or running now; resume= continues them): {', '.join(names)}.\n"
        if names
        else ""
    )


def diverged_note(groups: dict) -> str:
    """The points with diverged runs (a loss or a statistic NaN or infinite), by name and seed."""
    hit = []
    for point, members in groups.items():
        seeds = sorted(str(r.metrics.get("seed")) for r in members if r.diverged)
        if seeds:
            name = ",".join(f"{k}={v}" for k, v in point) or "the sweep's one point"
            hit.append(f"{name} (seed{'s' * (len(seeds) > 1)} {', '.join(seeds)})")
    return f"Diverged (a loss or a statistic NaN or infinite): {'; '.join(hit)}.\n" if hit else ""


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m bnsweep.report <sweep folder>``: (re)write a sweep folder's report;
    ``python -m bnsweep.report --runs <run folder> ... --out <folder>``: a report comparing
    chosen runs (train.py's, say), written into a folder of its own."""
    import argparse

    p = argparse.ArgumentParser(prog="python -m bnsweep.report", description=main.__doc__)
    p.add_argument("sweep_dir", type=Path, nargs="?", help="a sweep folder")
    p.add_argument("--runs", type=Path, nargs="+", help="run folders to compare")
    p.add_argument("--out", type=Path, help="where the report of --runs goes")
    p.add_argument("--ylim", type=float, nargs=2, metavar=("LOW", "HIGH"),
                   help="y-range of val_acc.png (default: the sweep's report.val_acc_ylim)")  # fmt: skip
    p.add_argument("--baseline", help="the point the others are compared with, e.g. model=lenet "
                   "(default: the sweep's report.baseline, else the first point)")  # fmt: skip
    p.add_argument("--final-y", choices=["acc", "error"],
                   help="final_<y>_vs_<key>.png: accuracy or error (default: the sweep's report.final_y)")  # fmt: skip
    p.add_argument("--compare", choices=["baseline", "all"], help="all: every pair of points")
    p.add_argument("--power", type=float, help="e.g. 0.8: the seeds a paired test needs for "
                   "that power at the observed effect")  # fmt: skip
    p.add_argument("--replot", type=Path, metavar="COMPARISONS_CSV",
                   help="draw compare.png again from a comparisons.csv, into --out")  # fmt: skip
    args = p.parse_args(argv)
    if args.replot:
        if args.out is None:
            p.error("--replot needs --out <folder> for compare.png")
        compare.forest_plot(args.out / "compare.png", compare.read_csv(args.replot))
        return 0
    given = {"val_acc_ylim": list(args.ylim) if args.ylim else None, "baseline": args.baseline,
             "compare": args.compare, "power": args.power, "final_y": args.final_y}  # fmt: skip
    settings = {k: v for k, v in given.items() if v is not None} or None
    try:
        if args.runs:
            return _compare(args.runs, args.out, settings)
        if args.sweep_dir is None:
            p.error("give a sweep folder, or --runs <run folders> --out <folder>")
        if not (args.sweep_dir / "command.txt").is_file() and any(
            args.sweep_dir.glob("*/metrics.json")
        ):
            print(f"error: {args.sweep_dir} is not a sweep folder (no command.txt in it); to "
                  "compare runs: python -m bnsweep.report --runs <run folders> --out <folder>",
                  file=sys.stderr)  # fmt: skip
            return 2
        if settings is not None:  # the sweep's own, with those given on the command line
            settings = {**settings_of(args.sweep_dir), **settings}
        report(args.sweep_dir, settings=settings)
    except (FileNotFoundError, ReportError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0


def _compare(folders: Sequence[Path], out: Path | None, settings: dict[str, Any] | None) -> int:
    if out is None:
        print("error: --runs needs --out <folder> for the report", file=sys.stderr)
        return 2
    if (out / "command.txt").exists() or (out / "metrics.json").exists():
        print(f"error: --out {out} is a sweep or run folder; choose a folder of its own",
              file=sys.stderr)  # fmt: skip
        return 2
    runs = load_run_folders(folders)
    report(out, runs=runs, settings=settings or {})
    return 0

"""Per point: seeds finished / diverged / failed and, of every reported metric, the seeds it
is over (n), the mean, the sample std and the 95 % Student-t confidence interval of the mean;
as rows (summary.csv) and as a Markdown table (summary.md, printed)."""

from __future__ import annotations

import csv
import io
import math
import statistics
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from bnsweep.files import atomic_write
from bnsweep.report.runs import Run, group_by_point, swept_keys
from bnsweep.report.stats import mean_ci

THRESHOLDS = (0.97, 0.98)


def mean_std(values: Sequence[float]) -> tuple[float, float]:
    """Mean and sample standard deviation (n − 1); std 0 for a single value, NaN for none.
    Non-finite values never reach the statistics (diverged runs are left out before)."""
    values = [v for v in values if math.isfinite(v)]
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


def tuned_column(key: str) -> str:
    return f"{key} (tuned)"


def summarize(runs: Sequence[Run], tuned: str | None = None) -> tuple[list[str], list[dict[str, Any]]]:
    """One row per point: swept keys, seeds finished / diverged / failed, mean ± std columns;
    ``tuned``: the key sweep.tune chose per point, a column of its own (``<key> (tuned)``)."""
    keys = swept_keys(runs, tuned)
    rows = []
    for point, members in group_by_point(runs, tuned).items():
        good = [r for r in members if r.ok]
        row: dict[str, Any] = dict(point)
        if tuned is not None:
            row[tuned_column(tuned)] = members[0].shown(tuned)
        for k in keys:  # the exact value beside a label that left a float's noise out
            if k in members[0].settings and members[0].exact(k) != row[k]:
                row[f"{k} (exact)"] = members[0].exact(k)
        row["seeds"] = " ".join(str(r.metrics.get("seed")) for r in sorted(good, key=_seed))
        row["n_finished"] = len(good)
        row["n_diverged"] = sum(r.diverged for r in members)
        row["n_failed"] = sum(r.status == "failed" for r in members)
        values = [run_values(r) for r in good]
        extra = [k for k in dict.fromkeys(k for v in values for k in v) if k.endswith("_drift")]
        for col, key in [*COLUMNS, *((k, k) for k in extra)]:
            present = [v[key] for v in values if v.get(key) is not None and math.isfinite(v[key])]
            row[f"{col}_mean"], row[f"{col}_std"] = mean_std(present)
            row[f"{col}_ci_low"], row[f"{col}_ci_high"] = mean_ci(present)
            row[f"{col}_n"] = len(present)  # steps_to: the seeds that reached it
        rows.append(row)
    rows.sort(key=lambda r: tuple(sort_key(r[k]) for k in keys))
    return keys, rows


def _seed(r: Run) -> int:
    return int(r.metrics.get("seed", 0))


def sort_key(value: str) -> tuple[int, float | str]:
    try:
        return (0, float(value))
    except ValueError:
        return (1, value)


def _fmt(mean: float, std: float, digits: int = 4, n: int = 2,
         ci: tuple[float, float] | None = None) -> str:  # fmt: skip
    """``0.9862 ± 0.0022 [0.9807, 0.9917]`` (mean ± sample std [95 % CI of the mean]); one seed
    has no spread: ``0.9862 (n = 1)``."""
    if math.isnan(mean):
        return "—"
    if n == 1:
        return f"{mean:.{digits}f} (n = 1)"
    cell = f"{mean:.{digits}f} ± {std:.{digits}f}"
    if ci is not None and not math.isnan(ci[0]):
        cell += f" [{ci[0]:.{digits}f}, {ci[1]:.{digits}f}]"
    return cell


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
            cell = f"{r[f'{col}_mean']:.0f}" + (f" ± {r[f'{col}_std']:.0f}" if n > 1 else "")
            return cell if n == total else f"{cell} ({n}/{total})"

        cells = [str(r[k]) for k in keys]
        cells.append(f"{r['n_finished']} / {r['n_diverged']} / {r['n_failed']}")
        n = r["n_finished"]
        cells += [
            _fmt(
                r[f"{c}_mean"],
                r[f"{c}_std"],
                n=r[f"{c}_n"],
                ci=(r[f"{c}_ci_low"], r[f"{c}_ci_high"]),
            )
            for c in ("val_acc", "val_acc_best", "test_acc", "train_loss")
        ]
        cells += [reach("steps_to_97"), reach("steps_to_98")]
        cells.append(_fmt(r["wall_time_s_mean"], r["wall_time_s_std"], 1, n=n))
        cells += [_fmt(r.get(f"{c}_mean", math.nan), r.get(f"{c}_std", math.nan), 3, n=n)
                  for c in drifts]  # fmt: skip
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def write_csv(path: Path, rows: list[dict[str, Any]]) -> None:
    fields = list(dict.fromkeys(k for r in rows for k in r))
    out = io.StringIO(newline="")
    w = csv.DictWriter(out, fieldnames=fields)
    w.writeheader()
    w.writerows(rows)
    atomic_write(path, out.getvalue())

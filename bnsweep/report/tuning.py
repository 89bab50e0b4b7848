"""The report of a tuned sweep (sweep.tune): per point the value chosen and every value's score
(summary.md's "Tuning" section), and tuning.png: the validation score against the tuned value,
one line per point, the chosen value marked."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

TUNE_DIR = "tune"  # inside the sweep folder: the tuning runs
TUNING = "tuning.json"  # inside TUNE_DIR: every point's scores and its choice


def read_tuning(sweep_dir: Path) -> dict[str, Any] | None:
    """A sweep folder's tune/tuning.json; None for a sweep that tuned nothing."""
    from bnsweep.files import read_json

    path = Path(sweep_dir) / TUNE_DIR / TUNING
    return read_json(path) if path.is_file() else None


def _value(v: Any) -> str:
    return f"{v:g}" if isinstance(v, float) else str(v)


def _score(entry: dict[str, Any]) -> str:
    if entry["score"] is None:
        return entry["status"]  # diverged, failed, missing: scored the worst
    return f"{entry['score']:.4f}"


def budget_line(tuning: dict[str, Any]) -> str:
    seeds = tuning["seeds"]
    runs = f"{len(seeds)} tuning run{'s' * (len(seeds) > 1)} per value (seed{'s' * (len(seeds) > 1)} " \
           f"{', '.join(map(str, seeds))})"  # fmt: skip
    if tuning.get("range"):
        lo, hi = tuning["range"]
        how = (f"{tuning['budget']} values per point proposed by Optuna's TPE in "
               f"[{lo:g}, {hi:g}] (log scale, sampler seed {tuning['sampler_seed']})")  # fmt: skip
    else:
        how = f"the values {', '.join(_value(v) for v in tuning['values'])}"
    return (f"{tuning['key']} tuned per point: {how}; {runs}; a value scores the mean "
            f"{tuning['score']} of its runs on the validation split (their test set never "
            "evaluated), a diverged or failed run scores it the worst, ties go to the smaller "
            "value. The table above compares the points at their chosen values.")  # fmt: skip


def tuning_markdown(tuning: dict[str, Any]) -> str:
    """summary.md's section: the chosen value and every value's score, per point."""
    lines = ["", f"## Tuning: {tuning['key']}", "", budget_line(tuning), "",
             "| point | chosen | score | values tried: score |", "|---|---|---|---|"]  # fmt: skip
    for p in tuning["points"]:
        tried = sorted(p["values"], key=lambda e: _sortable(e["value"]))
        cells = "; ".join(f"{_value(e['value'])}: {_score(e)}" for e in tried)
        chosen = _value(p["chosen"]) if p["chosen"] is not None else "none (no value scored)"
        score = f"{p['chosen_score']:.4f}" if p["chosen_score"] is not None else "—"
        lines.append(f"| {p['point']} | {chosen} | {score} | {cells} |")
    return "\n".join(lines) + "\n"


def _sortable(v: Any) -> tuple[int, Any]:
    return (0, v) if isinstance(v, (int, float)) and not isinstance(v, bool) else (1, str(v))


def plot_tuning(path: Path, tuning: dict[str, Any]) -> Path | None:
    """tuning.png: each point's score against the tuned value (a log axis for positive
    numbers), the chosen value ringed, diverged or failed values as crosses at the bottom."""
    points = tuning["points"]
    numeric = all(_sortable(e["value"])[0] == 0 for p in points for e in p["values"])
    if not points:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    scores = [e["score"] for p in points for e in p["values"] if e["score"] is not None]
    floor = min(scores) if scores else 0.0
    names = sorted({_value(e["value"]) for p in points for e in p["values"]},
                   key=lambda t: _sortable(float(t) if numeric else t))  # fmt: skip
    values = sorted({e["value"] for p in points for e in p["values"]}) if numeric else []
    log = numeric and bool(values) and values[0] > 0
    best = [p["chosen_score"] for p in points if p["chosen_score"] is not None]
    # beside the whole range, the top of it, where the chosen values are told apart
    zoom = (min(best) - 0.02, max(best) + 0.005) if best and floor < min(best) - 0.05 else None
    fig, axes = plt.subplots(1, 2 if zoom else 1, figsize=(12.5 if zoom else 7.5, 4.6), squeeze=False)
    for k, ax in enumerate(axes[0]):
        for p in points:
            tried = sorted(p["values"], key=lambda e: _sortable(e["value"]))
            x = [e["value"] if numeric else names.index(_value(e["value"])) for e in tried]
            y = [e["score"] if e["score"] is not None else math.nan for e in tried]
            (line,) = ax.plot(x, y, marker="o", ms=4, label=p["point"])
            bad = [xi for xi, e in zip(x, tried) if e["score"] is None]
            if bad:
                ax.scatter(bad, [floor] * len(bad), marker="x", color=line.get_color(), s=40)
            if p["chosen"] is not None:
                cx = p["chosen"] if numeric else names.index(_value(p["chosen"]))
                ax.scatter([cx], [p["chosen_score"]], s=160, facecolors="none",
                           edgecolors=line.get_color(), linewidths=2)  # fmt: skip
        if log:
            ax.set_xscale("log")
            if len(values) <= 12:  # every value tried named on the axis
                ax.set_xticks(values, [f"{v:g}" for v in values])
                ax.minorticks_off()
        if not numeric:
            ax.set_xticks(range(len(names)), names)
        ax.set_xlabel(tuning["key"] + (" (log axis)" if log else ""))
        ax.grid(alpha=0.3)
        if k == 1:
            ax.set_ylim(*zoom)
            ax.set_title("the top of the range", fontsize=9)
    ax = axes[0][0]
    ax.set_ylabel(f"validation {tuning['score'].replace('val_acc', 'accuracy').replace('_best', ' (best)')}"
                  f", mean of {len(tuning['seeds'])} tuning run{'s' * (len(tuning['seeds']) > 1)}")  # fmt: skip
    ax.set_title("each point's tuning: ringed, the value chosen; ×, diverged or failed",
                 fontsize=9)  # fmt: skip
    ax.legend(fontsize=8, loc="best")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path

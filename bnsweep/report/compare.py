"""Comparisons of a sweep's points: each point against the baseline point (``report.baseline``,
default the first point of the summary) or every pair (``report.compare=all``), metric by
metric, with the difference, its 95 % CI, the test (``bnsweep.report.stats``), Holm-adjusted
p-values and what is significant; comparisons.csv, a table in summary.md and compare.png."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from itertools import combinations
from pathlib import Path
from typing import Any

from bnsweep.report.runs import Run, point_label
from bnsweep.report.stats import ALPHA, Comparison, compare, compare_censored, holm, seeds_needed
from bnsweep.report.summary import run_values

# (column, metric) compared; the steps to a threshold are censored (seeds that never got there)
COMPARED = [
    ("val_acc", "val/acc"),
    ("val_acc_best", "val/acc_best"),
    ("test_acc", "test/acc"),
    ("val_loss", "val/loss"),
    ("train_loss", "train/loss"),
    ("steps_to_97", "steps_to_97"),
    ("steps_to_98", "steps_to_98"),
]
SHOWN = ("test_acc", "val_acc", "steps_to_97")  # in summary.md (every one in comparisons.csv)
MOST_PAIRS = 10  # report.compare=all: sweeps of at most this many points


class ReportError(ValueError):
    """A report setting that does not fit the sweep; the message is one line naming it."""


def parse_baseline(spec: str) -> list[tuple[str, str]]:
    """'model=lenet,bn=window' -> [("model", "lenet"), ("bn", "window")]."""
    wanted = []
    for part in str(spec).split(","):
        key, eq, value = part.partition("=")
        if not eq or not key.strip():
            raise ReportError(f"report.baseline must be KEY=VALUE[,KEY=VALUE...], got {spec!r}")
        wanted.append((key.strip(), value.strip()))
    return wanted


def _same(a: Any, b: Any) -> bool:
    """Whether two written values are one: as text, as booleans (true is True: Hydra's sweeper
    writes a swept ``false,true`` as False and True), or as numbers (1e-3 is 0.001)."""
    if str(a) == str(b):
        return True
    truth = {"true": True, "false": False}
    if str(a).lower() in truth and str(b).lower() in truth:
        return truth[str(a).lower()] == truth[str(b).lower()]
    try:
        return float(a) == float(b)
    except (TypeError, ValueError):
        return False


def check_baseline(spec: str, swept: Mapping[str, Sequence[str]]) -> None:
    """Before a sweep runs: each KEY=VALUE of ``spec`` names a swept key and one of its values
    (``swept``: key -> the values of a plain comma list; keys swept otherwise are not checked)."""
    for key, value in parse_baseline(spec):
        if key not in swept:
            raise ReportError(f"report.baseline={spec!r} matches no point: {key} is not swept "
                              f"(swept: {', '.join(swept) or 'nothing'})")  # fmt: skip
        if swept[key] and not any(_same(value, v) for v in swept[key]):
            raise ReportError(f"report.baseline={spec!r} matches no point: {key} takes "
                              f"{', '.join(swept[key])}")  # fmt: skip


def find_baseline(points: Sequence[tuple], spec: str | None) -> tuple:
    """The point ``spec`` ('model=lenet' or 'model=lenet,bn=window') names; the first point
    for None. ReportError unless exactly one point matches."""
    if spec is None:
        return points[0]
    wanted = parse_baseline(spec)
    found = [p for p in points if all(k in dict(p) and _same(dict(p)[k], v) for k, v in wanted)]
    if len(found) != 1:
        labels = "; ".join(point_label(p) for p in points)
        how = "matches no point" if not found else f"matches {len(found)} points"
        raise ReportError(f"report.baseline={spec!r} {how}; the points: {labels}")
    return found[0]


def _per_seed(members: Sequence[Run]) -> dict[int, dict[str, float | None]]:
    """seed -> the run's reported values, for the seeds of a point that finished."""
    return {int(r.metrics.get("seed", 0)): run_values(r) for r in members if r.ok}


def comparisons(
    ordered: Sequence[tuple[tuple, Sequence[Run]]], settings: Mapping[str, Any]
) -> list[dict[str, Any]]:
    """One row per (pair of points, metric), the points in the summary's order."""
    points = [p for p, _ in ordered]
    if len(points) < 2:
        return []
    values = {point: _per_seed(members) for point, members in ordered}  # each run read once
    how = settings.get("compare") or "baseline"
    if how == "all":
        if len(points) > MOST_PAIRS:
            raise ReportError(f"report.compare=all compares every pair of at most {MOST_PAIRS} "
                              f"points; this sweep has {len(points)}: use report.baseline")  # fmt: skip
        pairs = [(b, a) for a, b in combinations(points, 2)]
    else:
        base = find_baseline(points, settings.get("baseline"))
        pairs = [(p, base) for p in points if p != base]
    power = settings.get("power")
    rows = []
    for col, key in COMPARED:
        made: list[Comparison] = []
        for point, base in pairs:
            a = {seed: v.get(key) for seed, v in values[point].items()}
            b = {seed: v.get(key) for seed, v in values[base].items()}
            if col.startswith("steps_to"):
                made.append(compare_censored(list(a.values()), list(b.values())))
            else:
                made.append(compare({s: v for s, v in a.items() if v is not None},
                                    {s: v for s, v in b.items() if v is not None}))  # fmt: skip
        for c, adjusted in zip(made, holm([c.p for c in made])):
            c.p_adj = adjusted
        for (point, base), c in zip(pairs, made):
            differs = [i for i, (kv, bv) in enumerate(zip(point, base)) if kv != bv]
            row = {"point": point_label(point), "baseline": point_label(base), "metric": col,
                   # the keys in which the two differ, each side's values: the plot's labels
                   "differs": point_label(tuple(point[i] for i in differs)),
                   "baseline_differs": point_label(tuple(base[i] for i in differs)),
                   "test": c.test, "n": c.n[0], "n_baseline": c.n[1], "diff": c.diff,
                   "ci_low": c.ci[0], "ci_high": c.ci[1], "p": c.p, "p_holm": c.p_adj,
                   "effect": c.effect, "significant": c.significant}  # fmt: skip
            if power:
                paired = c.test.startswith("paired")
                row["seeds_for_power"] = seeds_needed(c.effect, float(power)) if paired else None
            rows.append(row)
    return rows


def _num(v: float, digits: int = 4) -> str:
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "—"
    if isinstance(v, float) and math.isinf(v):
        return "never" if v > 0 else "−never"
    return f"{v:+.{digits}f}" if digits else f"{v:+.0f}"


def _p(v: float) -> str:
    if math.isnan(v):
        return "—"
    return f"{v:.2g}" if v >= 0.001 else f"{v:.1e}"


def markdown(rows: Sequence[Mapping[str, Any]], power: Any = None) -> str:
    """The comparisons of the SHOWN metrics as a Markdown section ('' without comparisons)."""
    shown = [r for r in rows if r["metric"] in SHOWN]
    if not shown:
        return ""
    bases = list(dict.fromkeys(r["baseline"] for r in shown))
    title = f"against {bases[0]}" if len(bases) == 1 else "every pair"
    head = ["point", "baseline", "metric", "difference [95 % CI]", "test", "p", "p (Holm)",
            "effect", "significant"]  # fmt: skip
    if power:
        head.append(f"seeds for {float(power):.0%} power")
    lines = [f"\n## Differences {title}\n",
             f"Point − baseline over the seeds both finished; significant: Holm-adjusted p < {ALPHA} "
             "over the comparisons of one metric. Effect: Cohen's d_z (paired) or d (Welch). "
             "Steps to a threshold: a seed that never got there ranks last (Mann–Whitney U), the "
             "difference is of the medians.\n",
             "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]  # fmt: skip
    for r in shown:
        digits = 0 if r["metric"].startswith("steps") else 4
        diff = _num(r["diff"], digits)
        if not math.isnan(r["ci_low"]):
            diff += f" [{_num(r['ci_low'], digits)}, {_num(r['ci_high'], digits)}]"
        cells = [r["point"], r["baseline"], r["metric"], diff, r["test"], _p(r["p"]), _p(r["p_holm"]),
                 "—" if math.isnan(r["effect"]) else f"{r['effect']:.2f}",
                 "**yes**" if r["significant"] else "no"]  # fmt: skip
        if power:
            cells.append(str(r.get("seeds_for_power") or "—"))
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


ROWS_PER_PAGE = 30  # of compare.png; more comparisons go on compare_2.png, compare_3.png, …


def forest_plot(path: Path, rows: Sequence[Mapping[str, Any]]) -> Path | None:
    """compare.png: each comparison's difference with its 95 % CI, for test and validation
    accuracy side by side (one label column), a line at 0; significant ones filled. Against one
    baseline, the baseline is named once, above, and a row names only the values in which its
    point differs from it; every pair (report.compare=all): "A − B" in the keys they differ in.
    At most ROWS_PER_PAGE rows a page; nothing is clipped (the figure fits its labels)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = [
        m
        for m in ("test_acc", "val_acc")
        if any(r["metric"] == m and not math.isnan(r["diff"]) for r in rows)
    ]
    if not panels:
        return None
    by = {(r["point"], r["baseline"], r["metric"]): r for r in rows}
    pairs, labels, baseline = forest_labels(rows, panels)
    pages = [pairs[i : i + ROWS_PER_PAGE] for i in range(0, len(pairs), ROWS_PER_PAGE)]
    for page, shown in enumerate(pages):
        out = path if page == 0 else path.with_name(f"{path.stem}_{page + 1}{path.suffix}")
        _forest_page(plt, out, shown, by, panels, labels, baseline,
                     f" (page {page + 1} of {len(pages)})" if len(pages) > 1 else "")  # fmt: skip
    for stale in path.parent.glob(f"{path.stem}_*{path.suffix}"):  # pages of an earlier report
        suffix = stale.stem.removeprefix(f"{path.stem}_")
        if suffix.isdigit() and int(suffix) > len(pages):
            stale.unlink()
    return path


def forest_labels(rows: Sequence[Mapping[str, Any]], panels: Sequence[str] = ("test_acc", "val_acc")
                  ) -> tuple[list[tuple[str, str]], dict[tuple[str, str], str], str | None]:  # fmt: skip
    """The (point, baseline) pairs compare.png draws, each one's row label, and the baseline
    named once above (None when the pairs have several: report.compare=all). Against one
    baseline a row names the values in which its point differs from it; else "A − B"."""
    pairs = list(dict.fromkeys((r["point"], r["baseline"]) for r in rows if r["metric"] in panels))
    first = {}
    for r in rows:
        first.setdefault((r["point"], r["baseline"]), r)
    bases = list(dict.fromkeys(b for _, b in pairs))
    one = len(bases) == 1

    def shown(text: str) -> str:
        return ", ".join(_split_label(text))

    labels = {pair: shown(first[pair]["differs"]) if one else
              f"{shown(first[pair]['differs'])}  −  {shown(first[pair]['baseline_differs'])}"
              for pair in pairs}  # fmt: skip
    return pairs, labels, shown(bases[0]) if one else None


def _forest_page(plt, out: Path, pairs: list, by: Mapping, panels: list[str], labels: Mapping,
                 baseline: str | None, page: str) -> None:  # noqa: ANN001 (pyplot)  # fmt: skip
    import textwrap

    n = len(pairs)
    fig, axes = plt.subplots(1, len(panels), figsize=(3.4 * len(panels), 1.4 + 0.32 * n),
                             sharey=True, squeeze=False)  # fmt: skip
    for ax, metric in zip(axes[0], panels):
        for i, (point, base) in enumerate(pairs):
            r = by.get((point, base, metric))
            if r is None or math.isnan(r["diff"]):
                continue
            y = n - 1 - i
            if not math.isnan(r["ci_low"]):
                ax.plot([r["ci_low"], r["ci_high"]], [y, y], color="C0", linewidth=2)
            ax.plot(
                [r["diff"]],
                [y],
                "o",
                color="C0",
                markerfacecolor="C0" if r["significant"] else "white",
            )
        ax.axvline(0, color="grey", linewidth=1, linestyle="--")
        ax.set_ylim(-0.6, n - 0.4)
        ax.set_xlabel(f"{metric.replace('_', ' ')}:\ndifference [95 % CI]", fontsize=9)
        ax.tick_params(labelsize=8)
    axes[0][0].set_yticks(range(n))
    axes[0][0].set_yticklabels([labels[pair] for pair in reversed(pairs)], fontsize=8)
    head = f"point − baseline, the baseline: {baseline}" if baseline else "A − B (every pair)"
    fig.suptitle("\n".join(textwrap.wrap(head + page, 90)) + "\nfilled: significant (Holm p < 0.05)",
                 fontsize=9)  # fmt: skip
    fig.tight_layout()
    fig.savefig(out, dpi=110, bbox_inches="tight")  # the labels' width, whatever it is
    plt.close(fig)


def _split_label(label: str) -> list[str]:
    """``a=1,b=[x,y]`` -> ["a=1", "b=[x,y]"]: the key=value items of a point's label."""
    items, depth, start = [], 0, 0
    for i, ch in enumerate(label):
        depth += ch in "[{(" and 1 or -(ch in "]})" and 1 or 0)
        if ch == "," and depth == 0:
            items.append(label[start:i])
            start = i + 1
    return [*items, label[start:]]


def read_csv(path: Path) -> list[dict[str, Any]]:
    """comparisons.csv as rows forest_plot takes (one written before its ``differs`` columns:
    derived from the labels)."""
    import csv

    rows = []
    with Path(path).open() as f:
        for raw in csv.DictReader(f):
            row: dict[str, Any] = dict(raw)
            for key in ("diff", "ci_low", "ci_high", "p", "p_holm", "effect"):
                row[key] = float(raw[key]) if raw[key] not in ("", None) else math.nan
            row["significant"] = raw["significant"] == "True"
            if not raw.get("differs"):
                a, b = _split_label(raw["point"]), _split_label(raw["baseline"])
                keep = [i for i, (x, y) in enumerate(zip(a, b)) if x != y]
                row["differs"] = ",".join(a[i] for i in keep)
                row["baseline_differs"] = ",".join(b[i] for i in keep)
            rows.append(row)
    return rows

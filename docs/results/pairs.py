"""Per-run values and the within-group comparisons of the studies committed here.

    python docs/results/pairs.py <sweep folder> <results folder> --pair KEY=A,B [--within KEY ...]

writes <results folder>/runs.csv (one row per run: its point, seed and final numbers, so that
later comparisons can pair seeds), for runs with loss-landscape probes probes.md (per point, the
probes' means over the run and over its second half, mean ± std over seeds), and with --pair pairs.md: for each combination of the
other swept keys, the point with KEY=B against the one with KEY=A, paired over seeds
(bnsweep.report.stats.compare), Holm-adjusted over the comparisons of a metric.
"""

from __future__ import annotations

import argparse
import csv
import sys
from pathlib import Path

from bnsweep.report.runs import group_by_point, load_runs
from bnsweep.report.stats import compare, holm

METRICS = ("val/acc", "val/acc_best", "test/acc", "test/acc_precise", "test/acc_running")


def main() -> int:
    p = argparse.ArgumentParser()
    p.add_argument("sweep", type=Path)
    p.add_argument("out", type=Path)
    p.add_argument("--pair", help="KEY=A,B: B against A within every other combination")
    args = p.parse_args()
    runs = load_runs(args.sweep)
    groups = group_by_point(runs)
    keys = [k for k, _ in next(iter(groups))]
    metrics = [m for m in METRICS if any(m in r.metrics for r in runs)]
    with (args.out / "runs.csv").open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow([*keys, "seed", "status", *metrics])
        for point, members in groups.items():
            for r in sorted(members, key=lambda r: r.metrics.get("seed", -1)):
                w.writerow([v for _, v in point] + [r.metrics.get("seed"), r.status]
                           + [r.metrics.get(m) for m in metrics])  # fmt: skip
    if any("probe_step" in r.metrics["history"] for r in runs):
        probes_table(args.sweep, args.out, groups)
    if not args.pair:
        return 0
    key, values = args.pair.split("=", 1)
    a, b = values.split(",")
    others = [k for k in keys if k != key]
    by = {tuple(point): {r.metrics["seed"]: r for r in members if r.ok} for point, members in groups.items()}
    rows = []
    for point, seeds_b in by.items():
        d = dict(point)
        if d[key] != b:
            continue
        base = tuple((k, a if k == key else v) for k, v in point)
        seeds_a = by.get(base)
        if seeds_a is None:
            continue
        label = ",".join(f"{k}={d[k]}" for k in others)
        for m in ("val/acc", "test/acc"):
            c = compare({s: r.metrics[m] for s, r in seeds_b.items()},
                        {s: r.metrics[m] for s, r in seeds_a.items()})  # fmt: skip
            rows.append((label, m, c))
    for m in ("val/acc", "test/acc"):
        mine = [i for i, r in enumerate(rows) if r[1] == m]
        for i, p_adj in zip(mine, holm([rows[i][2].p for i in mine])):
            rows[i] = (*rows[i][:2], rows[i][2], p_adj)
    lines = [f"# {args.sweep.name}: {key}={b} against {key}={a}", "",
             f"Within each combination of {', '.join(others)}: {key}={b} − {key}={a}, paired over "
             "seeds (t-test), Holm-adjusted over the comparisons of one metric; significant: "
             f"adjusted p < 0.05. Made by `python docs/results/pairs.py <sweep folder> "
             f"docs/results/{args.out.name} --pair {args.pair}`.", "",
             "| within | metric | difference [95 % CI] | test | p | p (Holm) | d_z | significant |",
             "|---|---|---|---|---|---|---|---|"]  # fmt: skip
    for label, m, c, p_adj in rows:
        lines.append(f"| {label} | {m} | {c.diff:+.4f} [{c.ci[0]:+.4f}, {c.ci[1]:+.4f}] | {c.test} | "
                     f"{c.p:.2g} | {p_adj:.2g} | {c.effect:.2f} | {'**yes**' if p_adj < 0.05 else 'no'} |")  # fmt: skip
    (args.out / "pairs.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


def _ms(values: list[float]) -> str:
    import statistics

    return f"{statistics.mean(values):.4g} ± {statistics.stdev(values):.2g}" if len(values) > 1 else f"{values[0]:.4g}"


def probes_table(sweep: Path, out: Path, groups: dict) -> None:
    import statistics

    lines = [f"# {sweep.name}: the loss-landscape probes", "",
             "Per run, the mean over its probes (every probes.every steps) of: the loss range "
             "max_η L(w − ηg) − min_η L(w − ηg), the largest gradient change max_η ‖∇L(w − ηg) − g‖, "
             "the effective β-smoothness; over the whole run and over its second half (after the "
             "first fast descent). Then mean ± std over seeds. Made by `python docs/results/pairs.py "
             f"<sweep folder> docs/results/{out.name}`.", "",
             "| point | loss range | gradient change | β-smoothness | loss range, 2nd half | "
             "gradient change, 2nd half | β, 2nd half | val acc |",
             "|---|---|---|---|---|---|---|---|"]  # fmt: skip
    for point, members in groups.items():
        cols: list[list[float]] = [[] for _ in range(7)]
        for r in members:
            if not r.ok:
                continue
            h = r.metrics["history"]
            rng = [hi - lo for hi, lo in zip(h["probe/loss_max"], h["probe/loss_min"])]
            half = len(rng) // 2
            for i, series in enumerate((rng, h["probe/grad_change_max"], h["probe/beta"])):
                cols[i].append(statistics.mean(series))
                cols[i + 3].append(statistics.mean(series[half:]))
            cols[6].append(r.metrics["val/acc"])
        label = ",".join(f"{k}={v}" for k, v in point)
        lines.append(f"| {label} | " + " | ".join(_ms(c) for c in cols) + " |")
    (out / "probes.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    sys.exit(main())

"""Welch comparisons of the committed studies, from their summary.csv (mean, sample std and n
per point): what can be tested without the per-seed values, which these studies did not keep.
A paired test, stronger, needs the study rerun (its report then writes comparisons.csv).

    python docs/results/welch_from_summaries.py     # writes docs/results/<study>/differences.md
"""

from __future__ import annotations

import csv
import math
from pathlib import Path

from bnsweep.report.stats import holm, welch

HERE = Path(__file__).parent
# study -> (the key of its points, the baseline point, the metrics compared)
STUDIES = {
    "bn_placement": ("model", "lenet", ("val_acc", "test_acc")),
    "init_scale_quick": ("init.std", "0.1", ("val_acc",)),
    "paper_fig1": ("model", "mlp", ("test_acc",)),  # val_size=0: its val_acc is the test's
}
# single comparisons asked of a study besides those against its baseline (no adjustment)
PAIRS = {"bn_placement": [("lenet_fc_bn2", "lenet_fc_bn1", "val_acc"), ("lenet_fc_bn2", "lenet_fc_bn1", "test_acc")]}


def _stats(row: dict, metric: str) -> list:
    return [float(row[f"{metric}_mean"]), float(row[f"{metric}_std"]), int(row["n_finished"])]


def _cells(point: str, metric: str, c) -> str:  # noqa: ANN001
    cells = [point, metric, f"{c.diff:+.4f} [{c.ci[0]:+.4f}, {c.ci[1]:+.4f}]", f"{c.statistic:.2f}",
             f"{c.df:.1f}", f"{c.p:.2g}", "—" if math.isnan(c.p_adj) else f"{c.p_adj:.2g}",
             "—" if math.isnan(c.effect) else f"{c.effect:.2f}",
             "**yes**" if (c.significant if not math.isnan(c.p_adj) else c.p < 0.05) else "no"]  # fmt: skip
    return "| " + " | ".join(cells) + " |"


def differences(study: str) -> str:
    key, base, metrics = STUDIES[study]
    rows = list(csv.DictReader((HERE / study / "summary.csv").open()))
    baseline = next(r for r in rows if r[key] == base)
    lines = [f"# {study}: differences against {key}={base}\n",
             "Welch's t-test from each point's mean, sample std and n in summary.csv (the "
             "per-seed values were not kept, so no paired test); Holm-adjusted over the "
             "comparisons of one metric; significant: adjusted p < 0.05. Made by "
             "`python docs/results/welch_from_summaries.py`.\n",
             "| point | metric | difference [95 % CI] | t | df | p | p (Holm) | d | significant |",
             "|---|---|---|---|---|---|---|---|---|"]  # fmt: skip
    for metric in metrics:
        made = []
        for r in rows:
            if r is not baseline:
                made.append((r[key], welch(*_stats(r, metric), *_stats(baseline, metric))))
        for (_, c), p in zip(made, holm([c.p for _, c in made])):
            c.p_adj = p
        lines += [_cells(f"{key}={point}", metric, c) for point, c in made]
    by_point = {r[key]: r for r in rows}
    for a, b, metric in PAIRS.get(study, []):
        c = welch(*_stats(by_point[a], metric), *_stats(by_point[b], metric))
        lines.append(_cells(f"{key}={a} vs {key}={b} (alone: p not adjusted)", metric, c))
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    for study in STUDIES:
        out = HERE / study / "differences.md"
        out.write_text(differences(study))
        print(f"wrote {out}")

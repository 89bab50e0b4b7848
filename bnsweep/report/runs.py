"""The runs of a sweep folder, and the points they belong to."""

from __future__ import annotations

import sys
from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

# overrides that never define a point
NOT_SWEPT = ("seed", "seeds", "run_dir", "study", "resume", "threads", "sweep.vectorize")


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
    return load_run_folders(p.parent for p in sorted(Path(sweep_dir).glob("*/metrics.json")))


def load_run_folders(folders: Iterable[Path]) -> list[Run]:
    """The runs in these folders (those without a metrics.json are left out)."""
    from bnsweep.files import DamagedFile, read_json

    runs = []
    for folder in folders:
        f = Path(folder) / "metrics.json"
        if not f.is_file():
            continue
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

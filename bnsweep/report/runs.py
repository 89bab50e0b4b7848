"""The runs of a sweep folder, and the points they belong to."""

from __future__ import annotations

import json
import math
import sys
from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bnsweep.config.keys import defines_a_point
from bnsweep.config.values import flat
from bnsweep.terminal import readable

# the numbers a run records whose non-finite value means it diverged
RECORDED = ("train/loss", "val/loss", "test/loss", "train/acc", "val/acc", "test/acc")


@dataclass
class Run:
    path: Path
    metrics: dict[str, Any]
    # what tells this run's point from others: option picked per config group (model=…) and
    # every leaf of its resolved config (init.std=…), seed and launch keys left out
    settings: dict[str, Any] = field(default_factory=dict)
    # how the command line wrote each key it set (labels read as typed: init.std=1e-4)
    typed: dict[str, str] = field(default_factory=dict)

    @property
    def status(self) -> str:
        return self.metrics.get("status", "finished")

    @property
    def diverged(self) -> bool:
        """A finished run that diverged: so recorded, or (a record made before non-finite
        evaluations counted) a loss or accuracy it recorded is NaN or infinite."""
        if self.status != "finished":
            return False
        if self.metrics.get("diverged", False):
            return True
        m, h = self.metrics, self.metrics.get("history", {})
        values = [m.get(k) for k in RECORDED] + [v for k in RECORDED for v in h.get(k, [])]
        return any(isinstance(v, float) and not math.isfinite(v) for v in values)

    @property
    def ok(self) -> bool:
        return self.status == "finished" and not self.diverged

    def exact(self, key: str) -> str:
        """A key's value as the command line wrote it, else the option's name or the value."""
        if key in self.typed:
            return self.typed[key]
        value = self.settings.get(key, "")
        return value if isinstance(value, str) else json.dumps(value)

    def shown(self, key: str) -> str:
        """A key's value as a label shows it: ``exact``'s, with a float's binary noise from
        Hydra's range() left out (0.060000000000000005 reads 0.06: bnsweep.terminal.readable)."""
        return readable(self.exact(key))


def _parse_override(text: str) -> tuple[str, str] | None:
    if "=" not in text:
        return None
    key, value = text.split("=", 1)
    key = key.lstrip("+~")
    if not defines_a_point(key):
        return None
    return key, value


def _settings(folder: Path, metrics: dict[str, Any], typed: dict[str, str]) -> dict[str, Any]:
    """The run's group options and resolved config leaves (run_config.json); a folder without
    a readable one (a failed run's, an old one) falls back to its command line's overrides."""
    from bnsweep.files import DamagedFile, read_json
    from bnsweep.run.folders import RUN_CONFIG, comparable, with_neutral

    try:
        config = with_neutral(comparable(read_json(folder / RUN_CONFIG)))
    except (OSError, DamagedFile):
        return dict(typed)
    follows = _interpolated(folder)
    # a failed run's record names no options: those its command line picked stand for them
    choices = metrics.get("choices") or {k: v for k, v in typed.items() if "." not in k}
    picked = {k: v for k, v in choices.items() if defines_a_point(k)}
    leaves = {k: v for k, v in flat(config).items() if defines_a_point(k) and k not in follows}
    return {**picked, **leaves}


def _interpolated(folder: Path) -> set[str]:
    """The config leaves that follow another key (``data.seed: ${seed}``, init.bias following
    init.std), from the unresolved config the run was claimed with: they tell no point apart
    of their own (the key they follow does)."""
    from omegaconf import OmegaConf

    try:
        raw = OmegaConf.to_container(
            OmegaConf.load(folder / ".hydra" / "config.yaml"), resolve=False
        )
    except Exception:  # noqa: BLE001 (no such file, or not YAML: nothing is known to follow)
        return set()
    return {k for k, v in flat(raw).items() if isinstance(v, str) and "${" in v}


def load_runs(sweep_dir: Path) -> list[Run]:
    """The runs of a sweep folder; a metrics.json that does not read is named and skipped."""
    return load_run_folders(p.parent for p in sorted(Path(sweep_dir).glob("*/metrics.json")))


def load_run_folders(folders: Iterable[Path]) -> list[Run]:
    """The runs in these folders (those without a metrics.json are left out)."""
    from bnsweep.files import DamagedFile
    from bnsweep.run.record import METRICS, read_record

    runs = []
    for folder in folders:
        f = Path(folder) / METRICS
        if not f.is_file():
            continue
        try:
            metrics = read_record(folder)
        except DamagedFile as e:
            print(f"warning: skipped {f}: it is damaged{str(e).removeprefix(str(f) + ' is damaged')}",
                  file=sys.stderr)  # fmt: skip
            continue
        typed = dict(p for o in metrics.get("overrides", []) if (p := _parse_override(o)))
        runs.append(Run(f.parent, metrics, _settings(Path(folder), metrics, typed), typed))
    return runs


def _group_of(key: str, runs: Sequence[Run]) -> str | None:
    """The config group a leaf key lies under (``model`` for ``model.bn``), when the runs pick
    an option of that group."""
    group = key.split(".")[0]
    return (
        group if group != key and any(group in r.metrics.get("choices", {}) for r in runs) else None
    )


def _tuned(key: str, tuned: str | None) -> bool:
    return tuned is not None and (key == tuned or key.startswith(tuned + "."))


def swept_keys(runs: Sequence[Run], tuned: str | None = None) -> list[str]:
    """The keys whose value differs between runs: a group's option (model), or a leaf of the
    config (init.std) that differs between runs picking the same option of its group (the
    leaves an option brings, model.bn of lenet_bn1, are told by the option). In the order the
    command lines name them, then by name. ``tuned``: the key sweep.tune chose per point (and
    the leaves of a tuned group), which tells no point apart."""
    keys = dict.fromkeys(k for r in runs for k in r.settings if not _tuned(k, tuned))
    swept = []
    for k in keys:
        group = _group_of(k, runs)
        by_option: dict[str, set[str]] = defaultdict(set)  # option of k's group -> k's values
        for r in runs:
            if k in r.settings:
                option = json.dumps(r.settings.get(group)) if group else ""
                by_option[option].add(json.dumps(r.settings[k], sort_keys=True))
        if any(len(v) > 1 for v in by_option.values()):
            swept.append(k)
    order = {k: i for i, k in enumerate(k for r in runs for k in r.typed)}
    return sorted(swept, key=lambda k: (order.get(k, len(order)), k))


def point_label(point: tuple[tuple[str, str], ...]) -> str:
    return ",".join(f"{k}={v}" for k, v in point) or "all"


def group_by_point(runs: Sequence[Run], tuned: str | None = None) -> dict[tuple[tuple[str, str], ...], list[Run]]:
    """Runs by point: equal values of every swept key (all of a point's seeds)."""
    keys = swept_keys(runs, tuned)
    groups: dict[str, list[Run]] = defaultdict(list)  # by the values, canonically written
    for r in runs:
        groups[json.dumps([r.settings.get(k) for k in keys], sort_keys=True)].append(r)
    return {tuple((k, members[0].shown(k) if k in members[0].settings else "") for k in keys):
            members for members in groups.values()}  # fmt: skip

"""``sweep.tune``: every point of a sweep at its own best value of one key (optimizer.lr, …).

For each point (the sweep's overrides less the seed): tuning runs at each value of
``sweep.tune.values`` (or at ``budget`` values Optuna's TPE proposes in ``sweep.tune.range``, on
a log scale), ``sweep.tune.seeds`` runs per value, each scored on the validation split alone
(``test_weights=none``: their test set is never evaluated); then the point's ``seeds`` runs at the
value that scored best, which the report compares as any sweep's. Tuning runs live in the sweep
folder's ``tune/``; ``tune/tuning.json`` holds every score and the choice.

A value scores the mean of its tuning runs' ``score`` (val_acc_best); a value any of whose runs
diverged or failed scores the worst, and says so. Ties go to the smaller value (for group
options: the one listed first). Runs are found again by their config, whatever their folder's
name: a resumed or rerun sweep trains only what has no finished run (a range search replays its
sampler over the recorded scores and so proposes the same values again). With
``sweep.vectorize=true`` a point's tuning seeds train as one job, and its values too where the
optimizer steps each member at its own lr (bnsweep.sweep.points.lr_stacks).
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from bnsweep.config.values import ConfigError
from bnsweep.report.tuning import TUNE_DIR, TUNING

SEED_BASE = 10_000  # tuning seeds: 10000, 10001, … (never a compared run's seed by default)
SCORES = {"val_acc_best": "val/acc_best", "val_acc": "val/acc"}
OPTUNA_INSTALL = 'pip install -e ".[optuna]"'


@dataclass
class Tune:
    key: str
    values: list[Any] | None
    range: tuple[float, float] | None
    budget: int | None
    seeds: list[int]
    score: str
    sampler_seed: int

    @property
    def searched(self) -> bool:
        return self.range is not None

    def per_point(self) -> int:
        """Tuning runs per point."""
        return (self.budget if self.searched else len(self.values)) * len(self.seeds)


def settings(cfg: DictConfig) -> Tune | None:
    """The sweep's ``sweep.tune`` (None when it tunes nothing); ConfigError names a bad value."""
    node = OmegaConf.select(cfg, "sweep.tune", default=None)
    if node is None or node.get("key") in (None, ""):
        return None
    key = str(node.key)
    values, span, budget = node.get("values"), node.get("range"), node.get("budget")
    if (values is None) == (span is None):
        raise ConfigError(f"sweep.tune.key={key} needs sweep.tune.values=[…] (every value) or "
                          "sweep.tune.range=[low,high] with sweep.tune.budget=N (a search), "
                          "one of them")  # fmt: skip
    if values is not None:
        values = OmegaConf.to_container(values) if OmegaConf.is_config(values) else values
        if (
            not isinstance(values, list)
            or not values
            or len({json.dumps(v) for v in values}) != len(values)
        ):
            raise ConfigError(
                f"sweep.tune.values must be a list of distinct values, got {values!r}"
            )
        if budget is not None:
            raise ConfigError(f"sweep.tune.budget is for sweep.tune.range; with sweep.tune.values "
                              f"every value runs, got budget={budget}")  # fmt: skip
    else:
        lo_hi = list(span) if OmegaConf.is_config(span) or isinstance(span, list) else None
        if (lo_hi is None or len(lo_hi) != 2
                or not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in lo_hi)
                or not 0 < lo_hi[0] < lo_hi[1]):  # fmt: skip
            raise ConfigError(f"sweep.tune.range must be [low, high] with 0 < low < high (a log "
                              f"scale), got {_text(span)}")  # fmt: skip
        if not isinstance(budget, int) or isinstance(budget, bool) or budget < 1:
            raise ConfigError(f"sweep.tune.budget must be an integer >= 1 (values tried per point), "
                              f"got {budget!r}")  # fmt: skip
        span = (float(lo_hi[0]), float(lo_hi[1]))
    seeds = node.get("seeds", 1)
    if isinstance(seeds, int) and not isinstance(seeds, bool) and seeds >= 1:
        seeds = list(range(SEED_BASE, SEED_BASE + seeds))
    elif OmegaConf.is_config(seeds) and seeds and all(isinstance(s, int) and s >= 0 for s in seeds):
        seeds = [int(s) for s in seeds]
    else:
        raise ConfigError(
            f"sweep.tune.seeds must be a count >= 1 or a list of seeds, got {_text(seeds)}"
        )
    score = str(node.get("score", "val_acc_best"))
    if score not in SCORES:
        raise ConfigError(f"sweep.tune.score must be one of {', '.join(SCORES)}, got {score}")
    return Tune(key, values, span, budget, seeds, score, int(node.get("sampler_seed", 0)))


def check(cfg: DictConfig, overrides: Sequence[str]) -> Tune | None:
    """The sweep's tuning settings, refused in one line where the sweep cannot tune as asked:
    ``overrides`` are the sweep's own (the preset's swept params and the command line's)."""
    from bnsweep.config.keys import computes, grid_sweeper

    tune = settings(cfg)
    if tune is None:
        return None
    if not computes(tune.key) or tune.key == "seed":
        raise ConfigError(f"sweep.tune.key={tune.key} is not a setting of what a run computes")
    if OmegaConf.select(cfg, tune.key, default=None) is None:
        raise ConfigError(
            f"sweep.tune.key={tune.key} is no key of the run's config (e.g. optimizer.lr)"
        )
    given = [o for o in overrides if o.split("=", 1)[0].lstrip("+~") == tune.key]
    if given:
        raise ConfigError(f"sweep.tune.key={tune.key} is tuned per point, so it cannot be set "
                          f"too ({given[-1]}): leave it out, or sweep it without sweep.tune")  # fmt: skip
    if not grid_sweeper(OmegaConf.select(cfg, "hydra.sweeper._target_", default="")):
        raise ConfigError("sweep.tune needs the grid sweeper (hydra/sweeper=bnsweep), got "
                          f"{OmegaConf.select(cfg, 'hydra.sweeper._target_')}")  # fmt: skip
    if OmegaConf.select(cfg, "data.val_size", default=None) == 0:
        raise ConfigError("sweep.tune scores on the validation split, and data.val_size=0 "
                          "validates on the test set: give data.val_size > 0")  # fmt: skip
    if tune.searched:
        try:
            import optuna  # noqa: F401
        except ImportError:
            raise ConfigError(f"sweep.tune.range searches with Optuna, which is not installed: "
                              f"{OPTUNA_INSTALL}") from None  # fmt: skip
    return tune


def _text(value: Any) -> str:
    if OmegaConf.is_config(value):
        value = OmegaConf.to_container(value)
    return json.dumps(value) if not isinstance(value, str) else value


def value_text(value: Any) -> str:
    """A tuned value as an override writes it (a float's repr: read back exactly)."""
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, float):
        return repr(value)
    return str(value)


def identity(overrides: Sequence[str]) -> frozenset[str]:
    """What tells a run apart in a sweep: its overrides that change what it computes."""
    from bnsweep.config.keys import computes

    return frozenset(o for o in overrides if "=" in o and computes(o.split("=", 1)[0]))


def point_label(point: Sequence[str], shared: set[str] = frozenset()) -> str:
    """The overrides that tell a point from the sweep's others (``shared``: those every point has)."""
    from bnsweep.config.keys import defines_a_point

    shown = [o for o in point if "=" in o and o not in shared
             and defines_a_point(o.split("=", 1)[0].lstrip("+~"))]  # fmt: skip
    return ",".join(shown) or "all"


def inner_job(cfg: DictConfig, point: Sequence[str], key: str, value: Any, seed: int) -> list[str]:
    """A tuning run's overrides: the point's, the value, a tuning seed, no test; its folder in
    tune/, named by the point, the value and the seed."""
    excluded = [k for k in cfg.hydra.job.config.override_dirname.exclude_keys
                if k != "seed"]  # the tuning seed names the folder  # fmt: skip
    return [
        *point, f"{key}={value_text(value)}", f"seed={seed}", "test_weights=none",
        f"hydra.sweep.subdir='{TUNE_DIR}/${{hydra.job.num}}_"
        "${folder_name:${hydra.job.override_dirname}}'",
        "hydra.job.config.override_dirname.exclude_keys=[" + ",".join([*excluded, "test_weights"]) + "]",
    ]  # fmt: skip


@dataclass
class Scored:
    """One value of a point: its runs' scores and what it scores."""

    value: Any
    runs: list[dict[str, Any]] = field(default_factory=list)  # seed, score, status

    @property
    def status(self) -> str:
        """finished, diverged, failed, or missing (a run not found: refused, or not run)."""
        for bad in ("failed", "missing", "diverged"):
            if any(r["status"] == bad for r in self.runs):
                return bad
        return "finished"

    @property
    def score(self) -> float | None:
        """The mean of the runs' scores; None (the worst) unless every run finished."""
        if self.status != "finished" or not self.runs:
            return None
        return sum(r["score"] for r in self.runs) / len(self.runs)


def choose(scored: Sequence[Scored]) -> Scored | None:
    """The value that scores best; ties to the smaller value (group options: the one listed
    first); None when no value has a score."""
    ok = [(i, s) for i, s in enumerate(scored) if s.score is not None]
    if not ok:
        return None
    best = max(s.score for _, s in ok)
    tied = [(i, s) for i, s in ok if s.score == best]
    numeric = all(
        isinstance(s.value, (int, float)) and not isinstance(s.value, bool) for _, s in tied
    )
    return min(tied, key=lambda t: (t[1].value, t[0]) if numeric else (0, t[0]))[1]


def _run_score(run: Any, score_key: str) -> dict[str, Any]:
    status = "diverged" if run.diverged else run.status
    value = run.metrics.get(score_key)
    if status == "finished" and not (isinstance(value, (int, float)) and math.isfinite(value)):
        status = "diverged"
    return {"seed": run.metrics.get("seed"), "score": value if status == "finished" else None,
            "status": status, "folder": f"{TUNE_DIR}/{run.path.name}"}  # fmt: skip


class Tuner:
    """The jobs of a tuned sweep, launched through the sweeper's launcher: the tuning runs of
    every point (a range search: one proposed value per point per round), the choice, then the
    chosen values' runs."""

    def __init__(self, sweeper: Any, tune: Tune) -> None:
        self.sweeper, self.tune = sweeper, tune
        self.config: DictConfig = sweeper.config
        self.sweep_dir = Path(self.config.hydra.sweep.dir)
        self.num = 0
        self.returns: list[Any] = []
        self.vectorize = bool(OmegaConf.select(self.config, "sweep.vectorize", default=False))

    def inner(self, point: Sequence[str], value: Any, seed: int) -> list[str]:
        return inner_job(self.config, point, self.tune.key, value, seed)

    def launch(self, runs: list[tuple[tuple[str, ...], Any, int]]) -> None:
        """Launch the tuning runs (point, value, seed) that have no finished run yet: a job
        each, or with sweep.vectorize=true a job per point and value training its seeds
        together, and a point's values in one job where its optimizer steps each member at its
        own lr (bnsweep.sweep.points.lr_stacks)."""
        done = self.finished()
        runs = [r for r in runs if identity(self.inner(*r)) not in done]
        if not self.vectorize:
            return self._launch([self.inner(*r) for r in runs])
        from bnsweep.sweep.points import group_jobs

        seeds: dict[tuple[tuple[str, ...], str], tuple[tuple[str, ...], Any, list[int]]] = {}
        for p, v, s in runs:
            seeds.setdefault((p, value_text(v)), (p, v, []))[2].append(s)
        batch = [
            [o for o in self.inner(p, v, ss[0]) if not o.startswith(("seed=", "seeds="))]
            + ["seeds=[" + ",".join(map(str, ss)) + "]"]
            for p, v, ss in seeds.values()
        ]
        self._launch(group_jobs(self.config, batch, self.sweeper.hydra_context.config_loader))

    def _launch(self, batch: list[list[str]]) -> None:
        if not batch:
            return
        self.sweeper.validate_batch_is_legal(batch)
        results = self.sweeper.launcher.launch(batch, initial_job_idx=self.num)
        for r in results:
            _ = r.return_value  # a job's exception, raised as the basic sweeper does
        self.num += len(batch)
        self.returns.append(results)

    def finished(self) -> set[frozenset[str]]:
        return {k for k, r in self.tuning_runs().items() if r.status == "finished"}

    def tuning_runs(self) -> dict[frozenset[str], Any]:
        from bnsweep.report.runs import load_run_folders

        folder = self.sweep_dir / TUNE_DIR
        runs = load_run_folders(p.parent for p in sorted(folder.glob("*/metrics.json")))
        return {identity(r.metrics.get("overrides", [])): r for r in runs}

    def scored(self, point: Sequence[str], values: Sequence[Any],
               runs: dict[frozenset[str], Any] | None = None) -> list[Scored]:  # fmt: skip
        runs, out = self.tuning_runs() if runs is None else runs, []
        for value in values:
            s = Scored(value)
            for seed in self.tune.seeds:
                run = runs.get(identity(self.inner(point, value, seed)))
                s.runs.append(_run_score(run, SCORES[self.tune.score]) if run is not None
                              else {"seed": seed, "score": None, "status": "missing"})  # fmt: skip
            out.append(s)
        return out

    # the sweep
    def sweep(self, jobs: list[list[str]]) -> list[Any]:
        points: dict[tuple[str, ...], list[list[str]]] = {}
        for job in jobs:
            points.setdefault(tuple(o for o in job if not o.startswith("seed=")), []).append(job)
        tried = (
            self.search(list(points))
            if self.tune.searched
            else {p: list(self.tune.values) for p in points}
        )
        if not self.tune.searched:
            self.launch([(p, v, s) for p in points for v in tried[p] for s in self.tune.seeds])
        record, outer = [], []
        shared = set.intersection(*(set(p) for p in points))  # one point: "all"
        runs = self.tuning_runs()
        for p, p_jobs in points.items():
            scored = self.scored(p, tried[p], runs)
            chosen = choose(scored)
            record.append({
                "point": point_label(p, shared), "overrides": list(p),
                "chosen": chosen.value if chosen else None,
                "chosen_score": chosen.score if chosen else None,
                "values": [{"value": s.value, "score": s.score, "status": s.status, "runs": s.runs}
                           for s in scored],
            })  # fmt: skip
            if chosen is not None:
                outer += [[*job, f"{self.tune.key}={value_text(chosen.value)}"] for job in p_jobs]
        self.write(record)
        self.launch_outer(outer)
        return self.returns

    def launch_outer(self, outer: list[list[str]]) -> None:
        """The compared runs; vectorized, the points stack as any sweep's do (their chosen lrs
        apart where the optimizer allows)."""
        if self.vectorize and len(outer) > 1:
            from bnsweep.sweep.points import group_jobs

            outer = group_jobs(self.config, outer, self.sweeper.hydra_context.config_loader)
        self._launch(outer)

    def search(self, points: list[tuple[str, ...]]) -> dict[tuple[str, ...], list[float]]:
        """A TPE search per point, one proposed value per point per round (the points of a
        round train side by side where the launcher allows). Replayed from the recorded scores
        on a resume: the same seeds and scores make the sampler propose the same values."""
        import optuna

        optuna.logging.set_verbosity(optuna.logging.WARNING)
        lo, hi = self.tune.range
        startup = min(10, max(2, self.tune.budget // 3))  # random proposals before TPE's model
        studies = [
            optuna.create_study(direction="maximize", sampler=optuna.samplers.TPESampler(
                seed=self.tune.sampler_seed + i, n_startup_trials=startup))
            for i in range(len(points))
        ]  # fmt: skip
        tried: dict[tuple[str, ...], list[float]] = {p: [] for p in points}
        for _ in range(self.tune.budget):
            trials = [study.ask() for study in studies]
            values = [
                float(f"{t.suggest_float(self.tune.key, lo, hi, log=True):.3g}") for t in trials
            ]
            self.launch([(p, v, s) for p, v in zip(points, values) for s in self.tune.seeds])
            runs = self.tuning_runs()  # read once a round
            for p, v, study, trial in zip(points, values, studies, trials):
                tried[p].append(v)
                score = self.scored(p, [v], runs)[0].score
                study.tell(trial, score if score is not None else 0.0)  # the worst accuracy
        return tried

    def write(self, record: list[dict[str, Any]]) -> None:
        from bnsweep.files import write_json

        t = self.tune
        write_json(self.sweep_dir / TUNE_DIR / TUNING, {
            "key": t.key, "score": t.score, "values": t.values,
            "range": list(t.range) if t.range else None, "budget": t.budget, "seeds": t.seeds,
            "sampler_seed": t.sampler_seed if t.searched else None, "points": record,
        })  # fmt: skip


def job_count(cfg: DictConfig, points: int, seeds: int) -> int | None:
    """A tuned sweep's jobs: every point's tuning runs and its compared runs (``seeds`` jobs a
    point). Vectorized: a job per point and value (a range search: per round), the values of a
    point in one where its optimizer allows, and a job per point after."""
    try:
        tune = settings(cfg)
    except ConfigError:
        return None
    if tune is None:
        return None
    if not OmegaConf.select(cfg, "sweep.vectorize", default=False):
        return points * (tune.per_point() + seeds)
    from bnsweep.sweep.points import lr_stacks

    optimizer = OmegaConf.to_container(cfg.optimizer, resolve=True)
    stacks = tune.key == "optimizer.lr" and lr_stacks(optimizer) and not tune.searched
    return points * ((1 if stacks else tune.budget or len(tune.values)) + 1)

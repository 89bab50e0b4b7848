"""``python sweep.py … --dry-run``: the jobs a sweep command would run, each one's run folder
and a rough time, without running anything (no folder is made)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from omegaconf import DictConfig, OmegaConf

from bnsweep.config.checks import ConfigError, training_batches, validate
from bnsweep.config.cli import CONF, is_sweep, without_config_dirs
from bnsweep.config.keys import grid_sweeper
from bnsweep.config.resolvers import folder_name
from bnsweep.nn.architectures import COST_MS
from bnsweep.run.folders import member_dir
from bnsweep.sweep.points import group_jobs, member_suffix, stacked_points
from bnsweep.sweep.tune import TUNE_DIR, Tune, inner_job, value_text
from bnsweep.sweep.tune import check as check_tune
from bnsweep.sweep.tune import settings as tune_settings
from bnsweep.terminal import duration


@dataclass
class Job:
    num: int
    folder: str
    runs: list[str]  # the run folders it writes (a vectorized job: one per seed)
    seconds: float | None
    tuning: bool = False  # a tuning run of sweep.tune (validation only)


def _compose(overrides: Sequence[str]) -> DictConfig:
    from hydra import compose, initialize_config_dir

    with initialize_config_dir(version_base="1.3", config_dir=str(CONF)):
        return compose("sweep", overrides=list(overrides), return_hydra_config=True)


def estimate(cfg: DictConfig) -> float | None:
    """Seconds one run of cfg takes, roughly: training and evaluated samples × the network's
    cost per sample: bnsweep's own nets' measured on this project's 2-core CPU (COST_MS), any
    other's timed here (``timed_cost``)."""
    cost = COST_MS.get(OmegaConf.select(cfg, "model._target_", default="")) or timed_cost(cfg)
    train_ms, eval_ms = cost
    steps = training_batches(cfg)
    samples = steps * cfg.data.batch_size
    t = cfg.trainer
    every = t.get("val_check_interval")
    if isinstance(every, int):
        validations = max(steps // every, 1)
    else:
        per_epoch = max(training_batches(OmegaConf.merge(cfg, {"trainer": {"max_epochs": 1,
                        "max_steps": -1}})), 1)  # fmt: skip
        validations = max(steps // per_epoch, 1)
    val_images = cfg.data.val_size or 10000
    limit = t.get("limit_val_batches")
    if isinstance(limit, int):
        val_images = min(val_images, limit * cfg.data.eval_batch_size)
    evaluated = validations * val_images + 10000
    return samples * train_ms / 1000 + evaluated * eval_ms / 1000 + 0.5


_TIMED: dict[str, tuple[float, float]] = {}


def timed_cost(cfg: DictConfig, steps: int = 3) -> tuple[float, float]:
    """(ms per training sample, ms per evaluated sample) of cfg's network, timed on this
    machine's CPU: a few training steps (forward, backward, the optimizer's step) on a batch of
    the data's shape after one to warm up, and an evaluation batch. Once per network, bn option,
    optimizer and batch in a process. A network that cannot be built is refused in one line."""
    import time

    import torch
    from hydra.utils import instantiate

    from bnsweep.config.checks import refusal
    from bnsweep.run.training import build_net

    picked = [OmegaConf.select(cfg, k) for k in ("model", "bn", "optimizer", "data.batch_size",
                                                 "data.channels", "data.image_size")]  # fmt: skip
    key = str([OmegaConf.to_container(v, resolve=True) if OmegaConf.is_config(v) else v
               for v in picked])  # fmt: skip
    if key in _TIMED:
        return _TIMED[key]
    try:
        net = build_net(cfg)
    except Exception as e:
        if (refused := refusal(e)) is not None:
            raise refused from e
        raise
    shape = (cfg.data.batch_size, cfg.data.channels, *cfg.data.image_size)
    g = torch.Generator().manual_seed(0)
    x, y = (
        torch.rand(shape, generator=g),
        torch.randint(cfg.data.num_classes, shape[:1], generator=g),
    )
    opt = instantiate(cfg.optimizer)(net.parameters())
    took = []
    for _ in range(steps + 1):
        start = time.perf_counter()
        opt.zero_grad()
        torch.nn.functional.cross_entropy(net(x), y).backward()
        opt.step()
        took.append(time.perf_counter() - start)
    net.eval()
    with torch.no_grad():
        start = time.perf_counter()
        net(x)
        evaluated = time.perf_counter() - start
    _TIMED[key] = (1000 * min(took[1:]) / shape[0], 1000 * evaluated / shape[0])
    return _TIMED[key]


def plan(args: Sequence[str]) -> tuple[DictConfig, list[Job]]:
    """The sweep's config (its fixed settings) and its jobs, in Hydra's order and numbering."""
    from hydra._internal.core_plugins.basic_sweeper import BasicSweeper
    from hydra.core.override_parser.overrides_parser import OverridesParser

    overrides = [a for a in without_config_dirs(args) if not a.startswith("-")]
    base = _compose([o for o in overrides if not is_sweep(o)])
    validate(base)
    params = OmegaConf.select(base, "hydra.sweeper.params", default=None) or {}
    if not grid_sweeper(base.hydra.sweeper._target_):
        return base, []
    swept = [f"{k}={v}" for k, v in params.items()] + overrides
    parsed = OverridesParser.create().parse_overrides(swept)
    expanded = [j for batch in BasicSweeper.split_arguments(parsed, None) for j in batch]
    if (tune := check_tune(base, swept)) is not None:
        return base, tuned_jobs(base, tune, expanded)
    if base.sweep.vectorize:
        from hydra import initialize_config_dir
        from hydra.core.global_hydra import GlobalHydra

        with initialize_config_dir(version_base="1.3", config_dir=str(CONF)):
            expanded = group_jobs(base, expanded, GlobalHydra.instance().config_loader())
    jobs = []
    for num, job in enumerate(expanded):
        cfg = _compose(job)
        folder = f"{num}_{folder_name(cfg.hydra.job.override_dirname)}"
        if not cfg.sweep.vectorize:
            once = estimate(cfg)
            jobs.append(Job(num, folder, [folder], once))
            continue
        points = stacked_points(cfg)
        costs = [estimate(_compose([*job, *point]) if point else cfg) for point in points]
        runs = [
            member_dir(Path(folder), s, member_suffix(p)).name for p in points for s in cfg.seeds
        ]
        seconds = None if None in costs else sum(costs) * len(cfg.seeds)
        jobs.append(Job(num, folder, runs, seconds))
    return base, jobs


def tuned_jobs(base: DictConfig, tune: Tune, expanded: list[list[str]]) -> list[Job]:
    """A tuned sweep's jobs: every point's tuning runs (tune/; a range search's values are
    proposed as it runs), then its compared runs at the value chosen."""
    points: dict[tuple[str, ...], list[list[str]]] = {}
    for job in expanded:
        points.setdefault(tuple(o for o in job if not o.startswith("seed=")), []).append(job)
    jobs: list[Job] = []
    for p in points:
        for v in tune.values or [(lo * hi) ** 0.5 for lo, hi in [tune.range]] * tune.budget:
            for s in tune.seeds:
                cfg = _compose(inner_job(base, p, tune.key, v, s))
                name = folder_name(cfg.hydra.job.override_dirname)
                if tune.searched:  # proposed as the search runs
                    name = name.replace(f"{tune.key}={value_text(v)}", f"{tune.key}=(proposed)")
                folder = f"{TUNE_DIR}/{len(jobs)}_{name}"
                jobs.append(Job(len(jobs), folder, [folder], estimate(cfg), tuning=True))
    if base.sweep.vectorize:
        return _vectorized(base, tune, jobs)
    for p_jobs in points.values():
        for job in p_jobs:
            cfg = _compose([*job, f"{tune.key}={value_text(tune.values[0] if tune.values else tune.range[0])}"])
            name = folder_name(cfg.hydra.job.override_dirname)
            name = ",".join(f"{tune.key}=(chosen)" if o.startswith(tune.key + "=") else o
                            for o in name.split(","))  # fmt: skip
            folder = f"{len(jobs)}_{name}"
            jobs.append(Job(len(jobs), folder, [folder], estimate(cfg)))
    return jobs


def _vectorized(base: DictConfig, tune: Tune, runs: list[Job]) -> list[Job]:
    """The tuned sweep's jobs when vectorized: the tuning runs of a point and value as one job
    (a point's values in one where its optimizer steps members at their own lr), then a job
    per point training its seeds (the runs listed in the dry run's first lines are the same)."""
    from bnsweep.sweep.points import lr_stacks

    optimizer = OmegaConf.to_container(base.optimizer, resolve=True)
    stacks = tune.key == "optimizer.lr" and lr_stacks(optimizer) and not tune.searched
    per_job = len(tune.seeds) * (len(tune.values) if stacks else 1)
    jobs: list[Job] = []
    for start in range(0, len(runs), per_job):
        group = runs[start : start + per_job]
        folder = group[0].folder.split("_", 1)[1].rsplit(",seed=", 1)[0]
        if stacks:
            folder = ",".join(o for o in folder.split(",") if not o.startswith(tune.key + "="))
        known = [r.seconds for r in group]
        names = [f"{TUNE_DIR}/{len(jobs)}_{r.folder.split('_', 1)[1]}" for r in group]
        jobs.append(Job(len(jobs), f"{TUNE_DIR}/{len(jobs)}_{folder}", names,
                        None if None in known else sum(known), tuning=True))  # fmt: skip
    points = len(runs) // tune.per_point()
    for p in range(points):
        seeds = list(base.seeds)
        name = runs[p * tune.per_point()].folder.split("_", 1)[1].rsplit(",seed=", 1)[0]
        name = ",".join(f"{tune.key}=(chosen)" if o.startswith(tune.key + "=") else o
                        for o in name.split(","))  # fmt: skip
        folder = f"{len(jobs)}_{name}"
        once = runs[p * tune.per_point()].seconds
        jobs.append(Job(len(jobs), folder, [f"{folder},seed={s}" for s in seeds],
                        None if once is None else once * len(seeds)))  # fmt: skip
    return jobs


def dry_run(args: Sequence[str]) -> int:
    """Print what ``python sweep.py args`` would run; exit status 2 for a bad value."""
    import sys

    try:
        base, jobs = plan(args)
    except ConfigError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    sweep_dir = base.hydra.sweep.dir
    study = base.hydra.runtime.choices.get("study", "custom")
    if not jobs:
        trials = OmegaConf.select(base, "hydra.sweeper.n_trials", default="?")
        print(f"study={study}: a search of {trials} trials ({base.hydra.sweeper._target_}); its "
              f"jobs are chosen as it runs, into {sweep_dir}/")  # fmt: skip
        return 0
    runs = sum(len(j.runs) for j in jobs)
    print(f"study={study}: {len(jobs)} jobs, {runs} runs, into {sweep_dir}/ (the time in the "
          "folder's name is the launch's)")  # fmt: skip
    if (tune := tune_settings(base)) is not None:
        inner = sum(len(j.runs) for j in jobs if j.tuning)
        outer = sum(len(j.runs) for j in jobs if not j.tuning)
        points = inner // tune.per_point()
        tried = f"{tune.budget} proposed values" if tune.searched else f"{len(tune.values)} values"
        print(f"  {points} points × {tried} × {len(tune.seeds)} tuning seeds = {inner} tuning "
              f"runs (validation only), then {points} × {outer // max(points, 1)} = {outer} "
              f"compared runs at each point's chosen {tune.key}"
              + (f"; vectorized: {sum(j.tuning for j in jobs)} tuning jobs, "
                 f"{sum(not j.tuning for j in jobs)} compared" if base.sweep.vectorize else ""))  # fmt: skip
    width = max(len(j.folder) for j in jobs)
    for j in jobs:
        took = f"≈ {duration(j.seconds)}" if j.seconds is not None else "time unknown"
        extra = f"  runs: {', '.join(j.runs)}" if len(j.runs) > 1 else ""
        print(f"  {j.folder:<{width}}  {took}{extra}")
    known = [j.seconds for j in jobs if j.seconds is not None]
    if known:
        total = sum(known) + 6
        print(f"about {duration(total)} one after another on a 2-core CPU like the project's "
              f"(rough: samples × each network's measured cost, or one timed on this machine's "
              f"CPU for a network of your own); hydra/launcher=joblib "
              f"hydra.launcher.n_jobs=2 runs 2 at a time; a GPU is far faster")  # fmt: skip
    return 0

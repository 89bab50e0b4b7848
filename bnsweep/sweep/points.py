"""``sweep.vectorize=true`` across points: the points of a sweep that differ only in what sets
the initial weights (``init.*``, the ``init`` option) or in how our BN layer estimates its
inference statistics (``bn.momentum``, the estimator among those keeping the same buffers)
train as one job, every seed of each, because their training computes the same way.

The sweeper (hydra/sweeper=bnsweep: hydra_plugins/bnsweep_plugins) groups each batch of jobs
(``group_jobs``): it composes each job's config as Hydra does, and the jobs whose configs are
equal but for those keys (and whose other overrides are equal) become one job. That job's overrides are the shared ones plus
``sweep.stack``: one list of overrides per point it trains (``[['init.std=0.1'], …]``). The job
composes each point's config again from them (``compose_point``), so that every member's
config, run folder name, recorded overrides and option choices are those of its independent
run: a resume, the report and a later non-vectorized run see the same runs.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

from omegaconf import DictConfig, OmegaConf, open_dict, read_write

from bnsweep.config.keys import grid_sweeper

STACK = "sweep.stack"
OUR_BN = "bnsweep.nn.make_batchnorm"  # our layer (and its ghost-batch variant); renorm's
# running statistics enter its training transform, torch's layer stacks one momentum only


# optimizers whose step is the learning rate times an update that does not depend on it (its
# state neither: momentum buffers, moment estimates, squared-gradient sums), nor on the weights
# when weight_decay is 0: stacked members may then each have their own learning rate
LR_LINEAR = ("torch.optim.SGD", "torch.optim.Adam", "torch.optim.AdamW", "torch.optim.Adagrad",
             "torch.optim.RMSprop")  # fmt: skip


def lr_stacks(optimizer: dict[str, Any]) -> bool:
    """Whether members may differ in ``optimizer.lr`` (a config of LR_LINEAR without weight
    decay; AdamW's default decay is 0.01)."""
    target = str(optimizer.get("_target_", ""))
    decay = optimizer.get("weight_decay", 0.01 if target.endswith("AdamW") else 0.0)
    return target in LR_LINEAR and decay == 0


def training_signature(config: dict[str, Any]) -> str:
    """What a point's training computes, from its comparable config (bnsweep.run.folders): the config
    without the seed, the init keys, the lr of an optimizer that steps members at their own
    (``lr_stacks``: bnsweep.nn.stacked.member_lrs) and, for our BN layer, the EMA momentum and which estimator
    (only the buffers it keeps: momentum and cumulative keep none, window its ring)."""
    out = {k: v for k, v in config.items() if k not in ("seed", "init")}
    opt = out.get("optimizer")
    if isinstance(opt, dict) and lr_stacks(opt):  # each member may step at its own lr
        out["optimizer"] = {k: v for k, v in opt.items() if k != "lr"}
    bn = out.get("bn")
    if isinstance(bn, dict) and bn.get("_target_") == OUR_BN:
        bn = {k: v for k, v in bn.items() if k != "momentum"}
        bn["estimator"] = _estimator_buffers(bn.get("estimator"))
        out["bn"] = bn
    return json.dumps(out, sort_keys=True)


def _estimator_buffers(name: Any) -> Any:
    from bnsweep.nn.estimators import ESTIMATORS

    cls = ESTIMATORS.get(name)
    return name if cls is None else sorted(cls.own_buffers)


def is_stackable(key: str) -> bool:
    """Whether a swept key may tell stacked points apart (the signature decides whether they do)."""
    return _key(key).split(".")[0] in ("init", "bn") or _key(key) == "optimizer.lr"


def _key(override: str) -> str:
    return override.split("=", 1)[0].lstrip("+~")


def _quoted(text: str) -> str | None:
    for q in ("'", '"'):
        if q not in text and "\\" not in text:
            return f"{q}{text}{q}"
    return None


def encode(points: Sequence[Sequence[str]]) -> str | None:
    """``sweep.stack=[['init.std=0.1'],['init.std=0.3']]``; None when a value cannot be quoted."""
    items = []
    for point in points:
        quoted = [_quoted(o) for o in point]
        if None in quoted:
            return None
        items.append("[" + ",".join(quoted) + "]")  # type: ignore[arg-type]
    return f"{STACK}=[" + ",".join(items) + "]"


_GROUPED: dict[tuple, list[list[str]]] = {}  # the grouping of a sweep, computed once


def group_jobs(master: DictConfig, jobs: Sequence[Sequence[str]], loader: Any) -> list[list[str]]:
    """The basic sweeper's job overrides with the stackable points of each vectorized job
    merged into one job (see the module's doc); unchanged when the sweep is not vectorized or
    nothing stacks. ``loader``: Hydra's config loader (composes each job as its launcher does)."""
    jobs = [list(j) for j in jobs]
    if not OmegaConf.select(master, "sweep.vectorize", default=False) or len(jobs) < 2:
        return jobs
    if not grid_sweeper(OmegaConf.select(master, "hydra.sweeper._target_", default="")):
        return jobs  # a search sweeper proposes its points one by one
    cache_key = (str(master.hydra.sweep.dir), tuple(map(tuple, jobs)))
    if cache_key in _GROUPED:
        return _GROUPED[cache_key]
    from bnsweep.config.keys import computes
    from bnsweep.run.folders import config_snapshot

    values: dict[str, set[str]] = {}
    for job in jobs:
        for o in job:
            values.setdefault(_key(o), set()).add(o)
    varying = {k for k, v in values.items() if len(v) > 1 and is_stackable(k)}
    if not varying:
        return jobs
    groups: dict[str, list[list[str]]] = {}  # shared overrides + signature -> the jobs
    for job in jobs:
        shared = [o for o in job if _key(o) not in varying]
        cfg = _task_config(loader.load_sweep_config(master, job))
        with open_dict(
            cfg
        ):  # where files go (``${hydra:…}``, unset in this process) computes nothing
            for k in [k for k in cfg if not computes(str(k))]:
                del cfg[k]
        key = json.dumps(shared) + training_signature(config_snapshot(cfg))
        groups.setdefault(key, []).append(job)
    out = []
    for members in groups.values():
        shared = [o for o in members[0] if _key(o) not in varying]
        stacked = encode([[o for o in j if _key(o) in varying] for j in members])
        if len(members) == 1 or stacked is None:
            out.extend(members)
        else:
            out.append([*shared, stacked])
    _GROUPED[cache_key] = out
    return out


def _task_config(cfg: DictConfig) -> DictConfig:
    task = OmegaConf.create(OmegaConf.to_container(cfg, resolve=False))
    with read_write(task), open_dict(task):
        del task["hydra"]
    return task


def stacked_points(cfg: DictConfig) -> list[list[str]]:
    """The overrides of each point a job trains (``sweep.stack``); [[]] for a job of one point."""
    points = OmegaConf.select(cfg, STACK, default=None)
    return [list(p) for p in points] if points else [[]]


def compose_point(point: Sequence[str]) -> tuple[DictConfig, list[str], dict[str, str]]:
    """In a job of stacked points: one point's config as its own job would have been composed
    (this job's overrides without ``sweep.stack``, plus the point's), with the overrides and
    option choices Hydra records of it."""
    from hydra.core.global_hydra import GlobalHydra
    from hydra.core.hydra_config import HydraConfig

    hydra = HydraConfig.get()
    own = [o for o in hydra.overrides.task if _key(o) != STACK]
    overrides = [*own, *point]
    master = OmegaConf.create({"hydra": {"overrides": {"hydra": list(hydra.overrides.hydra)},
                                         "job": {"config_name": hydra.job.config_name}}})  # fmt: skip
    composed = GlobalHydra.instance().config_loader().load_sweep_config(master, overrides)
    choices = {k: v for k, v in composed.hydra.runtime.choices.items() if not k.startswith("hydra")}
    cfg = _task_config(composed)
    with open_dict(cfg):
        cfg.run_dir = str(hydra.runtime.output_dir)  # the job's (each member gets its own)
    return cfg, overrides, choices


def member_suffix(point: Sequence[str]) -> str:
    """The part of a member's folder name its point adds: ``init.std=0.1``."""
    return ",".join(o.lstrip("+~") for o in point)

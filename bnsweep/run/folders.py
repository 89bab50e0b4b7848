"""Run folders: which config a folder holds, and whether a run may start, continue or skip.

The rule: a finished run is never overwritten, a folder is never reused for another config,
and nothing is written into a folder before the run has claimed it. Configs are compared
without the settings that do not change what a run computes (where its files or the data
live, the thread count, how a sweep launches it), so a moved or copied folder still resumes.

Light on purpose (omegaconf only): the sweep process and the report use it too.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from bnsweep.config.keys import LOCATION, MOVED, NEUTRAL, computes
from bnsweep.files import atomic_write, read_json, write_json
from bnsweep.nn.architectures import OWN_ACTIVATION
from bnsweep.run.record import METRICS, read_record

RUN_CONFIG = "run_config.json"


class RunRefused(FileExistsError):
    """A run that may not start in its folder; the message names the folder and why. The
    folder is left exactly as it was."""


def comparable(snapshot: dict[str, Any]) -> dict[str, Any]:
    """A resolved config (a run_config.json) without the settings that do not change what the
    run computes (where its files and the data live, how it is logged and launched), and
    without the keys added later at their neutral value (``bnsweep.config.keys.NEUTRAL``), so a run
    recorded before a key existed compares equal to the same run now."""
    out = {k: v for k, v in snapshot.items() if computes(k)}
    for key, group in out.items():  # a _target_ recorded under the name it had before it moved
        if isinstance(group, dict) and group.get("_target_") in MOVED:
            out[key] = {**group, "_target_": MOVED[group["_target_"]]}
    data = out.get("data")
    own_folder = isinstance(data, dict) and str(data.get("_target_", "")).endswith(
        "ImageFolderDataModule"
    )
    for dotted in LOCATION:
        if not (own_folder and dotted == "data.root"):  # an image folder's root is its identity
            _drop(out, dotted, lambda value: True)
    for dotted, neutral in NEUTRAL.items():
        _drop(out, dotted, lambda value, neutral=neutral: value == neutral)
    model = out.get("model")
    if isinstance(model, dict):  # its own nonlinearity, named
        own = OWN_ACTIVATION.get(model.get("_target_"))
        _drop(out, "model.activation", lambda value: own is not None and value == own)
    return out


def with_neutral(config: dict[str, Any]) -> dict[str, Any]:
    """A comparable config (a run_config.json) with the keys ``comparable`` left out at their
    neutral value put back at it (model.activation: the network's own nonlinearity): what
    tells points apart, where one point's value of a swept key is the neutral one (a sweep
    over model.bn_position=pre,post)."""
    out = json.loads(json.dumps(config))
    for dotted, neutral in NEUTRAL.items():
        group, key = dotted.split(".")
        out.setdefault(group, {}).setdefault(key, neutral)  # probes: a group of later keys only
    model = out.get("model")
    if isinstance(model, dict) and "activation" not in model:
        own = OWN_ACTIVATION.get(model.get("_target_"))
        if own is not None:
            model["activation"] = own
    return out


def _drop(config: dict[str, Any], dotted: str, when: Any) -> None:
    group, key = dotted.split(".")
    section = config.get(group)
    if isinstance(section, dict) and key in section and when(section[key]):
        rest = {k: v for k, v in section.items() if k != key}
        if rest:
            config[group] = rest
        else:  # a group of later keys only (probes): as absent as in an older config
            del config[group]


def config_snapshot(cfg: DictConfig) -> dict[str, Any]:
    """What run_config.json records of a run: its resolved, comparable config."""
    resolved = OmegaConf.to_container(cfg, resolve=True)
    return json.loads(json.dumps(comparable(resolved)))  # as run_config.json reads back


def _flat(d: Any, prefix: str = "") -> dict[str, Any]:
    if not isinstance(d, dict):
        return {prefix: d}
    out: dict[str, Any] = {}
    for k, v in d.items():
        out.update(_flat(v, f"{prefix}{k}.") if isinstance(v, dict) else {f"{prefix}{k}": v})
    return out


def differences(old: dict[str, Any], new: dict[str, Any], most: int = 3) -> str:
    """``optimizer.lr: 0.001 → 0.01, model.bn: [] → [conv1]`` (the first ``most``)."""
    a, b = _flat(old), _flat(new)
    keys = [k for k in dict.fromkeys([*a, *b]) if a.get(k, "∅") != b.get(k, "∅")]
    shown = [f"{k}: {a.get(k, '(unset)')} → {b.get(k, '(unset)')}" for k in keys[:most]]
    return ", ".join(shown) + (f" and {len(keys) - most} more" if len(keys) > most else "")


def saved_config(run_dir: Path) -> dict[str, Any] | None:
    path = Path(run_dir) / RUN_CONFIG
    return comparable(read_json(path)) if path.exists() else None


def claim(run_dir: Path, cfg: DictConfig) -> dict[str, Any] | None:
    """Check ``run_dir`` before a run (its lock held): the finished metrics when a resume can
    skip it, None when the run may start or continue. Raises RunRefused otherwise, and
    DamagedFile for a run_config.json or metrics.json that does not read.

    A fresh claim records the config (run_config.json, .hydra/) before anything else."""
    run_dir = Path(run_dir)
    resume = bool(cfg.get("resume", False))
    snapshot = config_snapshot(cfg)
    old = saved_config(run_dir)
    if old is not None and old != snapshot:
        raise RunRefused(
            f"{run_dir} holds a run of another config ({differences(old, snapshot)}); "
            "resume with the settings it was started with, or use another folder"
        )
    if (run_dir / METRICS).exists():
        metrics = read_record(run_dir)
        if not resume:
            raise RunRefused(
                f"{run_dir} already holds a run; refusing to overwrite it (resume=true skips a "
                "finished run and continues an interrupted one)"
            )
        if metrics.get("status") == "finished":
            return metrics
    elif old is not None and not resume:
        raise RunRefused(
            f"{run_dir} holds an unfinished run; resume=true continues it from its last checkpoint"
        )
    if old is None:
        run_dir.mkdir(parents=True, exist_ok=True)
        write_json(run_dir / RUN_CONFIG, snapshot)
        write_hydra_files(run_dir, cfg)
    return None


def write_hydra_files(run_dir: Path, cfg: DictConfig) -> None:
    """``.hydra/config.yaml``, ``overrides.yaml`` and ``hydra.yaml``, as Hydra writes them; ours
    so that they are written only into a folder the run has claimed (hydra.output_subdir is
    null: Hydra's own would overwrite those of a finished run before any check)."""
    from hydra.core.hydra_config import HydraConfig

    folder = Path(run_dir) / ".hydra"
    folder.mkdir(exist_ok=True)
    task = {k: v for k, v in OmegaConf.to_container(cfg, resolve=False).items() if k != "hydra"}
    atomic_write(folder / "config.yaml", OmegaConf.to_yaml(OmegaConf.create(task)))
    if HydraConfig.initialized():
        hydra = HydraConfig.get()
        atomic_write(folder / "overrides.yaml", OmegaConf.to_yaml(hydra.overrides.task))
        atomic_write(folder / "hydra.yaml", OmegaConf.to_yaml(OmegaConf.create({"hydra": hydra})))


def member_dir(job_dir: Path, seed: int, point: str = "") -> Path:
    """The folder an independent sweep gives this seed (of the stacked point ``point``, named as
    ``init.std=0.1``): ``3_model=lenet`` -> ``3_model=lenet,seed=0``, ``0_`` ->
    ``0_init.std=0.1,seed=0``."""
    name = job_dir.name
    items = f"{point}," if point else ""
    return job_dir.parent / f"{name}{'' if name.endswith('_') else ','}{items}seed={seed}"


def runs_in(sweep_dir: Path) -> Iterator[Path]:
    """The run folders of a sweep folder (those holding a run_config.json)."""
    for path in sorted(Path(sweep_dir).glob(f"*/{RUN_CONFIG}")):
        yield path.parent


def find_run(sweep_dir: Path, snapshot: dict[str, Any]) -> Path | None:
    """The run folder of a sweep folder that holds this config, whatever its name: a resumed
    sweep whose swept lists changed finds its runs again (job numbers shift, names change)."""
    for run_dir in runs_in(sweep_dir):
        try:
            if saved_config(run_dir) == snapshot:
                return run_dir
        except ValueError:  # a damaged run_config.json holds no config we can match
            continue
    return None

"""Checks of a composed config before any work: one line naming the key and the value.

Light on purpose (omegaconf only; torch only to ask for a GPU), so that train.py and sweep.py
refuse a bad value in about a second, before importing Lightning. Values only a constructor can
judge (a BN placement against the network's layers) are refused by the constructor, and
``refusal`` turns that into the same one-line error."""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

from omegaconf import DictConfig, OmegaConf

from bnsweep.config.parallel import check_devices, cuda_available, several
from bnsweep.config.tracker import check_tracker
from bnsweep.config.values import MISSING as _MISSING
from bnsweep.config.values import ConfigError
from bnsweep.config.values import shown as _shown
from bnsweep.config.values import value as _value
from bnsweep.data.catalog import DATASETS, NORMALIZATIONS
from bnsweep.nn.architectures import layers_of


def _number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def _finite(v: Any) -> bool:
    return _number(v) and math.isfinite(v)


def _int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _strings(v: Any) -> bool:
    return (
        isinstance(v, (list, tuple))
        and all(isinstance(s, str) for s in v)
        and len(set(v)) == len(v)
    )


def _devices(v: Any) -> bool:
    if v == "auto" or (_int(v) and (v >= 1 or v == -1)):
        return True
    return isinstance(v, (list, tuple)) and len(v) > 0 and all(_int(d) and d >= 0 for d in v)


def _percentiles(v: Any) -> bool:
    return v is None or (isinstance(v, dict) and set(v) <= {"layer", "unit", "q"} and "layer" in v)


SEED_MAX = 2**32 - 1  # numpy's and torch's seeds: 32 bits
ACCELERATORS = ("auto", "cpu", "gpu", "cuda")
ACTIVATIONS = ("sigmoid", "tanh", "relu")  # bnsweep.nn.layers.ACTIVATIONS
POSITIONS = ("pre", "post")
EVALUATE = ("running", "precise")
# Lightning's precisions that BN trains in: mixed (activations in 16 bits, BN's statistics and the
# weights in float32) or full; the 16-bit "true" ones would keep BN's running statistics in 16 bits
PRECISIONS = ("32-true", "64-true", "bf16-mixed", "16-mixed", 32, 64, "32", "64")
# the networks sweep.vectorize stacks (bnsweep.nn.stacked): bnsweep's own, whose forward keeps
# each member's channels apart; another network's forward may mix them (a concatenation, a
# mean over channels), so it is refused rather than trained wrong
STACKABLE = ("bnsweep.nn.LeNet", "bnsweep.nn.InitCNN", "bnsweep.nn.MLP")
# bn options without inference statistics (torch's GroupNorm / LayerNorm in BN's slot)
NO_RUNNING_STATS = ("bnsweep.nn.make_group_norm", "bnsweep.nn.make_layer_norm")


def _init_layers(v: Any) -> bool:
    fields = {
        "std": lambda x: _finite(x) and x > 0,
        "bias": _finite,
        "truncated": lambda x: isinstance(x, bool),
    }
    return isinstance(v, dict) and all(
        isinstance(spec, dict)
        and spec
        and all(k in fields and fields[k](x) for k, x in spec.items())
        for spec in v.values()
    )


# key -> (check, what is expected); keys absent from a config (e.g. bn.window for bn=momentum)
# are skipped, and None is accepted where the key documents it as "off" (checks say so)
Rule = tuple[Callable[[Any], bool], str]
RULES: dict[str, Rule] = {
    # study=batch_size's training budget (trainer.max_steps follows it)
    "samples": (lambda v: _int(v) and v >= 1, "a positive integer (the training samples of a run)"),
    "seed": (lambda v: _int(v) and 0 <= v <= SEED_MAX, f"an integer in [0, {SEED_MAX}]"),
    "percentiles": (_percentiles, "null or a mapping {layer: NAME, unit: N, q: [15, 50, 85]}"),
    "test_weights": (lambda v: v in ("last", "best", "none"), "last, best or none"),
    # train.py's; sweep.py's resume=<sweep folder> is read before composing (config/cli.py)
    "resume": (lambda v: isinstance(v, bool), "true or false"),
    "report.val_acc_ylim": (
        lambda v: (
            v is None
            or (isinstance(v, list) and len(v) == 2 and all(_finite(x) for x in v) and v[0] < v[1])
        ),
        "null or [low, high], low < high",
    ),
    "report.final_y": (lambda v: v in ("acc", "error"), "one of ['acc', 'error']"),
    "report.baseline": (
        lambda v: v is None or (isinstance(v, str) and "=" in v),
        "null or KEY=VALUE[,KEY=VALUE...], e.g. 'model=lenet'",
    ),
    "report.compare": (lambda v: v in ("baseline", "all"), "one of ['baseline', 'all']"),
    "report.power": (
        lambda v: v is None or (_finite(v) and 0 < v < 1),
        "null or a number in (0, 1)",
    ),
    "probes.every": (
        lambda v: v is None or (_int(v) and v >= 1),
        "null (off) or a positive integer",
    ),
    "probes.steps": (
        lambda v: isinstance(v, list) and len(v) > 0 and all(_finite(x) and x > 0 for x in v),
        "a non-empty list of numbers > 0, e.g. [0.05, 0.1, 0.2, 0.4]",
    ),
    "model.bn": (_strings, "a list of distinct layer names, e.g. [conv1,fc1]"),
    "model.dropout": (lambda v: _finite(v) and 0 <= v < 1, "a number in [0, 1)"),
    "model.activation": (lambda v: v in ACTIVATIONS, f"one of {list(ACTIVATIONS)}"),
    "model.bn_position": (lambda v: v in POSITIONS, f"one of {list(POSITIONS)}"),
    "bn.momentum": (
        lambda v: v is None or (_number(v) and 0 <= v <= 1),
        "a number in [0, 1], or null (the cumulative average)",
    ),
    "bn.window": (lambda v: _int(v) and v >= 1, "a positive integer"),
    "bn.eps": (lambda v: _finite(v) and v > 0, "a finite number > 0"),
    "bn.ghost_batch_size": (lambda v: v is None or (_int(v) and v >= 1), "a positive integer"),
    "bn.r_max": (lambda v: _finite(v) and v >= 1, "a finite number >= 1"),
    "bn.d_max": (lambda v: _finite(v) and v >= 0, "a finite number >= 0"),
    "bn.warmup": (lambda v: _int(v) and v >= 0, "an integer >= 0"),
    "bn.r_max_steps": (lambda v: _int(v) and v >= 0, "an integer >= bn.warmup"),
    "bn.d_max_steps": (lambda v: _int(v) and v >= 0, "an integer >= bn.warmup"),
    "bn.groups": (lambda v: _int(v) and v >= 1, "a positive integer"),
    "bn.precise_batches": (
        lambda v: v is None or v == "all" or (_int(v) and v >= 1),
        "null (off), a positive integer or all",
    ),
    "bn.evaluate": (lambda v: v in EVALUATE, f"one of {list(EVALUATE)}"),
    "init.layers": (
        lambda v: v is None or _init_layers(v),
        "null or a mapping {LAYER: {std: S, bias: B, truncated: true|false}}",
    ),
    "init.gain": (lambda v: _finite(v) and v > 0, "a finite number > 0"),
    "optimizer.initial_accumulator_value": (
        lambda v: _finite(v) and v >= 0,
        "a finite number >= 0",
    ),
    "init.std": (lambda v: _finite(v) and v > 0, "a finite number > 0"),
    "init.bias": (lambda v: v is None or _finite(v), "a finite number"),
    "data.batch_size": (lambda v: _int(v) and v >= 2, "an integer >= 2 (BN needs 2 samples)"),
    "data.eval_batch_size": (lambda v: _int(v) and v >= 1, "a positive integer"),
    "data.normalize": (lambda v: v in NORMALIZATIONS, f"one of {list(NORMALIZATIONS)}"),
    "data.train_size": (lambda v: v is None or (_int(v) and v >= 2), "null or an integer >= 2"),
    "data.drop_last": (lambda v: isinstance(v, bool), "true or false"),
    "optimizer.lr": (lambda v: _finite(v) and v > 0, "a finite number > 0"),
    "optimizer.momentum": (lambda v: _number(v) and 0 <= v < 1, "a number in [0, 1)"),
    "optimizer.weight_decay": (lambda v: _finite(v) and v >= 0, "a finite number >= 0"),
    "trainer.accelerator": (lambda v: v in ACCELERATORS, f"one of {list(ACCELERATORS)}"),
    "trainer.devices": (_devices, "a positive integer, -1 (all), 'auto' or a list of device ids"),
    "trainer.max_epochs": (
        lambda v: v is None or (_int(v) and (v >= 1 or v == -1)),
        "null, -1 (no limit) or an integer >= 1",
    ),
    "trainer.compile": (lambda v: isinstance(v, bool), "true or false"),
    "trainer.precision": (lambda v: v in PRECISIONS, f"one of {list(PRECISIONS)}"),
    "trainer.max_steps": (
        lambda v: _int(v) and (v >= 1 or v == -1),
        "-1 (no limit) or an integer >= 1",
    ),
    "trainer.val_check_interval": (
        lambda v: v is None or (_int(v) and v >= 1) or (_number(v) and 0 < v <= 1),
        "null, an integer number of steps >= 1, or a fraction of an epoch in (0, 1]",
    ),
}


def validate(cfg: DictConfig) -> None:
    """Raise ConfigError for the first invalid value, before anything is built or trained."""
    _facts(cfg)  # a user's data that cannot be read: one line first
    check_tracker(cfg)
    for key, (ok, expected) in RULES.items():
        value = _value(cfg, key)
        if value is not _MISSING and not ok(value):
            raise ConfigError(f"{key} must be {expected}, got {_shown(value)}")
    _check_split(cfg)
    _check_layers(cfg)
    _check_variants(cfg)
    window = _value(cfg, "bn.window")
    if window is not _MISSING and window > (batches := training_batches(cfg)):
        raise ConfigError(
            f"bn.window must be an integer in [1, {batches}] (the run's training batches), "
            f"got {window}"
        )
    accelerator = OmegaConf.select(cfg, "trainer.accelerator", default="auto")
    precision = OmegaConf.select(cfg, "trainer.precision", default="32-true")
    if precision == "16-mixed" and (accelerator == "cpu" or not cuda_available()):
        raise ConfigError("trainer.precision=16-mixed needs a CUDA GPU (float16 autocast and its "
                          "gradient scaler); on the CPU: trainer.precision=bf16-mixed")  # fmt: skip
    check_devices(cfg, accelerator)
    if accelerator in ("gpu", "cuda") and not cuda_available():
        raise ConfigError(
            f"trainer.accelerator={accelerator} but no CUDA GPU is available here "
            "(torch.cuda.is_available() is False); use trainer.accelerator=auto or cpu"
        )


def _check_variants(cfg: DictConfig) -> None:
    """What the norm variants need of the rest of the config."""
    for key in ("r_max_steps", "d_max_steps"):
        end, warmup = _value(cfg, f"bn.{key}"), _value(cfg, "bn.warmup")
        if end is not _MISSING and warmup is not _MISSING and end < warmup:
            raise ConfigError(f"bn.{key} must be an integer >= bn.warmup ({warmup}), got {end}")
    precise = _value(cfg, "bn.precise_batches")
    precise = None if precise is _MISSING else precise
    if _value(cfg, "bn.evaluate") == "precise" and precise is None:
        raise ConfigError("bn.evaluate=precise needs bn.precise_batches (a positive integer or "
                          "all), got bn.precise_batches=null")  # fmt: skip
    target = OmegaConf.select(cfg, "bn._target_", default=None)
    if precise is not None and target in NO_RUNNING_STATS:
        raise ConfigError(f"bn.precise_batches={precise} needs a layer with inference "
                          f"statistics; {target.rsplit('_', 2)[-2]} norm has none")  # fmt: skip
    k = _value(cfg, "bn.ghost_batch_size")
    if k is _MISSING or k is None:
        return
    batch = OmegaConf.select(cfg, "data.batch_size", default=64)
    if batch % k:
        raise ConfigError(f"bn.ghost_batch_size must divide data.batch_size ({batch}), got {k}")
    tail = _last_batch(cfg)
    if tail % k:
        raise ConfigError(
            f"bn.ghost_batch_size must divide every training batch, got {k}: the epoch's last "
            f"batch has {tail} images; data.drop_last=true leaves it out"
        )


def _last_batch(cfg: DictConfig) -> int:
    """The size of an epoch's last training batch (data.batch_size when all are full)."""
    n = _train_size(cfg)
    batch = OmegaConf.select(cfg, "data.batch_size", default=64)
    if OmegaConf.select(cfg, "data.drop_last", default=False):
        return batch
    used = n - (n % batch == 1)  # a lone trailing sample is left out
    return used % batch or batch


def _check_split(cfg: DictConfig) -> None:
    """data.val_size must leave at least 2 training images (BN's minimum batch)."""
    val_size = _value(cfg, "data.val_size")
    if val_size is _MISSING:
        return
    n = _train_count(cfg)
    fraction = isinstance(val_size, float) and 0 < val_size < 1
    if not (
        (_int(val_size) and 0 <= val_size <= n - 2) or (fraction and n - round(n * val_size) >= 2)
    ):
        raise ConfigError(
            f"data.val_size must be an integer in [0, {n - 2}] or a fraction in (0, 1) (0: "
            f"validate on the test set; at least 2 training images must remain), got {_shown(val_size)}"
        )


def _check_layers(cfg: DictConfig) -> None:
    """model.bn and percentiles.layer name layers of the network (bnsweep.nn.architectures)."""
    model = _value(cfg, "model")
    names = layers_of(model) if isinstance(model, dict) else None
    if names is None:
        return
    bn = model.get("bn") or []
    unknown = [n for n in bn if n not in names]
    if unknown:
        kind = model["_target_"].rsplit(".", 1)[-1]
        raise ConfigError(
            f"model.bn of {kind} names unknown layer(s) {unknown}; choose from {list(names)}"
        )
    layer = OmegaConf.select(cfg, "percentiles.layer", default=None)
    if layer is not None and layer not in names:
        raise ConfigError(f"percentiles.layer must be one of {list(names)}, got {layer!r}")


def _train_count(cfg: DictConfig) -> int:
    """How many training images (before the validation split) the data holds."""
    own = _facts(cfg)
    if own:
        return own["train_count"]
    spec = DATASETS.get(OmegaConf.select(cfg, "data.name", default="mnist"))
    return spec.train_count if spec is not None else DATASETS["mnist"].train_count


def _facts(cfg: DictConfig) -> dict[str, Any]:
    """The facts of a user's data source (bnsweep.data.sources), {} for MNIST's; a source that
    cannot be read is one line."""
    data = OmegaConf.select(cfg, "data", default=None)
    if data is None or not str(data.get("_target_", "")).endswith(
        ("NpzDataModule", "ImageFolderDataModule")
    ):
        return {}
    from bnsweep.data.catalog import DataError
    from bnsweep.data.sources import facts

    try:
        return facts(data)
    except DataError as e:
        raise ConfigError(str(e)) from None


def _train_size(cfg: DictConfig) -> int:
    """How many images the training split holds."""
    total = _train_count(cfg)
    val = OmegaConf.select(cfg, "data.val_size", default=0) or 0
    n = total - (round(total * val) if isinstance(val, float) and 0 < val < 1 else val)
    size = OmegaConf.select(cfg, "data.train_size", default=None)
    return min(n, size) if size else n


def training_batches(cfg: DictConfig) -> int:
    """How many training batches the run sees at most (Lightning's default of 1000 epochs where
    neither max_epochs nor max_steps limits it)."""
    n = _train_size(cfg)
    batch = OmegaConf.select(cfg, "data.batch_size", default=64)
    if OmegaConf.select(cfg, "data.drop_last", default=False):
        per_epoch = n // batch
    else:
        per_epoch = -(-(n - (n % batch == 1)) // batch)  # a lone trailing sample is left out
    limit = OmegaConf.select(cfg, "trainer.limit_train_batches", default=None)
    if _int(limit):
        per_epoch = min(per_epoch, limit)
    elif _number(limit):
        per_epoch = max(1, int(per_epoch * limit))
    steps = OmegaConf.select(cfg, "trainer.max_steps", default=-1)
    epochs = OmegaConf.select(cfg, "trainer.max_epochs", default=None)
    if epochs in (None, -1):
        epochs = 1000 if steps in (None, -1) else None
    total = per_epoch * epochs if epochs is not None else steps
    return min(total, steps) if steps not in (None, -1) else total


def check_vectorize(cfg: DictConfig) -> list[int]:
    """What a vectorized job (sweep.vectorize=true) cannot do, refused in one line; its seeds."""
    seeds = OmegaConf.select(cfg, "seeds", default=None)
    if not seeds:
        raise ConfigError(f"sweep.vectorize=true needs a list of seeds, got seeds={seeds!r}")
    if OmegaConf.select(cfg, "trainer.compile", default=False):
        raise ConfigError("trainer.compile=true cannot be combined with sweep.vectorize=true")
    devices = OmegaConf.select(cfg, "trainer.devices", default=1)
    accelerator = OmegaConf.select(cfg, "trainer.accelerator", default="auto")
    if several(devices, accelerator):
        raise ConfigError(f"sweep.vectorize=true trains a point's seeds as one network on one "
                          f"device; with trainer.devices={_shown(devices)} use "
                          "sweep.vectorize=false")  # fmt: skip
    clip = OmegaConf.select(cfg, "trainer.gradient_clip_val", default=None)
    if clip:
        raise ConfigError(
            f"trainer.gradient_clip_val={clip} clips by one norm over all members; it cannot be "
            "combined with sweep.vectorize=true"
        )
    model = str(OmegaConf.select(cfg, "model._target_", default=""))
    if not model.startswith(STACKABLE):
        raise ConfigError(
            f"sweep.vectorize=true stacks bnsweep's own networks only, got "
            f"model._target_={model}; run its seeds as separate jobs (sweep.vectorize=false)"
        )
    target = OmegaConf.select(cfg, "bn._target_", default=None)
    if target in NO_RUNNING_STATS:
        choice = target.rsplit("_", 2)[-2]
        raise ConfigError(f"bn={choice} cannot be combined with sweep.vectorize=true (torch's "
                          f"{'GroupNorm' if choice == 'group' else 'LayerNorm'} does not stack "
                          "by member); run its seeds as separate jobs")  # fmt: skip
    precise = OmegaConf.select(cfg, "bn.precise_batches", default=None)
    if precise is not None:
        raise ConfigError(f"bn.precise_batches={precise} cannot be combined with "
                          "sweep.vectorize=true; run its seeds as separate jobs")  # fmt: skip
    every = OmegaConf.select(cfg, "probes.every", default=None)
    if every is not None:
        raise ConfigError(f"probes.every={every} cannot be combined with sweep.vectorize=true; "
                          "run its seeds as separate jobs")  # fmt: skip
    return [int(s) for s in seeds]


def refusal(e: BaseException) -> ConfigError | None:
    """A constructor's refusal of a config value as a ConfigError with its one-line message:
    Hydra wraps it (InstantiationException: a multi-line text naming the target), Lightning
    raises MisconfigurationException. None when ``e`` is no such refusal."""
    from hydra.errors import InstantiationException

    cause = e
    while isinstance(cause, InstantiationException) and cause.__cause__ is not None:
        cause = cause.__cause__
    if isinstance(cause, ConfigError):
        return cause
    if isinstance(cause, (ValueError, TypeError)) or type(cause).__name__ == (
        "MisconfigurationException"
    ):
        return ConfigError(" ".join(str(cause).split()))
    return None


def exit_if_invalid(cfg: DictConfig) -> None:
    """train.py's first step: an invalid value exits with one line and status 2, and the run
    folder Hydra made for it is removed."""
    import sys
    from pathlib import Path

    from bnsweep.files import remove_unstarted

    try:
        validate(cfg)
    except ConfigError as e:
        remove_unstarted(Path(cfg.run_dir))
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)

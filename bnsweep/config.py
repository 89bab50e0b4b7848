"""Checks of a composed config before any work: one line naming the key and the value.

Light on purpose (omegaconf only; torch only to ask for a GPU), so that train.py and sweep.py
refuse a bad value in about a second, before importing Lightning."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from omegaconf import DictConfig, OmegaConf


class ConfigError(ValueError):
    """An invalid config value; the message names the key, the value and what was expected."""


def _number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def _int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


# key -> (check, what is expected); keys absent from a config (e.g. bn.window for bn=momentum)
# are skipped, and None is accepted where the key documents it as "off" (checks say so)
Rule = tuple[Callable[[Any], bool], str]
RULES: dict[str, Rule] = {
    "seed": (lambda v: _int(v) and v >= 0, "an integer >= 0"),
    "bn.momentum": (lambda v: _number(v) and 0 <= v <= 1, "a number in [0, 1]"),
    "bn.window": (lambda v: _int(v) and v >= 1, "a positive integer"),
    "bn.eps": (lambda v: _number(v) and v > 0, "a number > 0"),
    "init.std": (lambda v: _number(v) and v > 0, "a number > 0"),
    "init.bias": (lambda v: v is None or _number(v), "a number"),
    "data.batch_size": (lambda v: _int(v) and v >= 2, "an integer >= 2 (BN needs 2 samples)"),
    "data.eval_batch_size": (lambda v: _int(v) and v >= 1, "a positive integer"),
    "data.val_size": (
        lambda v: _int(v) and 0 <= v < 60000,
        "an integer in [0, 59999] (0: validate on the test set)",
    ),
    "data.train_size": (lambda v: v is None or (_int(v) and v >= 2), "null or an integer >= 2"),
    "optimizer.lr": (lambda v: _number(v) and v > 0, "a number > 0"),
    "optimizer.momentum": (lambda v: _number(v) and 0 <= v < 1, "a number in [0, 1)"),
    "optimizer.weight_decay": (lambda v: _number(v) and v >= 0, "a number >= 0"),
    "trainer.max_epochs": (lambda v: v is None or (_int(v) and v >= -1), "an integer >= -1"),
    "trainer.compile": (lambda v: isinstance(v, bool), "true or false"),
    "trainer.max_steps": (lambda v: _int(v) and v >= -1, "an integer >= -1"),
    "trainer.val_check_interval": (
        lambda v: v is None or (_int(v) and v >= 1) or (_number(v) and 0 < v <= 1),
        "null, an integer number of steps >= 1, or a fraction of an epoch in (0, 1]",
    ),
}

_MISSING = object()


def validate(cfg: DictConfig) -> None:
    """Raise ConfigError for the first invalid value, before anything is built or trained."""
    for key, (ok, expected) in RULES.items():
        value = OmegaConf.select(cfg, key, default=_MISSING)
        if value is not _MISSING and not ok(value):
            raise ConfigError(f"{key} must be {expected}, got {value!r}")
    accelerator = OmegaConf.select(cfg, "trainer.accelerator", default="auto")
    if accelerator in ("gpu", "cuda") and not _cuda_available():
        raise ConfigError(
            f"trainer.accelerator={accelerator} but no CUDA GPU is available here "
            "(torch.cuda.is_available() is False); use trainer.accelerator=auto or cpu"
        )


def check_vectorize(cfg: DictConfig) -> list[int]:
    """What a vectorized job (sweep.vectorize=true) cannot do, refused in one line; its seeds."""
    seeds = OmegaConf.select(cfg, "seeds", default=None)
    if not seeds:
        raise ConfigError(f"sweep.vectorize=true needs a list of seeds, got seeds={seeds!r}")
    if OmegaConf.select(cfg, "trainer.compile", default=False):
        raise ConfigError("trainer.compile=true cannot be combined with sweep.vectorize=true")
    clip = OmegaConf.select(cfg, "trainer.gradient_clip_val", default=None)
    if clip:
        raise ConfigError(
            f"trainer.gradient_clip_val={clip} clips by one norm over all members; it cannot be "
            "combined with sweep.vectorize=true"
        )
    return [int(s) for s in seeds]


def _cuda_available() -> bool:
    import torch

    return torch.cuda.is_available()


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

"""What every config check shares: the error, and how a key's value is read and shown."""

from __future__ import annotations

import math
from typing import Any

from omegaconf import DictConfig, OmegaConf


class ConfigError(ValueError):
    """An invalid config value; the message names the key, the value and what was expected."""


MISSING = object()  # a key the config does not have


def value(cfg: DictConfig, key: str) -> Any:
    """The key's value as plain Python (lists and dicts resolved), MISSING where absent."""
    found = OmegaConf.select(cfg, key, default=MISSING)
    if isinstance(found, DictConfig) or OmegaConf.is_list(found):
        return OmegaConf.to_container(found, resolve=True)
    return found


def shown(value: Any) -> str:
    """A value as a refusal writes it: repr, and nan / inf as they are typed."""
    return repr(value) if not isinstance(value, float) or math.isfinite(value) else str(value)


def flat(d: Any, prefix: str = "") -> dict[str, Any]:
    """A nested dict's leaves by dotted key (``{'a': {'b': 1}}`` -> ``{'a.b': 1}``)."""
    out: dict[str, Any] = {}
    for k, v in d.items():
        if isinstance(v, dict):
            out.update(flat(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out

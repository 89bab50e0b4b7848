"""Weight initialisation schemes, applied in place to every Conv and Linear layer of a model.

BN layers keep γ = 1, β = 0 (their own ``reset_parameters``). Every scheme takes an optional
``torch.Generator``: the same seed gives the same weights.

``truncated_normal`` and ``normal`` take ``layers``: per-layer settings by the network's layer
name (``conv1``, ``fc1``, ``fc3``, ``out`` …), each a mapping of ``std``, ``bias`` and
``truncated`` (cut at ±2·std or not) over the scheme's own, e.g. the BN-CNN of REFERENCES.md §3:
``{fc1: {std: 0.05, bias: 0}, fc2: {std: 0.05, bias: 0, truncated: false}}``.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from torch import Generator, nn

_AFFINE = (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.Linear)


def _affine_layers(model: nn.Module) -> list[nn.Module]:
    return [m for m in model.modules() if isinstance(m, _AFFINE)]


def _named_affine(model: nn.Module) -> list[tuple[str, nn.Module]]:
    """(layer name, affine module) by qualified name (``layer1.0.conv1``); the name of a
    block's affine part is the block's (``conv1``, not ``conv1.affine``)."""
    return [(name.removesuffix(".affine"), m) for name, m in model.named_modules()
            if isinstance(m, _AFFINE)]  # fmt: skip


def _check_number(key: str, value: Any, positive: bool = False) -> None:
    ok = not isinstance(value, bool) and isinstance(value, (int, float))
    if not ok or (positive and not value > 0) or value != value or abs(value) == float("inf"):
        raise ValueError(
            f"{key} must be a finite number{' > 0' if positive else ''}, got {value!r}"
        )


def _draw(
    model: nn.Module, std: float, bias: float, truncated: bool,
    layers: Mapping[str, Mapping[str, Any]] | None, generator: Generator | None,
) -> nn.Module:  # fmt: skip
    """Each affine layer's weights ~ N(0, std²), cut at ±2·std where ``truncated``; biases the
    constant ``bias``; ``layers`` overrides the three per layer."""
    named = _named_affine(model)
    layers = dict(layers or {})
    unknown = [k for k in layers if k not in {n for n, _ in named}]
    if unknown:
        raise ValueError(f"init.layers names unknown layer(s) {unknown}; "
                         f"choose from {list(dict.fromkeys(n for n, _ in named))}")  # fmt: skip
    for name, spec in layers.items():
        extra = sorted(set(spec) - {"std", "bias", "truncated"})
        if extra:
            raise ValueError(f"init.layers.{name} takes std, bias and truncated, got {extra}")
        if "std" in spec:
            _check_number(f"init.layers.{name}.std", spec["std"], positive=True)
        if "bias" in spec:
            _check_number(f"init.layers.{name}.bias", spec["bias"])
        if not isinstance(spec.get("truncated", True), bool):
            raise ValueError(f"init.layers.{name}.truncated must be true or false, "
                             f"got {spec['truncated']!r}")  # fmt: skip
    for name, m in named:
        spec = layers.get(name, {})
        s, b, cut = spec.get("std", std), spec.get("bias", bias), spec.get("truncated", truncated)
        if cut:
            nn.init.trunc_normal_(m.weight, 0.0, s, -2 * s, 2 * s, generator=generator)
        else:
            nn.init.normal_(m.weight, 0.0, s, generator=generator)
        if m.bias is not None:
            nn.init.constant_(m.bias, b)
    return model


def truncated_normal(
    model: nn.Module, std: float, bias: float | None = None, generator: Generator | None = None,
    layers: Mapping[str, Mapping[str, Any]] | None = None,
) -> nn.Module:  # fmt: skip
    """Weights ~ N(0, std²) truncated at ±2·std, as TF's ``truncated_normal(stddev=std)``.

    Values beyond two standard deviations are re-drawn, so the empirical std is the truncated
    distribution's, ≈ 0.8796·std. Biases are the constant ``bias`` (the init study sets
    bias = std; ``None`` means the same as std).
    """
    if isinstance(std, bool) or not isinstance(std, (int, float)) or not std > 0:
        raise ValueError(f"init.std must be a number > 0, got {std!r}")
    bias = std if bias is None else bias
    if isinstance(bias, bool) or not isinstance(bias, (int, float)):
        raise ValueError(f"init.bias must be a number, got {bias!r}")
    return _draw(model, std, bias, True, layers, generator)


def normal(
    model: nn.Module, std: float, bias: float = 0.0, generator: Generator | None = None,
    layers: Mapping[str, Mapping[str, Any]] | None = None,
) -> nn.Module:  # fmt: skip
    """Weights ~ N(0, std²), not truncated (the paper's "small random Gaussian values");
    biases the constant ``bias``."""
    if isinstance(std, bool) or not isinstance(std, (int, float)) or not std > 0:
        raise ValueError(f"init.std must be a number > 0, got {std!r}")
    if isinstance(bias, bool) or not isinstance(bias, (int, float)):
        raise ValueError(f"init.bias must be a number, got {bias!r}")
    return _draw(model, std, bias, False, layers, generator)


def glorot_uniform(model: nn.Module, generator: Generator | None = None) -> nn.Module:
    """Keras' default: weights U(±√(6 / (fan_in + fan_out))), biases zero."""
    for m in _affine_layers(model):
        nn.init.xavier_uniform_(m.weight, generator=generator)
        if m.bias is not None:
            nn.init.zeros_(m.bias)
    return model


def orthogonal(
    model: nn.Module, gain: float = 1.0, bias: float = 0.0, generator: Generator | None = None
) -> nn.Module:
    """Orthogonal weights (Saxe et al. 2014; torch.nn.init.orthogonal_, a conv's kernel
    flattened to (out, in·k·k)) times ``gain``; biases the constant ``bias``."""
    _check_number("init.gain", gain, positive=True)
    _check_number("init.bias", bias)
    for m in _affine_layers(model):
        nn.init.orthogonal_(m.weight, gain=gain, generator=generator)
        if m.bias is not None:
            nn.init.constant_(m.bias, bias)
    return model


def own(model: nn.Module, generator: Generator | None = None) -> nn.Module:
    """The weights the network's constructor drew (its own scheme, seeded by the run's seed):
    nothing is redrawn. For a network of one's own or of torchvision whose init is part of it."""
    return model


def torch_default(model: nn.Module, generator: Generator | None = None) -> nn.Module:
    """PyTorch's own defaults (Kaiming-uniform with a=√5), redrawn from ``generator``."""
    if generator is None:
        return model  # the weights drawn at construction are torch's defaults already
    for m in _affine_layers(model):
        # torch's reset_parameters with the generator: the same bounds, our seed
        fan_in = nn.init._calculate_fan_in_and_fan_out(m.weight)[0]
        nn.init.kaiming_uniform_(m.weight, a=5**0.5, generator=generator)
        if m.bias is not None:
            bound = 1 / fan_in**0.5 if fan_in > 0 else 0
            nn.init.uniform_(m.bias, -bound, bound, generator=generator)
    return model

"""Weight initialisation schemes, applied in place to every Conv and Linear layer of a model.

BN layers keep γ = 1, β = 0 (their own ``reset_parameters``). Every scheme takes an optional
``torch.Generator``: the same seed gives the same weights.
"""

from __future__ import annotations

from torch import Generator, nn

_AFFINE = (nn.Conv1d, nn.Conv2d, nn.Linear)


def _affine_layers(model: nn.Module) -> list[nn.Module]:
    return [m for m in model.modules() if isinstance(m, _AFFINE)]


def truncated_normal(
    model: nn.Module, std: float, bias: float | None = None, generator: Generator | None = None
) -> nn.Module:
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
    for m in _affine_layers(model):
        nn.init.trunc_normal_(m.weight, 0.0, std, -2 * std, 2 * std, generator=generator)
        if m.bias is not None:
            nn.init.constant_(m.bias, bias)
    return model


def normal(
    model: nn.Module, std: float, bias: float = 0.0, generator: Generator | None = None
) -> nn.Module:
    """Weights ~ N(0, std²), not truncated (the paper's "small random Gaussian values");
    biases the constant ``bias``."""
    if isinstance(std, bool) or not isinstance(std, (int, float)) or not std > 0:
        raise ValueError(f"init.std must be a number > 0, got {std!r}")
    if isinstance(bias, bool) or not isinstance(bias, (int, float)):
        raise ValueError(f"init.bias must be a number, got {bias!r}")
    for m in _affine_layers(model):
        nn.init.normal_(m.weight, 0.0, std, generator=generator)
        if m.bias is not None:
            nn.init.constant_(m.bias, bias)
    return model


def glorot_uniform(model: nn.Module, generator: Generator | None = None) -> nn.Module:
    """Keras' default: weights U(±√(6 / (fan_in + fan_out))), biases zero."""
    for m in _affine_layers(model):
        nn.init.xavier_uniform_(m.weight, generator=generator)
        if m.bias is not None:
            nn.init.zeros_(m.bias)
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

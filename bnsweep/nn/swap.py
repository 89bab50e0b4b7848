"""Put the ``bn=`` choice into a network that builds torch's own BatchNorm layers.

The way ``torch.nn.SyncBatchNorm.convert_sync_batchnorm`` converts a network (REFERENCES.md
§10): every ``torch.nn.BatchNorm1d/2d/3d`` and ``SyncBatchNorm`` is replaced, after the network
is built, by the layer the norm factory makes for its channels, with the affine weights and
the running statistics copied across, so a swapped network computes what the original did
until training changes it (our layer in eval mode: the same function, allclose; state dicts
load both ways). Layers of other kinds (GroupNorm, LayerNorm, ours) are left as they are.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

from bnsweep.nn.batchnorm import BatchNorm

# torch's BN classes a swap replaces, and whether each normalises conv maps: the factory's
# ``spatial`` (None: any rank, for BatchNorm3d's 5-D input and SyncBatchNorm's any)
TORCH_BN: dict[type, bool | None] = {
    nn.BatchNorm1d: False, nn.BatchNorm2d: True, nn.BatchNorm3d: None, nn.SyncBatchNorm: None,
}  # fmt: skip


def torch_batchnorms(model: nn.Module) -> dict[str, nn.Module]:
    """The torch BatchNorm layers of a model by qualified name (those a swap replaces)."""
    return {name: m for name, m in model.named_modules() if type(m) in TORCH_BN}


def swap_batchnorms(model: nn.Module, factory: Callable[..., nn.Module]) -> tuple[nn.Module, int]:
    """(the model with every torch BN layer replaced by ``factory(num_features, spatial)``, how
    many were replaced). The model itself is changed in place, unless it is such a layer.

    The new layer keeps the old one's ``affine`` and ``track_running_stats`` where they are not
    torch's defaults (a factory that cannot make such a layer refuses with the layer's name),
    its parameters and running statistics (and, for our layer, the estimator's own buffers built
    from them), its device, dtype and train/eval mode.
    """
    if type(model) in TORCH_BN:
        return _replace("", model, factory), 1
    found = torch_batchnorms(model)
    for name, old in found.items():
        parent, _, attr = name.rpartition(".")
        setattr(
            model.get_submodule(parent) if parent else model, attr, _replace(name, old, factory)
        )
    return model, len(found)


def _replace(name: str, old: nn.Module, factory: Callable[..., nn.Module]) -> nn.Module:
    options = {}
    if not old.affine:
        options["affine"] = False
    if not old.track_running_stats:
        options["track_running_stats"] = False
    try:
        new = factory(old.num_features, TORCH_BN[type(old)], **options)
    except TypeError:
        raise ValueError(
            f"the bn option cannot replace layer {name or type(old).__name__!r} "
            f"({type(old).__name__}, {', '.join(f'{k}={v}' for k, v in options.items())}); "
            "model.convert_bn=false keeps torch's layers"
        ) from None
    ref = old.weight if old.weight is not None else old.running_mean
    if ref is not None:
        new = new.to(device=ref.device, dtype=ref.dtype)
    with torch.no_grad():
        for key in ("weight", "bias", "running_mean", "running_var", "num_batches_tracked"):
            src, dst = getattr(old, key, None), getattr(new, key, None)
            if (
                isinstance(src, torch.Tensor)
                and isinstance(dst, torch.Tensor)
                and src.shape == dst.shape
            ):
                dst.copy_(src)
    if isinstance(new, BatchNorm) and new.track_running_stats:
        new.stats.from_running(new._buffers)  # the estimator continues from the copied statistics
    return new.train(old.training)

"""The norm-layer factories the ``bn=`` configs name (``norm(num_features)``, as torchvision's
``norm_layer``), the normalisation layers of any network found by type, and PreciseBN's
recomputation of the population statistics."""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn

from bnsweep.nn.batchnorm import TORCH_BATCHNORMS, BatchNorm, BatchNorm1d, BatchNorm2d, is_int
from bnsweep.nn.estimators import Cumulative
from bnsweep.nn.renorm import BatchRenorm, BatchRenorm1d, BatchRenorm2d

# torch's normalisation layers used as baselines in BN's slot (bn=group, bn=layer)
BASELINES = (nn.GroupNorm, nn.LayerNorm)


def norm_layers(model: nn.Module) -> dict[str, nn.Module]:
    """The normalisation layers of a model by qualified name: ours, torch's BN, and the
    GroupNorm / LayerNorm baselines."""
    kinds = (BatchNorm, *TORCH_BATCHNORMS, *BASELINES)
    return {name: m for name, m in model.named_modules() if isinstance(m, kinds)}


def batch_norms(model: nn.Module) -> dict[str, nn.Module]:
    """The layers of a model that keep inference statistics (ours and torch's BN)."""
    return {name: m for name, m in norm_layers(model).items()
            if getattr(m, "running_mean", None) is not None}  # fmt: skip


def _pick(spatial: bool | None, any_dims: type, flat: type, maps: type) -> type:
    """The class a factory builds: for conv maps (``spatial=True``), for (N, C) input
    (``False``), or, called as ``norm(num_features)`` the way torchvision and timm call
    ``norm_layer``, one for any input (``None``)."""
    return any_dims if spatial is None else maps if spatial else flat


def make_batchnorm(num_features: int, spatial: bool | None = None, **kwargs: Any) -> BatchNorm:
    """Norm-layer factory used by the networks: our layer, 2d for conv maps, 1d for (N, C)
    input, and for any input when the network does not say (``norm(num_features)``)."""
    return _pick(spatial, BatchNorm, BatchNorm1d, BatchNorm2d)(num_features, **kwargs)


def make_batch_renorm(num_features: int, spatial: bool | None = None, **kwargs: Any) -> BatchRenorm:
    """Batch renormalization in BN's slot (bn=renorm)."""
    return _pick(spatial, BatchRenorm, BatchRenorm1d, BatchRenorm2d)(num_features, **kwargs)


def make_group_norm(
    num_features: int, spatial: bool | None = None, groups: int = 2, eps: float = 1e-5
) -> nn.Module:
    """torch.nn.GroupNorm in BN's slot (bn=group): each sample normalised over each group of
    num_features/groups channels (and their positions); γ, β per channel. Any (N, C, …) input."""
    if not is_int(groups) or groups < 1 or num_features % groups:
        raise ValueError(
            f"bn.groups must be a positive integer dividing the channels of every normalised "
            f"layer, got {groups!r} for a layer of {num_features}"
        )
    return nn.GroupNorm(groups, num_features, eps=eps)


def make_layer_norm(num_features: int, spatial: bool | None = None, eps: float = 1e-5) -> nn.Module:
    """Layer norm in BN's slot (bn=layer): each sample normalised over all its features. For
    (N, C) input torch.nn.LayerNorm(C); for conv maps, and where the input is not known,
    torch.nn.GroupNorm(1, C), which is LayerNorm over (C, …) with one γ, β per channel (on
    (N, C) input the same function as LayerNorm(C))."""
    return (
        nn.LayerNorm(num_features, eps=eps)
        if spatial is False
        else nn.GroupNorm(1, num_features, eps=eps)
    )


def make_no_norm(num_features: int, spatial: bool | None = None) -> nn.Module:
    """No normalisation in BN's slot (bn=none): the identity, so a network with model.bn set
    computes what the same network without BN layers computes (lenet_fc_bn2 bn=none = lenet)."""
    return nn.Identity()


class TorchBatchNorm(nn.BatchNorm1d):
    """torch's BN layer for any (N, C, …) input: what ``bn=torch`` gives a network that calls
    ``norm(num_features)`` without saying its input. (N, C, H, W) is normalised as the
    (N, C, H·W) view, over the same values per channel as torch.nn.BatchNorm2d."""

    def forward(self, x: Tensor) -> Tensor:
        if x.dim() <= 3:
            return super().forward(x)
        return super().forward(x.flatten(2)).view_as(x)  # (N, C, H, W) -> (N, C, H·W) and back


def make_torch_batchnorm(
    num_features: int, spatial: bool | None = None, **kwargs: Any
) -> nn.Module:
    """Norm-layer factory for the reference: torch.nn.BatchNorm2d / BatchNorm1d (any rank
    where the network does not say)."""
    return _pick(spatial, TorchBatchNorm, nn.BatchNorm1d, nn.BatchNorm2d)(num_features, **kwargs)


@torch.no_grad()
def recompute_population_stats(
    model: nn.Module, batches: Any, device: torch.device | None = None
) -> int:
    """Replace every BN layer's running statistics by exact population statistics (Alg. 2).

    Runs the trained network over ``batches`` (an iterable of (x, y) or x) in training mode with
    the weights frozen: each BN layer averages its batch means and unbiased batch variances over
    all batches (the cumulative estimator). Dropout is switched off during the pass. Each layer's
    estimator and the model's train/eval mode are restored afterwards. Returns the batch count.
    """
    norms = list(batch_norms(model).values())
    if not norms:
        return 0
    was_training = {m: m.training for m in model.modules()}
    saved = [(m, m.momentum, getattr(m, "stats", None)) for m in norms]
    for m in norms:
        m.reset_running_stats()
        m.momentum = None  # torch's layer: cumulative average
        if isinstance(m, BatchNorm):
            m.stats = Cumulative()
    model.eval()
    for m in norms:
        m.train()
    n = 0
    try:
        for batch in batches:
            x = batch[0] if isinstance(batch, (tuple, list)) else batch
            model(x.to(device) if device is not None else x)
            n += 1
    finally:
        for m, momentum, stats in saved:
            m.momentum = momentum
            if stats is not None:
                m.stats = stats
                stats.from_running(m._buffers)  # its own buffers now hold the population estimate
        for m, training in was_training.items():
            m.train(training)
    return n

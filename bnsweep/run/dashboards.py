"""The BN dashboards and the tracked unit's percentiles, for any network: which layers are shown
(found by type), the running statistics' and pre-activations' histograms, and the check of a
``percentiles`` config against the network."""

from __future__ import annotations

from collections.abc import Mapping

import pytorch_lightning as pl
import torch
from torch import Tensor, nn

from bnsweep.nn import Block, capture_preactivations, norm_layers
from bnsweep.nn.layers import layer_names


def unit_percentiles(values: Tensor, q: list[float]) -> list[list[float]]:
    """Per row of ``values`` (S, n): one member's values of the tracked unit over the whole
    validation set, its ``q`` percentiles (the paper's Figure 1 (b, c))."""
    qs = torch.tensor(q, device=values.device) / 100
    return torch.quantile(values.float(), qs, dim=1).T.tolist()


def percentile_spec(net: nn.Module, spec: Mapping) -> dict:
    """Check a ``percentiles`` config against the network; the history keys it will fill."""
    layer, unit, q = spec.get("layer"), spec.get("unit", 0), list(spec.get("q", (15, 50, 85)))
    try:
        module = net.get_submodule(layer) if isinstance(layer, str) and layer else None
    except AttributeError:
        module = None
    if module is None:
        raise ValueError(f"percentiles.layer must name a layer of the network, e.g. "
                         f"{layer_names(net)}, got {layer!r}")  # fmt: skip
    width = channels_of(module)  # None: the pre-flight check reads it from the output
    if not isinstance(unit, int) or isinstance(unit, bool) or not 0 <= unit < (width or unit + 1):
        raise ValueError(
            f"percentiles.unit must be an integer in [0, {(width or 1) - 1}], got {unit!r}"
        )
    if not q or not all(isinstance(v, (int, float)) and 0 <= v <= 100 for v in q):
        raise ValueError(f"percentiles.q must be a list of numbers in [0, 100], got {q!r}")
    return {
        "layer": layer,
        "unit": unit,
        "q": [float(v) for v in q],
        "keys": [f"preact/{layer}_u{unit}/p{v:g}" for v in q],
    }


def channels_of(module: nn.Module) -> int | None:
    """The channels (units) of a layer's output: a block's affine layer's, a conv's, a linear
    layer's, a normalisation layer's; None where the module does not say."""
    if isinstance(module, Block):
        module = module.affine
    for key in ("out_features", "out_channels", "num_features", "num_channels"):
        if isinstance(getattr(module, key, None), int):
            return getattr(module, key)
    return None


def dashboard_layers(net: nn.Module) -> dict[str, str]:
    """Normalisation layer name -> the name whose pre-activations its dashboard shows: a
    block's (its nonlinearity's input) for the layers of bnsweep's own blocks, the layer's own
    (its output) in any other network; found by type, in any network."""
    out = {}
    for name in norm_layers(net):
        parent = name.rsplit(".", 1)[0] if "." in name else ""
        out[name] = parent if parent and isinstance(net.get_submodule(parent), Block) else name
    return out


class BNStatsLogger(pl.Callback):
    """At each validation, log per BN layer the running mean / variance and the histogram of
    the pre-activations (the nonlinearity's input) on the first validation batch."""

    def on_validation_batch_start(self, trainer, pl_module, batch, batch_idx, dataloader_idx=0):
        if batch_idx == 0 and not trainer.sanity_checking:
            layers = list(dict.fromkeys(dashboard_layers(pl_module.net).values()))
            self._capture = capture_preactivations(pl_module.net, layers)
            self._pre = self._capture.__enter__()

    def on_validation_batch_end(
        self, trainer, pl_module, outputs, batch, batch_idx, dataloader_idx=0
    ):
        if getattr(self, "_capture", None) is not None:
            self._capture.__exit__(None, None, None)
            self._capture = None
            self._write(trainer, pl_module, self._pre)

    def _write(self, trainer: pl.Trainer, pl_module: pl.LightningModule, pre: dict[str, Tensor]):
        tb = tensorboard_of(trainer)
        if tb is None:
            return
        bn_dashboards(tb, pl_module.net, pre, trainer.global_step)


def tensorboard_of(trainer: pl.Trainer):  # noqa: ANN201 (a SummaryWriter or None)
    """The run's TensorBoard writer, None without a TensorBoard logger."""
    return next(
        (lg.experiment for lg in trainer.loggers if hasattr(lg.experiment, "add_histogram")), None
    )


def bn_dashboards(tb, net: nn.Module, pre: Mapping[str, Tensor], step: int, member: int = 0,
                  members: int = 1) -> None:  # noqa: ANN001 (a SummaryWriter)  # fmt: skip
    """Per BN layer of ``net``, the histograms of its running mean and variance and of its
    block's pre-activations ``pre`` (the nonlinearity's input on one validation batch); of
    member ``member`` where ``net`` stacks ``members`` (member-blocked channels)."""
    shown = dashboard_layers(net)
    for name, layer in norm_layers(net).items():
        block = shown[name]
        if getattr(layer, "running_mean", None) is not None:
            mean, var = layer.running_mean.view(members, -1), layer.running_var.view(members, -1)
            histogram(tb, f"bn/{block}/running_mean", mean[member], step)
            histogram(tb, f"bn/{block}/running_var", var[member], step)
        if block in pre:
            histogram(
                tb, f"preact/{block}", pre[block].unflatten(1, (members, -1))[:, member], step
            )


def histogram(tb, tag: str, values: Tensor, step: int) -> None:  # noqa: ANN001 (SummaryWriter)
    """A histogram of the finite values; none when there are none (a diverged network's NaN
    statistics): bnsweep's EventWriter leaves the others out itself."""
    tb.add_histogram(tag, values.detach(), step)

"""Pieces shared by the networks: a layer block with optional BN, and pre-activation capture."""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from typing import Any

import torch
from torch import Tensor, nn

# norm(num_features, spatial) -> module; spatial=True for (N, C, H, W) feature maps
NormFactory = Callable[[int, bool], nn.Module]


ACTIVATIONS: dict[str, type[nn.Module]] = {"sigmoid": nn.Sigmoid, "tanh": nn.Tanh, "relu": nn.ReLU}
POSITIONS = ("pre", "post")


def activation(name: str) -> nn.Module:
    """The nonlinearity ``model.activation`` names."""
    if name not in ACTIVATIONS:
        raise ValueError(f"model.activation must be one of {list(ACTIVATIONS)}, got {name!r}")
    return ACTIVATIONS[name]()


def check_position(position: str) -> None:
    if position not in POSITIONS:
        raise ValueError(f"model.bn_position must be one of {list(POSITIONS)}, got {position!r}")


class Block(nn.Sequential):
    """affine → [norm] → act (``position="pre"``: BN between the affine layer and the
    nonlinearity, the paper's §3.2), or affine → act → [norm] (``"post"``: BN after it).

    Children are named ``affine``, ``bn`` (only when normalised) and ``act``, so the input of
    ``act`` is the layer's pre-activation whatever the placement.
    """

    def __init__(
        self,
        affine: nn.Module,
        act: nn.Module,
        norm: nn.Module | None = None,
        position: str = "pre",
    ) -> None:
        super().__init__()
        check_position(position)
        self.affine = affine
        if norm is not None and position == "pre":
            self.bn = norm
        self.act = act
        if norm is not None and position == "post":
            self.bn = norm


def make_norms(
    bn: Sequence[str], allowed: Sequence[str], norm: NormFactory | None, model: str
) -> set[str]:
    """Validate a list of BN placements against a network's layer names."""
    bn = list(bn)
    unknown = [name for name in bn if name not in allowed]
    if unknown:
        raise ValueError(
            f"model.bn of {model} names unknown layer(s) {unknown}; choose from {list(allowed)}"
        )
    if len(set(bn)) != len(bn):
        raise ValueError(f"model.bn of {model} lists a layer twice: {bn}")
    if bn and norm is None:
        raise ValueError(f"{model} places BN on {bn} but no norm factory was given")
    return set(bn)


def block_names(model: nn.Module) -> list[str]:
    """Names of the model's blocks (layers whose pre-activation can be captured)."""
    return [name for name, m in model.named_modules() if isinstance(m, Block)]


def layer_names(model: nn.Module, most: int = 12) -> str:
    """A few of the model's qualified module names, for a message: its blocks, else its
    normalisation, convolution and linear layers."""
    names = block_names(model) or [
        n for n, m in model.named_modules()
        if n and (isinstance(m, (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.Linear)) or "norm" in type(m).__name__.lower())
    ]  # fmt: skip
    return str(names[:most])[:-1] + (f", … ({len(names)} in all)]" if len(names) > most else "]")


@contextmanager
def capture_preactivations(model: nn.Module, layers: Sequence[str]) -> Iterator[dict[str, Tensor]]:
    """Record a value of each named layer on every forward pass: for a block (``Block``) the
    input of its nonlinearity (its pre-activation, whatever BN's position), for any other
    module (by qualified name, ``layer1.0.bn1``) its output.

    Yields a dict layer name → the latest value (detached). The network is unchanged: forward
    hooks are added for the duration of the ``with`` block.
    """
    captured: dict[str, Tensor] = {}
    handles = []
    for name in layers:
        try:
            module = model.get_submodule(name)
        except AttributeError:
            raise ValueError(f"no layer {name!r}; choose from {layer_names(model)}") from None

        if isinstance(module, Block):

            def hook(_module: nn.Module, inputs: tuple[Tensor, ...], name: str = name) -> None:
                captured[name] = inputs[0].detach()

            handles.append(module.act.register_forward_pre_hook(hook))
        else:

            def out_hook(
                _module: nn.Module, _inputs: tuple, output: Tensor, name: str = name
            ) -> None:
                if isinstance(output, Tensor):
                    captured[name] = output.detach()

            handles.append(module.register_forward_hook(out_hook))
    try:
        yield captured
    finally:
        for h in handles:
            h.remove()


class _TilePool(torch.autograd.Function):
    """Average pooling whose windows tile the input (kernel = stride, no padding, sizes divisible
    by the kernel), computed as torch's CPU kernel computes it, in fewer passes.

    Forward: for each window, 0 + x[0, 0] + x[0, 1] + … in row-major order, then / k²: the sum
    of k² strided slices in that order, bit for bit F.avg_pool2d's result. Backward: every input
    position lies in exactly one window, so its gradient is g / k² of that window, written once.
    Faster than aten's kernels on the CPU, forward and backward (docs/reference/benchmarks.md).
    """

    @staticmethod
    def forward(ctx: Any, x: Tensor, k: int) -> Tensor:  # noqa: ANN401
        ctx.k, ctx.shape = k, x.shape
        out = x[:, :, 0::k, 0::k].clone()
        for i in range(k):
            for j in range(k):
                if i or j:
                    out.add_(x[:, :, i::k, j::k])
        return out.div_(k * k)

    @staticmethod
    def backward(ctx: Any, g: Tensor) -> tuple[Tensor, None]:  # noqa: ANN401
        k, (n, c, h, w) = ctx.k, ctx.shape
        grad = g.new_empty((n, c, h, w))
        grad.view(n, c, h // k, k, w // k, k).copy_(
            g.div(k * k)[:, :, :, None, :, None].expand(n, c, h // k, k, w // k, k)
        )
        return grad, None


class AvgPool2d(nn.AvgPool2d):
    """``nn.AvgPool2d`` with a faster exact path when the windows tile the input.

    Same results bit for bit (tested against F.avg_pool2d, forward and backward); any other
    configuration, device or input runs torch's kernel.
    """

    def forward(self, x: Tensor) -> Tensor:
        k = self.kernel_size
        k = k[0] if isinstance(k, tuple) and len(set(k)) == 1 else k
        tiles = (
            isinstance(k, int)
            and self.stride in (k, (k, k))
            and self.padding in (0, (0, 0))
            and self.divisor_override is None
            and x.dim() == 4
            and not x.is_cuda
            and x.is_contiguous()
            and x.shape[2] % k == 0
            and x.shape[3] % k == 0
        )
        return _TilePool.apply(x, k) if tiles else super().forward(x)


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def as_images(x: Tensor) -> Tensor:
    """Accept (N, 784), (N, 28, 28) or (N, 1, 28, 28) input; return (N, 1, 28, 28)."""
    return x.reshape(x.shape[0], 1, 28, 28) if x.dim() != 4 else x


__all__ = [
    "ACTIVATIONS",
    "POSITIONS",
    "AvgPool2d",
    "activation",
    "check_position",
    "Block",
    "NormFactory",
    "as_images",
    "block_names",
    "capture_preactivations",
    "count_parameters",
    "layer_names",
    "make_norms",
]

"""The MLP of Ioffe & Szegedy's MNIST experiment (REFERENCES.md §5)."""

from __future__ import annotations

from collections.abc import Sequence

from torch import Tensor, nn

from bnsweep.nn.architectures import mlp_layers
from bnsweep.nn.layers import Block, NormFactory, make_norms
from bnsweep.nn.layers import activation as _activation


class MLP(nn.Module):
    """784 → fc1 100 → sigmoid → fc2 100 → sigmoid → fc3 100 → sigmoid → out 10 logits.

    ``bn`` ⊆ {fc1, fc2, fc3} puts BN before that layer's sigmoid (the paper: all three);
    ``activation`` replaces the sigmoid (``tanh``: the BN MLP of REFERENCES.md §2),
    ``bn_position="post"`` puts BN after it.
    """

    def __init__(
        self,
        hidden: Sequence[int] = (100, 100, 100),
        bn: Sequence[str] = (),
        norm: NormFactory | None = None,
        num_classes: int = 10,
        in_features: int = 784,
        activation: str = "sigmoid",
        bn_position: str = "pre",
    ) -> None:
        super().__init__()
        names = list(mlp_layers(hidden))
        on = make_norms(bn, names, norm, "MLP")
        act = _activation(activation)
        self.flatten = nn.Flatten()  # (N, 1, 28, 28) -> (N, 784)
        self.layer_names = names
        width = in_features
        for name, features in zip(names, hidden):
            bn_layer = norm(features, False) if name in on else None
            block = Block(nn.Linear(width, features), type(act)(), bn_layer, bn_position)
            self.add_module(name, block)
            width = features
        self.out = nn.Linear(width, num_classes)

    def forward(self, x: Tensor) -> Tensor:
        x = self.flatten(x)
        for name in self.layer_names:
            x = getattr(self, name)(x)
        return self.out(x)

"""The CNN of the init-scale study (REFERENCES.md §4) and, with BN on both convs, §3."""

from __future__ import annotations

from collections.abc import Sequence

from torch import Tensor, nn

from bnsweep.nn.architectures import INIT_CNN
from bnsweep.nn.layers import Block, NormFactory, as_images, make_norms
from bnsweep.nn.layers import activation as _activation


class InitCNN(nn.Module):
    """conv1 32@5×5 SAME → ReLU → max-pool 2 → conv2 64@5×5 SAME → ReLU → max-pool 2 →
    fc1 3136→1024 → ReLU → dropout → fc2 10 logits; ``bn`` ⊆ {conv1, conv2, fc1};
    ``activation`` replaces the ReLU, ``bn_position="post"`` puts BN after it."""

    LAYERS = INIT_CNN

    def __init__(
        self,
        bn: Sequence[str] = (),
        norm: NormFactory | None = None,
        dropout: float = 0.5,
        num_classes: int = 10,
        activation: str = "relu",
        bn_position: str = "pre",
    ) -> None:
        super().__init__()
        if not 0 <= dropout < 1:
            raise ValueError(f"model.dropout must be in [0, 1), got {dropout!r}")
        on = make_norms(bn, self.LAYERS, norm, "InitCNN")
        act = _activation(activation)

        def block(name: str, affine: nn.Module, features: int, spatial: bool) -> Block:
            norm_layer = norm(features, spatial) if name in on else None
            return Block(affine, type(act)(), norm_layer, bn_position)

        self.conv1 = block("conv1", nn.Conv2d(1, 32, 5, padding=2), 32, True)  # -> (N, 32, 28, 28)
        self.pool1 = nn.MaxPool2d(2)  # -> (N, 32, 14, 14)
        self.conv2 = block("conv2", nn.Conv2d(32, 64, 5, padding=2), 64, True)  # -> (N, 64, 14, 14)
        self.pool2 = nn.MaxPool2d(2)  # -> (N, 64, 7, 7)
        self.flatten = nn.Flatten()  # -> (N, 3136)
        self.fc1 = block("fc1", nn.Linear(3136, 1024), 1024, False)
        self.dropout = nn.Dropout(dropout)
        self.fc2 = nn.Linear(1024, num_classes)

    def forward(self, x: Tensor) -> Tensor:
        x = self.pool1(self.conv1(as_images(x)))
        x = self.flatten(self.pool2(self.conv2(x)))
        return self.fc2(self.dropout(self.fc1(x)))

"""LeNet of the BN-placement study (REFERENCES.md §1); BN placement is a list of layer names."""

from __future__ import annotations

from collections.abc import Sequence

from torch import Tensor, nn

from bnsweep.nn.architectures import LENET
from bnsweep.nn.layers import AvgPool2d, Block, NormFactory, as_images, make_norms
from bnsweep.nn.layers import activation as _activation


class LeNet(nn.Module):
    """conv1 6@5×5 (28×28 input zero-padded to 32×32) → sigmoid → avg-pool 2 →
    conv2 16@3×3 → sigmoid → avg-pool 2 → fc1 120 → sigmoid → fc2 84 → sigmoid → fc3 10 logits.

    ``bn`` lists the layers whose affine output is normalised before the sigmoid, e.g.
    ``[]`` (lenet), ``["conv1"]`` (lenet_bn1) … ``["conv1", "conv2", "fc1", "fc2"]`` (lenet_fc_bn2).
    """

    LAYERS = LENET

    def __init__(
        self,
        bn: Sequence[str] = (),
        norm: NormFactory | None = None,
        num_classes: int = 10,
        activation: str = "sigmoid",
        bn_position: str = "pre",
    ) -> None:
        super().__init__()
        on = make_norms(bn, self.LAYERS, norm, "LeNet")
        act = _activation(activation)  # checked before any layer is built

        def block(name: str, affine: nn.Module, features: int, spatial: bool) -> Block:
            norm_layer = norm(features, spatial) if name in on else None
            return Block(affine, type(act)(), norm_layer, bn_position)

        # padding=2 on the 28×28 input is the reference's zero-padding to 32×32, then a valid conv
        self.conv1 = block("conv1", nn.Conv2d(1, 6, 5, padding=2), 6, True)  # -> (N, 6, 28, 28)
        self.pool1 = AvgPool2d(2)  # -> (N, 6, 14, 14)
        self.conv2 = block("conv2", nn.Conv2d(6, 16, 3), 16, True)  # -> (N, 16, 12, 12)
        self.pool2 = AvgPool2d(2)  # -> (N, 16, 6, 6)
        self.flatten = nn.Flatten()  # -> (N, 576)
        self.fc1 = block("fc1", nn.Linear(576, 120), 120, False)
        self.fc2 = block("fc2", nn.Linear(120, 84), 84, False)
        self.fc3 = nn.Linear(84, num_classes)  # logits; softmax lives in the loss

    def forward(self, x: Tensor) -> Tensor:
        x = self.pool1(self.conv1(as_images(x)))
        x = self.flatten(self.pool2(self.conv2(x)))
        return self.fc3(self.fc2(self.fc1(x)))

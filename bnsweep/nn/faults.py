"""Fault injection for testing sweeps: a network that raises at a chosen training step."""

from __future__ import annotations

from typing import Any

from torch import Tensor

from bnsweep.nn import LeNet


class RaiseAtStep(LeNet):
    """LeNet whose ``step``-th training forward pass (0-based) raises RuntimeError."""

    def __init__(self, step: int, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.step, self.calls = step, 0

    def forward(self, x: Tensor) -> Tensor:
        if self.training:
            if self.calls == self.step:
                raise RuntimeError(f"injected failure at training step {self.step}")
            self.calls += 1
        return super().forward(x)

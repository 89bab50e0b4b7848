"""Batch renormalization (Ioffe 2017, Alg. 1): our BatchNorm layer whose training transform
corrects the batch statistics towards the running ones."""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import Tensor

from bnsweep.nn.batchnorm import BatchNorm, is_int, is_number
from bnsweep.nn.functional import batch_norm_train


class BatchRenorm(BatchNorm):
    """Batch renormalization (Ioffe 2017, Alg. 1): training normalises with the batch
    statistics and corrects towards the running ones,

        σ_B = √(σ²_B + ε),  σ = √(running_var + ε)
        r = clip(σ_B / σ, 1/r_max, r_max),  d = clip((μ_B − μ) / σ, −d_max, d_max)
        x̂ = (x − μ_B) / σ_B · r + d,  y = γ x̂ + β

    with r and d constants of the backward (stop-gradient); inference is BN's. r_max = 1,
    d_max = 0 is BN, and the layer computes BN's function then. The paper's schedule, in
    training steps t (the layer's ``num_batches_tracked``): plain BN for ``warmup`` steps, then
    r_max grows linearly from 1 to ``r_max`` by step ``r_max_steps`` and d_max from 0 to
    ``d_max`` by step ``d_max_steps``.

    One difference from the paper: its running σ is a moving average of σ_B; here σ comes from
    ``running_var``, the estimator's estimate of the variance (any estimator can be used).
    """

    def __init__(
        self,
        num_features: int,
        *args: Any,
        r_max: float = 3.0,
        d_max: float = 5.0,
        warmup: int = 5000,
        r_max_steps: int = 40000,
        d_max_steps: int = 25000,
        **kwargs: Any,
    ) -> None:
        checks = [
            ("r_max", r_max, is_number(r_max) and math.isfinite(r_max) and r_max >= 1,
             "a finite number >= 1"),
            ("d_max", d_max, is_number(d_max) and math.isfinite(d_max) and d_max >= 0,
             "a finite number >= 0"),
            ("warmup", warmup, is_int(warmup) and warmup >= 0, "an integer >= 0"),
        ]  # fmt: skip
        for key, end in (("r_max_steps", r_max_steps), ("d_max_steps", d_max_steps)):
            checks.append((key, end, is_int(end) and is_int(warmup) and end >= warmup,
                           f"an integer >= bn.warmup ({warmup!r})"))  # fmt: skip
        for key, value, ok, expected in checks:
            if not ok:
                raise ValueError(f"bn.{key} must be {expected}, got {value!r}")
        if kwargs.get("ghost_batch_size") is not None:
            raise ValueError("bn.ghost_batch_size cannot be combined with bn=renorm")
        if kwargs.get("track_running_stats") is False:
            raise ValueError("bn=renorm needs running statistics (track_running_stats=true)")
        super().__init__(num_features, *args, **kwargs)
        self.r_max, self.d_max = float(r_max), float(d_max)
        self.warmup, self.r_max_steps, self.d_max_steps = warmup, r_max_steps, d_max_steps

    def variant_options(self) -> dict[str, Any]:
        return {"r_max": self.r_max, "d_max": self.d_max, "warmup": self.warmup,
                "r_max_steps": self.r_max_steps, "d_max_steps": self.d_max_steps}  # fmt: skip

    def extra_repr(self) -> str:
        return super().extra_repr() + "".join(
            f", {k}={v}" for k, v in self.variant_options().items()
        )

    def limits(self, step: int) -> tuple[float, float]:
        """(r_max, d_max) at training step ``step`` (0 for the first), by the schedule."""

        def ramp(end: int) -> float:
            if step < self.warmup:
                return 0.0
            return (
                1.0 if end <= self.warmup else min(1.0, (step - self.warmup) / (end - self.warmup))
            )

        return 1 + (self.r_max - 1) * ramp(self.r_max_steps), self.d_max * ramp(self.d_max_steps)

    def _batch_stats(self, x: Tensor, k: int) -> tuple[Tensor, list[tuple[Tensor, Tensor]]]:
        # the step this batch trains: the count of batches the statistics have seen so far
        self._limits = self.limits(int(self._buffers["num_batches_tracked"]))
        return super()._batch_stats(x, k)

    def _train_block(
        self, x: Tensor, weight: Tensor | None, bias: Tensor | None,
        running_mean: Tensor | None, running_var: Tensor | None,
    ) -> tuple[Tensor, Tensor, Tensor]:  # fmt: skip
        r_max, d_max = self._limits
        if r_max == 1 and d_max == 0:  # r = 1, d = 0: BN itself, by its own function
            return batch_norm_train(x, weight, bias, self.eps)
        dims = (0, *range(2, x.dim()))  # every dim but the channels
        shape = (1, -1) + (1,) * (x.dim() - 2)
        mean = x.mean(dims)
        var = (x - mean.view(shape)).square().mean(dims)  # biased
        std = (var + self.eps).sqrt()
        with torch.no_grad():
            sigma = (running_var + self.eps).sqrt()
            r = (std / sigma).clamp(1 / r_max, r_max)
            d = ((mean - running_mean) / sigma).clamp(-d_max, d_max)
        xhat = (x - mean.view(shape)) / std.view(shape) * r.view(shape) + d.view(shape)
        y = xhat if weight is None else xhat * weight.view(shape) + bias.view(shape)
        return y, mean.detach(), var.detach()


class BatchRenorm1d(BatchRenorm):
    _expected_dims = (2, 3)


class BatchRenorm2d(BatchRenorm):
    _expected_dims = (4,)

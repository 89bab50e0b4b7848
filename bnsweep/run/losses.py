"""The one rule by which every loss and accuracy of a run is summed over batches: Σ (batch mean ·
batch size) / images, in float32, batch by batch, on the device (no host sync a step). A plain
run's evaluation loss is a scalar's sums, its training epoch's (2,) [loss, correct], a vectorized
job's (S, 2) per member: the same additions in the same order, so each member's numbers are its
independent run's to the bit. A NaN or inf stays in the mean (it is divergence: bnsweep.run.lit).

(torchmetrics' MeanMetric, used before, drops ``weight`` when ``nan_strategy="disable"``: its
mean was the plain mean of the batch means, biased by a smaller last batch.)
"""

from __future__ import annotations

from collections.abc import Mapping

import torch
from torch import Tensor


class Sums:
    """Σ of per-batch sums (a batch mean times its batch size, or a count) and the images they
    are over. Kept in checkpoints (``state``), so that a run saved mid-epoch keeps its epoch
    means whole."""

    def __init__(self) -> None:
        self.sums: Tensor | None = None
        self.n = 0

    def add(self, sums: Tensor, n: int) -> None:
        """Batch sums over ``n`` images: e.g. ``[loss · n, correct]``."""
        self.sums = sums if self.sums is None else self.sums + sums
        self.n += n

    def add_mean(self, loss: Tensor, n: int) -> None:
        """A batch's mean (its loss) over ``n`` images."""
        self.add(loss.detach() * n, n)

    def mean(self) -> Tensor:
        """Σ / images (NaN before any batch)."""
        return self.sums / self.n if self.n else torch.tensor(float("nan"))

    def take(self) -> Tensor:
        """The mean, and the sums cleared for the next evaluation or epoch."""
        out = self.mean()
        self.clear()
        return out

    def reduce(self, shape: tuple[int, ...] = ()) -> Sums:
        """The sums and counts of every process added together (data parallelism: each rank
        summed its own shard; one process: unchanged). ``shape``: the sums' shape, for a rank
        that had no batch. In float64, so the count is exact; every rank must call it."""
        from bnsweep.run.ranks import all_sum, world

        if world() == 1:
            return self
        sums = self.sums if self.sums is not None else torch.zeros(shape)
        packed = torch.cat([sums.detach().double().flatten(),
                            torch.tensor([float(self.n)], device=sums.device)])  # fmt: skip
        packed = all_sum(packed)
        self.sums = packed[:-1].view(sums.shape).to(sums.dtype)
        self.n = int(packed[-1])
        return self

    def clear(self) -> None:
        self.sums, self.n = None, 0

    def to(self, device: torch.device) -> None:
        """Sums read from a mid-epoch checkpoint come on the CPU: on the training device once
        the model is there (on_fit_start runs after the checkpoint was read and the model
        moved)."""
        if self.sums is not None:
            self.sums = self.sums.to(device)

    def state(self) -> dict:
        return {"epoch_sums": self.sums, "epoch_n": self.n}

    def load(self, saved: Mapping) -> None:
        self.sums, self.n = saved.get("epoch_sums"), saved.get("epoch_n", 0)

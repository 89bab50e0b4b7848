"""Checkpoints that survive a kill or a full disk mid-write, and the one a resume can trust.

Lightning's own writer stages a checkpoint in the system's temporary folder and moves it into
place, which is a copy when the run folder lives on another file system: a kill or a full
disk during that copy leaves a truncated ``last.ckpt``. Here every checkpoint is written
beside its name, fsync-ed and renamed (``files.atomic_write``), and the previous
``last.ckpt`` is kept as ``prev.ckpt``; a resume takes the newest of the two that reads.
"""

from __future__ import annotations

import io
import sys
from pathlib import Path
from typing import Any

import pytorch_lightning as pl
import torch
from lightning_fabric.plugins.io.torch_io import TorchCheckpointIO
from pytorch_lightning.callbacks import Checkpoint
from pytorch_lightning.trainer.states import TrainerFn

from bnsweep.files import atomic_write

LAST, PREVIOUS = "last.ckpt", "prev.ckpt"


def save(checkpoint: dict[str, Any], path: Path) -> None:
    """``torch.save`` through an atomic write; ``last.ckpt``'s earlier version becomes
    ``prev.ckpt``."""
    path = Path(path)
    buffer = io.BytesIO()
    torch.save(checkpoint, buffer)
    path.parent.mkdir(parents=True, exist_ok=True)
    keep = path.with_name(PREVIOUS) if path.name == LAST else None
    atomic_write(path, buffer.getvalue(), keep_previous=keep)


class AtomicCheckpointIO(TorchCheckpointIO):
    """Lightning's checkpoint writer (a public plugin: ``Trainer(plugins=[...])``) with
    ``save`` in place of its staged copy."""

    def save_checkpoint(
        self, checkpoint: dict[str, Any], path: Any, storage_options: Any = None
    ) -> None:
        save(checkpoint, Path(path))


class ValidationCheckpoints(Checkpoint):
    """Checkpoints after every validation of a fit: ``save_best`` at once where the validation
    improved on every earlier one, ``save_last`` (what a resume starts from) so that a kill
    loses at most the steps since the last validation.

    A validation on an epoch's last batch runs before that epoch's end hooks. Lightning 2.6
    resumes wrongly from a checkpoint taken there or at the epoch's boundary: it leaves the
    epoch's end out, or starts the next epoch with its sampler one epoch too far, and counts an
    epoch that trains nothing. Mid-epoch checkpoints resume exactly. So the last checkpoint of
    such a validation is taken after the next epoch's first step (the run's last validation
    needs none: the run's final state is saved after fit, ``fit_done``)."""

    def __init__(self) -> None:
        self._pending: tuple[object] | None = None  # (what save_last writes after the next step,)

    def on_validation_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if trainer.sanity_checking or trainer.state.fn != TrainerFn.FITTING:
            return
        what = self.validated(pl_module)
        self.save_best(trainer, pl_module, what)
        if trainer.is_last_batch or trainer.global_step == trainer.max_steps:
            self._pending = (what,)
        else:
            self.save_last(trainer, pl_module, what)

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:  # noqa: ANN001
        if self._pending is not None and not trainer.is_last_batch:
            (what,), self._pending = self._pending, None
            self.save_last(trainer, pl_module, what)

    def validated(self, pl_module: pl.LightningModule) -> object:
        """What the validation that just ended covers (a vectorized job: its members)."""
        return None

    def save_best(self, trainer: pl.Trainer, pl_module: pl.LightningModule, what: object) -> None:
        raise NotImplementedError

    def save_last(self, trainer: pl.Trainer, pl_module: pl.LightningModule, what: object) -> None:
        raise NotImplementedError


class RunCheckpoints(ValidationCheckpoints):
    """A run's ckpt/best.ckpt (its best validation accuracy so far) and ckpt/last.ckpt."""

    def __init__(self, folder: Path) -> None:
        super().__init__()
        self.folder = Path(folder)

    def save_best(self, trainer: pl.Trainer, pl_module: pl.LightningModule, what: object) -> None:
        if improved(pl_module.history["val/acc"]):
            trainer.save_checkpoint(self.folder / "best.ckpt")

    def save_last(self, trainer: pl.Trainer, pl_module: pl.LightningModule, what: object) -> None:
        trainer.save_checkpoint(self.folder / LAST)


def improved(accuracies: list[float]) -> bool:
    """Whether the latest validation accuracy beats every earlier one (the first always does)."""
    return bool(accuracies) and accuracies[-1] > max(accuracies[:-1], default=float("-inf"))


def load(path: Path) -> dict[str, Any]:
    """A checkpoint read on the CPU with ``weights_only=True`` (plain tensors and lists)."""
    return torch.load(path, map_location="cpu", weights_only=True)


def readable(folder: Path) -> tuple[Path, dict[str, Any]] | None:
    """The newest readable checkpoint of a run (``last.ckpt``, else ``prev.ckpt``) and its
    contents; an unreadable one is named in a one-line warning. None if neither reads."""
    last, previous = folder / LAST, folder / PREVIOUS
    problem = None
    for path in (last, previous):
        if not path.exists():
            continue
        try:
            ckpt = load(path)
        except Exception as e:  # noqa: BLE001 - any damage: truncated, garbage, not a zip
            problem = problem or f"{path} cannot be read ({type(e).__name__})"
            # kept aside (not loaded again, not rotated over the good one by the next save)
            path.replace(path.with_name(path.name + ".damaged"))
            continue
        if problem:
            warn(f"{problem}; resuming from {path} (step {ckpt.get('global_step')})")
        return path, ckpt
    if problem:
        warn(f"{problem} and no earlier checkpoint reads; the run starts over")
    return None


def at_step(folder: Path, step: int) -> dict[str, Any] | None:
    """The readable checkpoint of ``folder`` (last or previous) saved at ``step``, if any."""
    for path in (folder / LAST, folder / PREVIOUS):
        try:
            ckpt = load(path)
        except Exception:  # noqa: BLE001 - missing or damaged: not this one
            continue
        if ckpt.get("global_step") == step:
            return ckpt
    return None


def warn(message: str) -> None:
    print(f"warning: {message}", file=sys.stderr)

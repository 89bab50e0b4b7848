"""One LightningModule for every network, and the callback that feeds the BN dashboards."""

from __future__ import annotations

from collections.abc import Callable

import pytorch_lightning as pl
import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.optim import Optimizer
from torchmetrics import MaxMetric, MeanMetric
from torchmetrics.classification import MulticlassAccuracy
from torchmetrics.functional.classification import multiclass_accuracy

from bnsweep.nn import capture_preactivations, norm_layers


class LitClassifier(pl.LightningModule):
    """Logits + cross-entropy for any ``net``; logs ``train/``, ``val/`` and ``test/`` metrics.

    ``history`` keeps, per validation, the step, epoch and validation metrics, and per epoch the
    training metrics: the curves the sweep report draws.
    """

    def __init__(
        self, net: nn.Module, optimizer: Callable[..., Optimizer], num_classes: int = 10
    ) -> None:
        super().__init__()
        self.net = net
        self.optimizer_factory = optimizer
        self.num_classes = num_classes
        self.diverged_step: int | None = None  # the step whose loss was NaN or inf
        self.resumed_from_step: int | None = None
        self.val_acc = MulticlassAccuracy(num_classes, average="micro")
        self.test_acc = MulticlassAccuracy(num_classes, average="micro")
        self.val_loss, self.test_loss = MeanMetric(), MeanMetric()
        self.val_acc_best = MaxMetric()
        self.history: dict[str, list[float]] = {
            "val_step": [], "val_epoch": [], "val/acc": [], "val/loss": [],
            "train_epoch": [], "train/acc": [], "train/loss": [],
        }  # fmt: skip

    def forward(self, x: Tensor) -> Tensor:
        return self.net(x)

    def configure_optimizers(self) -> Optimizer:
        return self.optimizer_factory(self.parameters())

    def training_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> Tensor:
        x, y = batch
        logits = self.net(x)
        loss = F.cross_entropy(logits, y)
        if not torch.isfinite(loss):
            # divergence is a result: stop here, skip this update, let the run report it
            self.diverged_step = self.global_step
            self.trainer.should_stop = True
            return None
        # the functional form: a Metric object's forward copies its state every step
        acc = multiclass_accuracy(logits, y, self.num_classes, average="micro", validate_args=False)
        self.log("train/loss", loss, on_step=True, on_epoch=True, prog_bar=True)
        self.log("train/acc", acc, on_step=True, on_epoch=True, prog_bar=True)
        return loss

    def on_train_epoch_end(self) -> None:
        m = self.trainer.callback_metrics
        if "train/acc_epoch" in m:
            self.history["train_epoch"].append(self._epochs_done())
            self.history["train/acc"].append(float(m["train/acc_epoch"]))
            self.history["train/loss"].append(float(m["train/loss_epoch"]))

    def _eval_step(self, batch: tuple[Tensor, Tensor], acc: MulticlassAccuracy, loss: MeanMetric):
        x, y = batch
        logits = self.net(x)
        loss(F.cross_entropy(logits, y), weight=len(y))
        acc(logits, y)

    def validation_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> None:
        self._eval_step(batch, self.val_acc, self.val_loss)

    def on_validation_epoch_end(self) -> None:
        acc, loss = self.val_acc.compute(), self.val_loss.compute()
        self.val_acc.reset(), self.val_loss.reset()
        if self.trainer.sanity_checking:
            return
        self.val_acc_best(acc)
        self.log("val/acc", acc, prog_bar=True)
        self.log("val/loss", loss)
        self.log("val/acc_best", self.val_acc_best.compute())
        h = self.history
        h["val_step"].append(self.global_step)
        h["val_epoch"].append(self._epochs_done())
        h["val/acc"].append(float(acc))
        h["val/loss"].append(float(loss))

    def on_save_checkpoint(self, checkpoint: dict) -> None:
        # what a resumed run needs to continue exactly: its curves so far and the CPU RNG
        # (dropout masks); plain lists and tensors, loadable with weights_only=True
        checkpoint["bnsweep"] = {"history": self.history, "rng": torch.get_rng_state()}

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        self.resumed_from_step = checkpoint["global_step"]
        saved = checkpoint.get("bnsweep")
        if saved:
            self.history = saved["history"]
            torch.set_rng_state(saved["rng"])
            for acc in self.history["val/acc"]:
                self.val_acc_best(torch.tensor(acc))

    def _epochs_done(self) -> float:
        """Epochs of training so far, fractional when stopped or validated mid-epoch."""
        return self.global_step / max(self.trainer.num_training_batches, 1)

    def test_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> None:
        self._eval_step(batch, self.test_acc, self.test_loss)

    def on_test_epoch_end(self) -> None:
        self.log_dict({"test/acc": self.test_acc.compute(), "test/loss": self.test_loss.compute()})
        self.test_acc.reset(), self.test_loss.reset()


class BNStatsLogger(pl.Callback):
    """At each validation, log per BN layer the running mean / variance and the histogram of
    the pre-activations (the nonlinearity's input) on the first validation batch."""

    def on_validation_batch_start(self, trainer, pl_module, batch, batch_idx, dataloader_idx=0):
        if batch_idx == 0 and not trainer.sanity_checking:
            layers = [name.rsplit(".", 1)[0] for name in norm_layers(pl_module.net)]
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
        tb = next(
            (lg.experiment for lg in trainer.loggers if hasattr(lg.experiment, "add_histogram")),
            None,
        )
        if tb is None:
            return
        step = trainer.global_step
        for name, layer in norm_layers(pl_module.net).items():
            block = name.rsplit(".", 1)[0]
            if getattr(layer, "running_mean", None) is not None:
                tb.add_histogram(f"bn/{block}/running_mean", layer.running_mean, step)
                tb.add_histogram(f"bn/{block}/running_var", layer.running_var, step)
            if block in pre:
                tb.add_histogram(f"preact/{block}", pre[block].float().flatten(), step)

"""One LightningModule for every network, and the callback that feeds the BN dashboards."""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping

import pytorch_lightning as pl
import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.optim import Optimizer
from torchmetrics import MaxMetric, MeanMetric
from torchmetrics.classification import MulticlassAccuracy

from bnsweep.nn import block_names, capture_preactivations, norm_layers


class LitClassifier(pl.LightningModule):
    """Logits + cross-entropy for any ``net``; logs ``train/``, ``val/`` and ``test/`` metrics.

    ``history`` keeps, per validation, the step, epoch and validation metrics, and per epoch the
    training metrics: the curves the sweep report draws.

    ``compile`` runs the training forward (and so its backward) through ``torch.compile``.

    ``percentiles`` (``{layer: fc3, unit: 0, q: [15, 50, 85]}``) also records, at every
    validation, those percentiles of one unit's nonlinearity input (for a conv layer: one
    channel, all positions) over the whole validation set: the paper's Figure 1 (b, c).
    """

    def __init__(
        self,
        net: nn.Module,
        optimizer: Callable[..., Optimizer],
        num_classes: int = 10,
        percentiles: Mapping | None = None,
        compile: bool = False,
    ) -> None:
        super().__init__()
        self.net = net
        self.optimizer_factory = optimizer
        self.num_classes = num_classes
        self.diverged_step: int | None = None  # the step whose loss was NaN or inf
        self.resumed_from_step: int | None = None
        self.first_step_at: float | None = None  # time.time() when the first training step began
        self.val_acc = MulticlassAccuracy(num_classes, average="micro")
        self.test_acc = MulticlassAccuracy(num_classes, average="micro")
        self.val_loss, self.test_loss = MeanMetric(), MeanMetric()
        self.val_acc_best = MaxMetric()
        self.history: dict[str, list[float]] = {
            "val_step": [], "val_epoch": [], "val/acc": [], "val/loss": [],
            "train_epoch": [], "train/acc": [], "train/loss": [],
        }  # fmt: skip
        self.track = _percentile_spec(net, percentiles) if percentiles else None
        self._tracked: list[Tensor] = []
        self._epoch_sums: Tensor | None = None  # (Σ loss·n, Σ correct) of this epoch so far
        self._epoch_n = 0
        # trainer.compile: the training forward through torch.compile, the same parameters; kept
        # out of the module tree, so state dicts, hooks and evaluation use the plain network
        self._compiled: dict[str, Callable] = {"net": torch.compile(net)} if compile else {}
        if self.track:
            for key in self.track["keys"]:
                self.history[key] = []

    def forward(self, x: Tensor) -> Tensor:
        return self.net(x)

    def configure_optimizers(self) -> Optimizer:
        return self.optimizer_factory(self.parameters())

    def training_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> Tensor:
        if self.first_step_at is None:
            self.first_step_at = time.time()
        x, y = batch
        logits = self._compiled.get("net", self.net)(x)
        loss = F.cross_entropy(logits, y)
        if not torch.isfinite(loss):
            # divergence is a result: stop here, skip this update, let the run report it
            self.diverged_step = self.global_step
            self.trainer.should_stop = True
            return None
        # the epoch means, summed on the device without a host sync; Lightning's self.log costs
        # ~1.7 ms a call on a CPU (it moves its result state every call), so it runs only on
        # the steps the loggers write (trainer.log_every_n_steps)
        with torch.no_grad():
            correct = (logits.argmax(1) == y).sum()
            sums = torch.stack([loss.detach() * len(y), correct.to(loss.dtype)])
            self._epoch_sums = sums if self._epoch_sums is None else self._epoch_sums + sums
            self._epoch_n += len(y)
        every = self.trainer.log_every_n_steps
        if every and (self.global_step + 1) % every == 0 or self.trainer.fast_dev_run:
            self.log("train/loss_step", loss.detach(), prog_bar=True)
            self.log("train/acc_step", correct / len(y), prog_bar=True)
        return loss

    def on_train_epoch_end(self) -> None:
        if self._epoch_n:  # the batch-size-weighted means over the steps of this epoch
            loss, acc = (self._epoch_sums / self._epoch_n).tolist()
            self._epoch_sums, self._epoch_n = None, 0
            self.log_dict({"train/loss_epoch": loss, "train/acc_epoch": acc})
            self.history["train_epoch"].append(self._epochs_done())
            self.history["train/acc"].append(acc)
            self.history["train/loss"].append(loss)

    def _eval_step(
        self, y: Tensor, logits: Tensor, acc: MulticlassAccuracy, loss: MeanMetric
    ) -> None:
        loss(F.cross_entropy(logits, y), weight=len(y))
        acc(logits, y)

    def validation_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> None:
        x, y = batch
        if self.track is None:
            logits = self.net(x)
        else:
            layer, unit = self.track["layer"], self.track["unit"]
            with capture_preactivations(self.net, [layer]) as pre:
                logits = self.net(x)
            self._tracked.append(pre[layer][:, unit].flatten())
        self._eval_step(y, logits, self.val_acc, self.val_loss)

    def on_validation_epoch_end(self) -> None:
        acc, loss = self.val_acc.compute(), self.val_loss.compute()
        self.val_acc.reset(), self.val_loss.reset()
        if self.trainer.sanity_checking:
            self._tracked = []  # Lightning's sanity check is no validation of the run
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
        if self.track is not None and self._tracked:
            values = torch.cat(self._tracked).float()
            self._tracked = []
            q = torch.tensor(self.track["q"], device=values.device) / 100
            for key, v in zip(self.track["keys"], torch.quantile(values, q).tolist()):
                h[key].append(v)
                self.log(key, v)

    def on_save_checkpoint(self, checkpoint: dict) -> None:
        # what a resumed run needs to continue exactly: its curves so far and the CPU RNG
        # (dropout masks); plain lists and tensors, loadable with weights_only=True
        checkpoint["bnsweep"] = {
            "history": self.history,
            "rng": torch.get_rng_state(),
            "epoch_sums": self._epoch_sums,  # a run saved mid-epoch keeps its epoch means whole
            "epoch_n": self._epoch_n,
        }

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        self.resumed_from_step = checkpoint["global_step"]
        saved = checkpoint.get("bnsweep")
        if saved:
            self.history = saved["history"]
            torch.set_rng_state(saved["rng"])
            self._epoch_sums, self._epoch_n = saved.get("epoch_sums"), saved.get("epoch_n", 0)
            for acc in self.history["val/acc"]:
                self.val_acc_best(torch.tensor(acc))

    def _epochs_done(self) -> float:
        """Epochs of training so far, fractional when stopped or validated mid-epoch."""
        return self.global_step / max(self.trainer.num_training_batches, 1)

    def test_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> None:
        x, y = batch
        self._eval_step(y, self.net(x), self.test_acc, self.test_loss)

    def on_test_epoch_end(self) -> None:
        self.log_dict({"test/acc": self.test_acc.compute(), "test/loss": self.test_loss.compute()})
        self.test_acc.reset(), self.test_loss.reset()


def _percentile_spec(net: nn.Module, spec: Mapping) -> dict:
    """Check a ``percentiles`` config against the network; the history keys it will fill."""
    layer, unit, q = spec.get("layer"), spec.get("unit", 0), list(spec.get("q", (15, 50, 85)))
    names = block_names(net)
    if layer not in names:
        raise ValueError(f"percentiles.layer must be one of {names}, got {layer!r}")
    affine = net.get_submodule(f"{layer}.affine")
    width = getattr(affine, "out_features", None) or getattr(affine, "out_channels", None)
    if not isinstance(unit, int) or isinstance(unit, bool) or not 0 <= unit < width:
        raise ValueError(f"percentiles.unit must be an integer in [0, {width - 1}], got {unit!r}")
    if not q or not all(isinstance(v, (int, float)) and 0 <= v <= 100 for v in q):
        raise ValueError(f"percentiles.q must be a list of numbers in [0, 100], got {q!r}")
    return {
        "layer": layer,
        "unit": unit,
        "q": [float(v) for v in q],
        "keys": [f"preact/{layer}_u{unit}/p{v:g}" for v in q],
    }


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

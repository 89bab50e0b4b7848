"""One LightningModule for every network: its training step, evaluations (PreciseBN, the tracked
unit, divergence), checkpoint payload and history. Dashboards: bnsweep.run.dashboards; loss sums:
bnsweep.run.losses."""

from __future__ import annotations

import itertools
import time
from collections.abc import Callable, Iterable, Mapping

import pytorch_lightning as pl
import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.optim import Optimizer
from torchmetrics import MaxMetric
from torchmetrics.classification import MulticlassAccuracy

from bnsweep.nn import (
    batch_norms,
    capture_preactivations,
    recompute_population_stats,
)
from bnsweep.nn.probes import KEYS as PROBE_KEYS
from bnsweep.nn.probes import probe_landscape
from bnsweep.run.dashboards import percentile_spec, tensorboard_of, unit_percentiles
from bnsweep.run.losses import Sums
from bnsweep.run.ranks import agreed


class LitClassifier(pl.LightningModule):
    """Logits + cross-entropy for any ``net``; logs ``train/``, ``val/`` and ``test/`` metrics.

    ``history`` keeps, per validation, the step, epoch and validation metrics, and per epoch the
    training metrics: the curves the sweep report draws.

    ``compile`` runs the training forward (and so its backward) through ``torch.compile``.

    ``percentiles`` (``{layer: fc3, unit: 0, q: [15, 50, 85]}``) also records, at every
    validation, those percentiles of one unit's nonlinearity input (for a conv layer: one
    channel, all positions) over the whole validation set: the paper's Figure 1 (b, c).

    ``precise`` (``{batches: K, evaluate: running}``) is PreciseBN (Wu & Johnson 2021): before
    each validation and before the test the BN layers' statistics are recomputed with the
    weights frozen over K training batches (``all``: an epoch), and every evaluated batch is
    scored with both sets of statistics: ``val/acc`` and ``test/acc`` with those ``evaluate``
    names, ``val/acc_<other>`` and ``test/acc_<other>`` with the others. The statistics the
    layers keep in training are restored after each recomputation, and the recomputation draws
    no random number, so training computes exactly what it computes without it.

    ``probes`` (``{every: k, steps: [0.05, …, 0.4]}``): every k training steps (from step 0),
    the loss-landscape probes of ``bnsweep.nn.probes`` along the step's gradient at η = m·lr
    for m in ``steps``, on the step's batch with its dropout masks, before the optimizer steps;
    into the history (``probe_step``, ``probe/<key>``) and TensorBoard. They probe a copy of the
    network and leave the RNG as it was: training computes exactly what it computes without.
    """

    def __init__(
        self,
        net: nn.Module,
        optimizer: Callable[..., Optimizer],
        num_classes: int = 10,
        percentiles: Mapping | None = None,
        compile: bool = False,
        precise: Mapping | None = None,
        probes: Mapping | None = None,
    ) -> None:
        super().__init__()
        self.net = net
        self.optimizer_factory = optimizer
        self.num_classes = num_classes
        self.diverged_step: int | None = None  # the step whose loss was NaN or inf
        self.resumed_from_step: int | None = None
        self.first_step_at: float | None = None  # time.time() when the first training step began
        self.fit_done = False  # training has ended: a checkpoint saved now is the final state
        self.val_acc = MulticlassAccuracy(num_classes, average="micro")
        self.test_acc = MulticlassAccuracy(num_classes, average="micro")
        self.val_loss, self.test_loss = Sums(), Sums()
        self.val_acc_best = MaxMetric()
        self.track = percentile_spec(net, percentiles) if percentiles else None
        self.probes = dict(probes) if probes and probes.get("every") else None
        self.history = new_history(self.track, self.probes is not None)
        self._probe_batch: tuple | None = None  # (x, y, the RNG states its forward began with)
        self._tracked: list[Tensor] = []
        self.epoch_sums = Sums()  # (2,): Σ loss·n, Σ correct
        self.precise = dict(precise) if precise and precise.get("batches") is not None else None
        if self.precise is not None:
            self.other = "precise" if self.precise["evaluate"] == "running" else "running"
            self.val_acc_other = MulticlassAccuracy(num_classes, average="micro")
            self.test_acc_other = MulticlassAccuracy(num_classes, average="micro")
        # while evaluating with PreciseBN: the statistics buffers, and their values by name
        # ("running": the training's, "precise": recomputed)
        self._eval_stats: tuple[list[Tensor], dict[str, list[Tensor]]] | None = None
        # trainer.compile: the training forward through torch.compile, the same parameters; kept
        # out of the module tree, so state dicts, hooks and evaluation use the plain network
        self._compiled: dict[str, Callable] = {"net": torch.compile(net)} if compile else {}

    def forward(self, x: Tensor) -> Tensor:
        return self.net(x)

    def configure_optimizers(self) -> Optimizer:
        return self.optimizer_factory(self.parameters())

    def training_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> Tensor:
        if self.first_step_at is None:
            self.first_step_at = time.time()
        x, y = batch
        self._probe_batch = None
        if self.probes is not None and self.global_step % self.probes["every"] == 0:
            cuda = torch.cuda.get_rng_state(x.device) if x.device.type == "cuda" else None
            self._probe_batch = (x, y, (torch.get_rng_state(), cuda))
        logits = self._compiled.get("net", self.net)(x)
        loss = F.cross_entropy(logits, y)
        if not agreed(torch.isfinite(loss)):  # (several processes: on every rank)
            # divergence is a result: stop here, skip this update, let the run report it
            self.diverged_step = self.global_step
            self.trainer.should_stop = True
            return None
        # the epoch means, summed on the device without a host sync; Lightning's self.log is
        # costly on a CPU (it moves its result state every call), so it runs only on the steps
        # the loggers write (trainer.log_every_n_steps)
        with torch.no_grad():
            correct = (logits.argmax(1) == y).sum()
            sums = torch.stack([loss.detach() * len(y), correct.to(loss.dtype)])
            self.epoch_sums.add(sums, len(y))
        if logging_step(self):
            self.log("train/loss_step", loss.detach(), prog_bar=True)
            self.log("train/acc_step", correct / len(y), prog_bar=True)
        return loss

    def on_before_optimizer_step(self, optimizer: Optimizer) -> None:
        if self._probe_batch is None:
            return
        x, y, rng = self._probe_batch
        self._probe_batch = None
        lr = optimizer.param_groups[0]["lr"]
        grads = [p.grad for p in self.net.parameters()]
        found = probe_landscape(self.net, F.cross_entropy, x, y, grads,
                                [m * lr for m in self.probes["steps"]], rng)  # fmt: skip
        self.history["probe_step"].append(self.global_step)
        for key in PROBE_KEYS:
            self.history[f"probe/{key}"].append(found[key])
        tb = tensorboard_of(self.trainer)
        if tb is not None:
            for key, value in (("loss_range", found["loss_max"] - found["loss_min"]),
                               ("grad_change_max", found["grad_change_max"]), ("beta", found["beta"])):  # fmt: skip
                tb.add_scalar(f"probe/{key}", value, self.global_step)

    def on_train_epoch_end(self) -> None:
        if self.epoch_sums.n:  # the batch-size-weighted means over the steps of this epoch
            loss, acc = self.epoch_sums.reduce((2,)).take().tolist()
            self.log_dict({"train/loss_epoch": loss, "train/acc_epoch": acc})
            self.history["train_epoch"].append(self._epochs_done())
            self.history["train/acc"].append(acc)
            self.history["train/loss"].append(loss)

    def _eval_step(self, y: Tensor, logits: Tensor, acc: MulticlassAccuracy, loss: Sums) -> None:
        loss.add_mean(F.cross_entropy(logits, y), len(y))
        acc(logits, y)

    def _scored(self, x: Tensor, y: Tensor, other_acc: MulticlassAccuracy | None) -> Tensor:
        """The logits of x with the headline statistics; with PreciseBN x is also scored with
        the other statistics, into ``other_acc``."""
        if self._eval_stats is None:
            return self.net(x)
        buffers, sets = self._eval_stats
        _load(buffers, sets[self.other])
        other_acc(self.net(x), y)
        _load(buffers, sets[self.precise["evaluate"]])
        return self.net(x)

    def _recompute(self) -> None:
        """PreciseBN's statistics, computed now; the training's kept aside to be restored."""
        if self.precise is None:
            return
        buffers = _stat_buffers(self.net)
        running = _copy(buffers)
        recompute_population_stats(self.net, self.precise_batches())
        self._eval_stats = (buffers, {"running": running, "precise": _copy(buffers)})
        _load(buffers, running)

    def _restore(self) -> None:
        if self._eval_stats is not None:  # the training's statistics, as they were
            buffers, sets = self._eval_stats
            _load(buffers, sets["running"])
            self._eval_stats = None

    def precise_batches(self) -> Iterable:
        """PreciseBN's K training batches: the first K of the first epoch's order (the same at
        every validation and after a resume), from a loader of their own (the training's order
        and the RNGs are not touched)."""
        loader = self.trainer.datamodule.train_dataloader()
        k = self.precise["batches"]
        return loader if k == "all" else itertools.islice(loader, k)

    def on_validation_epoch_start(self) -> None:
        if not self.trainer.sanity_checking:
            self._recompute()

    def validation_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> None:
        x, y = batch
        other = self.val_acc_other if self.precise is not None else None
        if self.track is None:
            logits = self._scored(x, y, other)
        else:
            layer, unit = self.track["layer"], self.track["unit"]
            with capture_preactivations(self.net, [layer]) as pre:
                logits = self._scored(x, y, other)
            self._tracked.append(pre[layer][:, unit].flatten())
        self._eval_step(y, logits, self.val_acc, self.val_loss)

    def on_validation_epoch_end(self) -> None:
        self._restore()
        acc, loss = self.val_acc.compute(), self.val_loss.reduce().take()
        self.val_acc.reset()
        if self.precise is not None:
            other_acc = self.val_acc_other.compute()
            self.val_acc_other.reset()
        if self.trainer.sanity_checking:
            self._tracked = []  # Lightning's sanity check is no validation of the run
            return
        if self.diverged_step is None and not agreed(
            torch.isfinite(loss) and stats_finite(self.net)
        ):
            # a NaN or infinite evaluation (or running statistic) is divergence too: a result,
            # recorded at this step, and the run stops here as for a non-finite training loss
            self.diverged_step = self.global_step
            self.trainer.should_stop = True
        self.val_acc_best(acc)
        self.log("val/acc", acc, prog_bar=True)
        self.log("val/loss", loss)
        self.log("val/acc_best", self.val_acc_best.compute())
        h = self.history
        h["val_step"].append(self.global_step)
        h["val_epoch"].append(self._epochs_done())
        h["val/acc"].append(float(acc))
        h["val/loss"].append(float(loss))
        if self.precise is not None:
            key = f"val/acc_{self.other}"
            h.setdefault(key, []).append(float(other_acc))
            self.log(key, other_acc)
        if self.track is not None and self._tracked:
            values = torch.cat(self._tracked)
            self._tracked = []
            (quantiles,) = unit_percentiles(values[None], self.track["q"])
            for key, v in zip(self.track["keys"], quantiles):
                h[key].append(v)
                self.log(key, v)

    def on_fit_start(self) -> None:
        self.epoch_sums.to(self.device)

    def on_save_checkpoint(self, checkpoint: dict) -> None:
        # what a resumed run needs to continue exactly: its curves so far and the RNG its
        # dropout masks come from (the CPU's, and the GPU's when training there); plain lists
        # and tensors, loadable with weights_only=True
        checkpoint["bnsweep"] = payload(self, torch.get_rng_state())
        if self.device.type == "cuda":
            checkpoint["bnsweep"]["cuda_rng"] = torch.cuda.get_rng_state(self.device)

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        self.resumed_from_step = checkpoint["global_step"]
        saved = checkpoint.get("bnsweep")
        if saved:
            self.history = saved["history"]
            torch.set_rng_state(saved["rng"])
            if "cuda_rng" in saved and torch.cuda.is_available():  # resumed on a GPU, or not
                torch.cuda.set_rng_state(saved["cuda_rng"])
            self.epoch_sums.load(saved)
            self.fit_done = saved.get("fit_done", False)
            self.diverged_step = saved.get("diverged_step", self.diverged_step)
            for acc in self.history["val/acc"]:
                self.val_acc_best(torch.tensor(acc))

    def restore(self, checkpoint: dict) -> None:
        """The weights and bookkeeping of a checkpoint, without a Trainer (a run whose training
        had ended: only its test is left)."""
        self.load_state_dict(checkpoint["state_dict"])
        self.on_load_checkpoint(checkpoint)

    def _epochs_done(self) -> float:
        """Epochs of training so far, fractional when stopped or validated mid-epoch."""
        return self.global_step / max(self.trainer.num_training_batches, 1)

    def on_test_epoch_start(self) -> None:
        self._recompute()

    def test_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> None:
        x, y = batch
        other = self.test_acc_other if self.precise is not None else None
        self._eval_step(y, self._scored(x, y, other), self.test_acc, self.test_loss)

    def on_test_epoch_end(self) -> None:
        self._restore()
        self.log_dict({"test/acc": self.test_acc.compute(),
                       "test/loss": self.test_loss.reduce().take()})  # fmt: skip
        self.test_acc.reset()
        if self.precise is not None:
            self.log(f"test/acc_{self.other}", self.test_acc_other.compute())
            self.test_acc_other.reset()


def stats_finite(net: nn.Module, members: int = 1) -> bool | list[bool]:
    """Whether every running statistic of the network's BN layers is finite; with ``members``
    > 1 (a stacked network, member-blocked channels), per member."""
    ok = torch.ones(members, dtype=torch.bool)
    for m in batch_norms(net).values():
        for t in (m.running_mean, m.running_var):
            ok &= torch.isfinite(t.detach().view(members, -1)).all(1).cpu()
    return bool(ok[0]) if members == 1 else ok.tolist()


def _stat_buffers(net: nn.Module) -> list[Tensor]:
    """Every buffer of the layers that keep inference statistics (running mean and variance,
    the batch count, an estimator's own)."""
    return [b for m in batch_norms(net).values() for b in m.buffers(recurse=False) if b is not None]


def _copy(buffers: list[Tensor]) -> list[Tensor]:
    return [b.detach().clone() for b in buffers]


def _load(buffers: list[Tensor], values: list[Tensor]) -> None:
    for b, v in zip(buffers, values):
        b.copy_(v)


def payload(module: pl.LightningModule, rng: Tensor | list[Tensor], **extra: object) -> dict:
    """What a checkpoint keeps beside the weights for a resume to continue exactly: the
    curves so far, the RNG state the dropout masks come from, the epoch sums, whether
    training had ended and where the run (each member) diverged. Plain lists and tensors,
    loadable with weights_only=True."""
    return {"history": module.history, "rng": rng, **module.epoch_sums.state(),
            "diverged_step": module.diverged_step, "fit_done": module.fit_done, **extra}  # fmt: skip


def logging_step(module: pl.LightningModule) -> bool:
    """Whether this training step is one the loggers write (trainer.log_every_n_steps)."""
    every, trainer = module.trainer.log_every_n_steps, module.trainer
    return bool(every and (module.global_step + 1) % every == 0 or trainer.fast_dev_run)


def new_history(track: dict | None, probes: bool = False) -> dict[str, list[float]]:
    h: dict[str, list[float]] = {
        "val_step": [], "val_epoch": [], "val/acc": [], "val/loss": [],
        "train_epoch": [], "train/acc": [], "train/loss": [],
    }  # fmt: skip
    for key in track["keys"] if track else ():
        h[key] = []
    if probes:
        h["probe_step"] = []
        for key in PROBE_KEYS:
            h[f"probe/{key}"] = []
    return h

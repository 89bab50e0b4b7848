"""One LightningModule for every network, and the callback that feeds the BN dashboards."""

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
    Block,
    batch_norms,
    capture_preactivations,
    norm_layers,
    recompute_population_stats,
)
from bnsweep.nn.layers import layer_names
from bnsweep.nn.probes import KEYS as PROBE_KEYS
from bnsweep.nn.probes import probe_landscape


class LossSums:
    """An evaluation's mean loss over its images: Σ (batch mean loss · batch size) / images,
    summed in float32 batch by batch (a vectorized job sums its members' the same way, so each
    member's loss is its independent run's to the bit). A NaN or inf loss stays in the mean.

    (torchmetrics' MeanMetric, used before, drops ``weight`` when ``nan_strategy="disable"``:
    its mean was the plain mean of the batch means, biased by a smaller last batch.)"""

    def __init__(self) -> None:
        self.sum: Tensor | None = None
        self.n = 0

    def add(self, loss: Tensor, n: int) -> None:
        part = loss.detach() * n
        self.sum = part if self.sum is None else self.sum + part
        self.n += n

    def mean(self) -> Tensor:
        """The mean (a float32 tensor), and the sums reset for the next evaluation."""
        out = self.sum / self.n if self.n else torch.tensor(float("nan"))
        self.sum, self.n = None, 0
        return out


class EpochSums:
    """Σ loss·n and Σ correct over the steps of this epoch so far, summed on the device (no
    host sync a step): (2,) for one run, (S, 2) for S members. Kept in checkpoints, so that a
    run saved mid-epoch keeps its epoch means whole."""

    def __init__(self) -> None:
        self.sums: Tensor | None = None
        self.n = 0

    def add(self, sums: Tensor, n: int) -> None:
        self.sums = sums if self.sums is None else self.sums + sums
        self.n += n

    def means(self) -> list:
        """[loss, acc] (per member: [[loss, acc], …]), batch-size-weighted over the steps."""
        return (self.sums / self.n).tolist()

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
        self.val_loss, self.test_loss = LossSums(), LossSums()
        self.val_acc_best = MaxMetric()
        self.track = percentile_spec(net, percentiles) if percentiles else None
        self.probes = dict(probes) if probes and probes.get("every") else None
        self.history = new_history(self.track, self.probes is not None)
        self._probe_batch: tuple | None = None  # (x, y, the RNG states its forward began with)
        self._tracked: list[Tensor] = []
        self.epoch_sums = EpochSums()
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
        if not torch.isfinite(loss):
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
            loss, acc = self.epoch_sums.means()
            self.epoch_sums.clear()
            self.log_dict({"train/loss_epoch": loss, "train/acc_epoch": acc})
            self.history["train_epoch"].append(self._epochs_done())
            self.history["train/acc"].append(acc)
            self.history["train/loss"].append(loss)

    def _eval_step(
        self, y: Tensor, logits: Tensor, acc: MulticlassAccuracy, loss: LossSums
    ) -> None:
        loss.add(F.cross_entropy(logits, y), len(y))
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
        acc, loss = self.val_acc.compute(), self.val_loss.mean()
        self.val_acc.reset()
        if self.precise is not None:
            other_acc = self.val_acc_other.compute()
            self.val_acc_other.reset()
        if self.trainer.sanity_checking:
            self._tracked = []  # Lightning's sanity check is no validation of the run
            return
        if self.diverged_step is None and not (torch.isfinite(loss) and stats_finite(self.net)):
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
        self.log_dict({"test/acc": self.test_acc.compute(), "test/loss": self.test_loss.mean()})
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


def unit_percentiles(values: Tensor, q: list[float]) -> list[list[float]]:
    """Per row of ``values`` (S, n): one member's values of the tracked unit over the whole
    validation set, its ``q`` percentiles (the paper's Figure 1 (b, c))."""
    qs = torch.tensor(q, device=values.device) / 100
    return torch.quantile(values.float(), qs, dim=1).T.tolist()


def payload(module: pl.LightningModule, rng: Tensor | list[Tensor], **extra: object) -> dict:
    """What a checkpoint keeps beside the weights for a resume to continue exactly: the
    curves so far, the RNG state the dropout masks come from, the epoch sums, whether
    training had ended and where the run (each member) diverged. Plain lists and tensors,
    loadable with weights_only=True."""
    return {"history": module.history, "rng": rng, **module.epoch_sums.state(),
            "diverged_step": module.diverged_step, "fit_done": module.fit_done, **extra}  # fmt: skip


def percentile_spec(net: nn.Module, spec: Mapping) -> dict:
    """Check a ``percentiles`` config against the network; the history keys it will fill."""
    layer, unit, q = spec.get("layer"), spec.get("unit", 0), list(spec.get("q", (15, 50, 85)))
    try:
        module = net.get_submodule(layer) if isinstance(layer, str) and layer else None
    except AttributeError:
        module = None
    if module is None:
        raise ValueError(f"percentiles.layer must name a layer of the network, e.g. "
                         f"{layer_names(net)}, got {layer!r}")  # fmt: skip
    width = channels_of(module)  # None: the pre-flight check reads it from the output
    if not isinstance(unit, int) or isinstance(unit, bool) or not 0 <= unit < (width or unit + 1):
        raise ValueError(f"percentiles.unit must be an integer in [0, {(width or 1) - 1}], got {unit!r}")
    if not q or not all(isinstance(v, (int, float)) and 0 <= v <= 100 for v in q):
        raise ValueError(f"percentiles.q must be a list of numbers in [0, 100], got {q!r}")
    return {
        "layer": layer,
        "unit": unit,
        "q": [float(v) for v in q],
        "keys": [f"preact/{layer}_u{unit}/p{v:g}" for v in q],
    }


def channels_of(module: nn.Module) -> int | None:
    """The channels (units) of a layer's output: a block's affine layer's, a conv's, a linear
    layer's, a normalisation layer's; None where the module does not say."""
    if isinstance(module, Block):
        module = module.affine
    for key in ("out_features", "out_channels", "num_features", "num_channels"):
        if isinstance(getattr(module, key, None), int):
            return getattr(module, key)
    return None


def dashboard_layers(net: nn.Module) -> dict[str, str]:
    """Normalisation layer name -> the name whose pre-activations its dashboard shows: a
    block's (its nonlinearity's input) for the layers of bnsweep's own blocks, the layer's own
    (its output) in any other network; found by type, in any network."""
    out = {}
    for name in norm_layers(net):
        parent = name.rsplit(".", 1)[0] if "." in name else ""
        out[name] = parent if parent and isinstance(net.get_submodule(parent), Block) else name
    return out


class BNStatsLogger(pl.Callback):
    """At each validation, log per BN layer the running mean / variance and the histogram of
    the pre-activations (the nonlinearity's input) on the first validation batch."""

    def on_validation_batch_start(self, trainer, pl_module, batch, batch_idx, dataloader_idx=0):
        if batch_idx == 0 and not trainer.sanity_checking:
            layers = list(dict.fromkeys(dashboard_layers(pl_module.net).values()))
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
        tb = tensorboard_of(trainer)
        if tb is None:
            return
        bn_dashboards(tb, pl_module.net, pre, trainer.global_step)


def tensorboard_of(trainer: pl.Trainer):  # noqa: ANN201 (a SummaryWriter or None)
    """The run's TensorBoard writer, None without a TensorBoard logger."""
    return next(
        (lg.experiment for lg in trainer.loggers if hasattr(lg.experiment, "add_histogram")), None
    )


def bn_dashboards(tb, net: nn.Module, pre: Mapping[str, Tensor], step: int, member: int = 0,
                  members: int = 1) -> None:  # noqa: ANN001 (a SummaryWriter)  # fmt: skip
    """Per BN layer of ``net``, the histograms of its running mean and variance and of its
    block's pre-activations ``pre`` (the nonlinearity's input on one validation batch); of
    member ``member`` where ``net`` stacks ``members`` (member-blocked channels)."""
    shown = dashboard_layers(net)
    for name, layer in norm_layers(net).items():
        block = shown[name]
        if getattr(layer, "running_mean", None) is not None:
            mean, var = layer.running_mean.view(members, -1), layer.running_var.view(members, -1)
            histogram(tb, f"bn/{block}/running_mean", mean[member], step)
            histogram(tb, f"bn/{block}/running_var", var[member], step)
        if block in pre:
            histogram(tb, f"preact/{block}", pre[block].unflatten(1, (members, -1))[:, member], step)


def histogram(tb, tag: str, values: Tensor, step: int) -> None:  # noqa: ANN001 (SummaryWriter)
    """A histogram of the finite values; none when there are none (a diverged network's NaN
    statistics): bnsweep's EventWriter leaves the others out itself."""
    tb.add_histogram(tag, values.detach(), step)


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



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
        self.fit_done = False  # training has ended: a checkpoint saved now is the final state
        self.val_acc = MulticlassAccuracy(num_classes, average="micro")
        self.test_acc = MulticlassAccuracy(num_classes, average="micro")
        # a diverged network's NaN loss stays NaN (the default drops NaN values with a warning)
        self.val_loss, self.test_loss = MeanMetric(nan_strategy="disable"), MeanMetric(nan_strategy="disable")
        self.val_acc_best = MaxMetric()
        self.track = _percentile_spec(net, percentiles) if percentiles else None
        self.history = _new_history(self.track)
        self._tracked: list[Tensor] = []
        self._sums = EpochSums()
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
            self._sums.add(sums, len(y))
        if _logging_step(self):
            self.log("train/loss_step", loss.detach(), prog_bar=True)
            self.log("train/acc_step", correct / len(y), prog_bar=True)
        return loss

    def on_train_epoch_end(self) -> None:
        if self._sums.n:  # the batch-size-weighted means over the steps of this epoch
            loss, acc = self._sums.means()
            self._sums.clear()
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

    def on_fit_start(self) -> None:
        self._sums.to(self.device)

    def on_save_checkpoint(self, checkpoint: dict) -> None:
        # what a resumed run needs to continue exactly: its curves so far and the RNG its
        # dropout masks come from (the CPU's, and the GPU's when training there); plain lists
        # and tensors, loadable with weights_only=True
        checkpoint["bnsweep"] = {
            "history": self.history,
            "rng": torch.get_rng_state(),
            **self._sums.state(),
            "fit_done": self.fit_done,
            "diverged_step": self.diverged_step,
        }
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
            self._sums.load(saved)
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
        bn_dashboards(tb, pl_module.net, pre, trainer.global_step)


def bn_dashboards(tb, net: nn.Module, pre: Mapping[str, Tensor], step: int, member: int = 0,
                  members: int = 1) -> None:  # noqa: ANN001 (a SummaryWriter)  # fmt: skip
    """Per BN layer of ``net``, the histograms of its running mean and variance and of its
    block's pre-activations ``pre`` (the nonlinearity's input on one validation batch); of
    member ``member`` where ``net`` stacks ``members`` (member-blocked channels)."""
    for name, layer in norm_layers(net).items():
        block = name.rsplit(".", 1)[0]
        if getattr(layer, "running_mean", None) is not None:
            mean, var = layer.running_mean.view(members, -1), layer.running_var.view(members, -1)
            histogram(tb, f"bn/{block}/running_mean", mean[member], step)
            histogram(tb, f"bn/{block}/running_var", var[member], step)
        if block in pre:
            histogram(tb, f"preact/{block}", pre[block].unflatten(1, (members, -1))[:, member], step)


def histogram(tb, tag: str, values: Tensor, step: int) -> None:  # noqa: ANN001 (SummaryWriter)
    """A histogram of the finite values; none when there are none (a diverged network's NaN
    statistics would make TensorBoard raise)."""
    values = values.detach().float().flatten()
    values = values[torch.isfinite(values)]
    if values.numel():
        tb.add_histogram(tag, values, step)


def _logging_step(module: pl.LightningModule) -> bool:
    """Whether this training step is one the loggers write (trainer.log_every_n_steps)."""
    every, trainer = module.trainer.log_every_n_steps, module.trainer
    return bool(every and (module.global_step + 1) % every == 0 or trainer.fast_dev_run)


def _new_history(track: dict | None) -> dict[str, list[float]]:
    h: dict[str, list[float]] = {
        "val_step": [], "val_epoch": [], "val/acc": [], "val/loss": [],
        "train_epoch": [], "train/acc": [], "train/loss": [],
    }  # fmt: skip
    for key in track["keys"] if track else ():
        h[key] = []
    return h


class LitMembers(pl.LightningModule):
    """The seeds of one sweep point as one LightningModule over a ``StackedNet``.

    Per member it computes what ``LitClassifier`` computes for an independent run: the loss is
    the sum of the members' mean losses (gradients do not mix), and the training, validation
    and test metrics, the history, the divergence step and the percentiles are kept per member.
    Batches are member-blocked: x (N, S·C, …) with each member's own images, y (N, S).

    ``loggers[m]`` are member m's own loggers (its run folder's TensorBoard and CSV), written
    here with the metric names and steps an independent run logs. A member whose loss turns
    NaN or inf is frozen: left out of the loss from then on, its weights and BN statistics put
    back after every step, so the others train on undisturbed.
    """

    def __init__(
        self,
        net: nn.Module,  # a bnsweep.nn.StackedNet
        optimizer: Callable[..., Optimizer],
        seeds: list[int],
        loggers: list[list] | None = None,
        percentiles: Mapping | None = None,
        template: nn.Module | None = None,  # one member's plain network (percentile checks)
    ) -> None:
        super().__init__()
        self.net = net
        self.optimizer_factory = optimizer
        self.seeds = list(seeds)
        s = len(self.seeds)
        self.member_loggers = loggers or [[] for _ in range(s)]
        self.track = _percentile_spec(template, percentiles) if percentiles else None
        self.history = [_new_history(self.track) for _ in range(s)]
        self.diverged_step: list[int | None] = [None] * s
        self.frozen: dict[int, dict[str, Tensor]] = {}  # member -> its weights and statistics
        self.fit_done = False  # training has ended: a checkpoint saved now is the final state
        self.restored_step: int | None = None  # the step of a final state restored (no fit)
        self.resumed_from_step: int | None = None
        self.first_step_at: float | None = None
        self.final_validation = False  # the run's last validation: diverged members report too
        self._sums = EpochSums()  # (S, 2): Σ loss·n, Σ correct per member
        self._eval: list[Tensor] = []  # per batch (S, 2): Σ loss·n, Σ correct
        self._eval_n = 0
        self._tracked: list[Tensor] = []  # per batch (S, values) of the tracked unit
        self.validated_now: list[int] = []  # members that recorded the latest validation
        self.test_metrics: list[tuple[float, float]] = []  # per member (acc, loss)
        self._saved_rng: list[Tensor] | None = None  # generator states read from a checkpoint

    def on_fit_start(self) -> None:
        # dropout masks are drawn where the activations are: on a GPU from per-member CUDA
        # generators seeded as seed_everything seeds an independent run's CUDA RNG (torch's fused
        # CUDA dropout draws differently, so there the masks are the member's own, not the bits
        # of an independent run's). Runs after the model moved and a checkpoint was read.
        self._sums.to(self.device)
        gens = self.net.generators
        if gens and gens[0].device != self.device:
            gens[:] = [torch.Generator(self.device).manual_seed(s) for s in self.seeds]
        if self._saved_rng is not None:
            for g, state in zip(gens, self._saved_rng):
                g.set_state(state)
            self._saved_rng = None

    @property
    def members(self) -> int:
        return len(self.seeds)

    def forward(self, x: Tensor) -> Tensor:
        return self.net(x)

    def configure_optimizers(self) -> Optimizer:
        return self.optimizer_factory(self.parameters())

    def active(self) -> list[int]:
        return [m for m in range(self.members) if m not in self.frozen]

    # ---- training ---------------------------------------------------------------------------

    def training_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> Tensor | None:
        if self.first_step_at is None:
            self.first_step_at = time.time()
        x, y = batch
        logits = self.net(x)  # (N, S, K)
        # one cross-entropy per member: each is the independent run's loss, bit for bit
        losses = torch.stack([F.cross_entropy(logits[:, m], y[:, m]) for m in range(self.members)])
        finite = torch.isfinite(losses).tolist()
        for m in self.active():
            if not finite[m]:
                self._freeze(m)
        active = self.active()
        if not active:
            self.trainer.should_stop = True
            return None
        n = len(y)
        with torch.no_grad():
            correct = (logits.argmax(2) == y).sum(0)  # (S,)
            sums = torch.stack([losses.detach() * n, correct.to(losses.dtype)], 1)  # (S, 2)
            self._sums.add(sums, n)
        if _logging_step(self):
            values = torch.stack([losses.detach(), correct / n], 1).tolist()
            for m in active:
                loss, acc = values[m]
                self._log(m, {"train/loss_step": loss, "train/acc_step": acc})
        return losses[active].sum()

    def _freeze(self, m: int) -> None:
        """Member m diverged at this step: as an independent run it stops here (this step's
        update skipped, its BN statistics of this batch kept), reporting its epoch so far.
        Lightning counts the skipped step, so the run ends at step ``diverged_step + 1``."""
        self.diverged_step[m] = self.global_step
        self.frozen[m] = {k: v.detach().clone() for k, v in self._member_views(m).items()}
        self._record_epoch([m])

    def _member_views(self, m: int) -> dict[str, Tensor]:
        from bnsweep.nn.stacked import member_view

        return {
            k: member_view(t, k, m, self.members)
            for k, t in self.net.net.state_dict(keep_vars=True).items()
            if t.dim() > 0
        }

    def on_train_batch_end(self, outputs, batch, batch_idx: int) -> None:
        with torch.no_grad():  # the frozen members' weights and statistics, put back
            for m, saved in self.frozen.items():
                for k, view in self._member_views(m).items():
                    view.detach().copy_(saved[k])

    def on_train_epoch_end(self) -> None:
        self._record_epoch(self.active())
        self._sums.clear()

    def _record_epoch(self, members: list[int]) -> None:
        if not self._sums.n:
            return
        means = self._sums.means()
        for m in members:
            loss, acc = means[m]
            h = self.history[m]
            h["train_epoch"].append(self._epochs_done(self.end_step(m)))
            h["train/acc"].append(acc)
            h["train/loss"].append(loss)
            self._log(m, {"train/loss_epoch": loss, "train/acc_epoch": acc})

    # ---- evaluation -------------------------------------------------------------------------

    def _eval_batch(self, x: Tensor, y: Tensor, layers: list[str] = ()) -> dict[str, Tensor]:
        """Sum each member's loss and correct count; returns the pre-activations of ``layers``."""
        with capture_preactivations(self.net.net, list(layers)) as pre:
            logits = self.net(x)
        n = len(y)
        losses = torch.stack(
            [F.cross_entropy(logits[:, m], y[:, m]) * n for m in range(self.members)]
        )
        correct = (logits.argmax(2) == y).sum(0).to(losses.dtype)
        self._eval.append(torch.stack([losses, correct], 1))
        self._eval_n += n
        return pre

    def _keep_unit(self, pre: Tensor) -> None:
        """The tracked unit of every member from member-blocked pre-activations."""
        s, unit = self.members, self.track["unit"]
        blocks = pre.unflatten(1, (s, -1))  # (N, S, C, …)
        self._tracked.append(blocks[:, :, unit].transpose(0, 1).reshape(s, -1))

    def _eval_means(self) -> list[tuple[float, float]]:
        sums = torch.stack(self._eval).sum(0) / self._eval_n  # (S, 2)
        self._eval, self._eval_n = [], 0
        return [(acc, loss) for loss, acc in sums.tolist()]

    def validation_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> None:
        x, y = batch
        layers = [self.track["layer"]] if self.track else []
        dashboards = batch_idx == 0 and not self.trainer.sanity_checking
        if dashboards:  # the BN layers' blocks, captured in the same forward pass
            layers += [name.rsplit(".", 1)[0] for name in norm_layers(self.net.net)]
        pre = self._eval_batch(x, y, list(dict.fromkeys(layers)))
        if self.track:
            self._keep_unit(pre[self.track["layer"]])
        if dashboards:
            self._bn_dashboards(pre)

    def on_validation_epoch_end(self) -> None:
        means = self._eval_means()
        tracked, self._tracked = self._tracked, []
        self.validated_now = []
        if self.trainer.sanity_checking:
            return
        quantiles = None
        if self.track is not None and tracked:
            values = torch.cat(tracked, 1).float()  # (S, values)
            q = torch.tensor(self.track["q"], device=values.device) / 100
            quantiles = torch.quantile(values, q, dim=1).T.tolist()  # (S, len(q))
        for m, (acc, loss) in enumerate(means):
            diverged = self.diverged_step[m]
            if diverged is not None and not self.final_validation:
                continue  # an independent run stopped at its divergence validates once, at the end
            h = self.history[m]
            step = self.end_step(m)
            if h["val_step"] and h["val_step"][-1] == step:
                continue
            h["val_step"].append(step)
            h["val_epoch"].append(self._epochs_done(step))
            h["val/acc"].append(acc)
            h["val/loss"].append(loss)
            logged = {"val/acc": acc, "val/loss": loss, "val/acc_best": max(h["val/acc"])}
            if quantiles is not None:
                for key, v in zip(self.track["keys"], quantiles[m]):
                    h[key].append(v)
                    logged[key] = v
            self._log(m, logged, step)
            self.validated_now.append(m)

    def _bn_dashboards(self, pre: dict[str, Tensor]) -> None:
        """Per member, what BNStatsLogger writes for an independent run: running statistics
        and pre-activation histograms on the first validation batch."""
        writers = [next((lg.experiment for lg in lgs if hasattr(lg.experiment, "add_histogram")),
                        None) for lgs in self.member_loggers]  # fmt: skip
        if not norm_layers(self.net.net) or not any(writers):
            return
        for m, tb in enumerate(writers):
            if tb is not None and self.diverged_step[m] is None:
                bn_dashboards(tb, self.net.net, pre, self.global_step, m, self.members)

    def test_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> None:
        self._eval_batch(*batch)

    def on_test_epoch_end(self) -> None:
        self.test_metrics = self._eval_means()  # per member (acc, loss)
        for m, (acc, loss) in enumerate(self.test_metrics):
            self._log(m, {"test/acc": acc, "test/loss": loss})

    # ---- bookkeeping ------------------------------------------------------------------------

    def _epochs_done(self, step: int) -> float:
        return step / max(self.trainer.num_training_batches, 1)

    def end_step(self, m: int) -> int:
        """The step member m is at: the global step, or where it stopped when it diverged."""
        d = self.diverged_step[m]
        step = self.global_step if self.restored_step is None else self.restored_step
        return step if d is None else d + 1

    def _log(self, m: int, metrics: dict[str, float], step: int | None = None) -> None:
        step = self.global_step if step is None else step
        for logger in self.member_loggers[m]:
            logger.log_metrics({**metrics, "epoch": self.current_epoch}, step=step)

    def on_save_checkpoint(self, checkpoint: dict) -> None:
        checkpoint["bnsweep"] = {
            "history": self.history,
            "rng": [g.get_state() for g in self.net.generators],
            **self._sums.state(),
            "diverged_step": self.diverged_step,
            "frozen": self.frozen,
            "fit_done": self.fit_done,
        }

    def restore(self, checkpoint: dict) -> None:
        """The weights and bookkeeping of a job checkpoint, without a Trainer (training had
        ended: only the test is left)."""
        self.load_state_dict(checkpoint["state_dict"])
        self.on_load_checkpoint(checkpoint)
        self.restored_step = checkpoint["global_step"]

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        self.resumed_from_step = checkpoint["global_step"]
        saved = checkpoint["bnsweep"]
        self.history = saved["history"]
        self._saved_rng = saved["rng"]  # set in on_fit_start, on the training device
        self._sums.load(saved)
        self.diverged_step = saved["diverged_step"]
        self.frozen = saved["frozen"]
        self.fit_done = saved.get("fit_done", False)

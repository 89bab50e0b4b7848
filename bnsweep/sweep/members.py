"""The seeds of one sweep point as one LightningModule (``sweep.vectorize``): per member what
``bnsweep.run.lit.LitClassifier`` computes for an independent run."""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Mapping

import pytorch_lightning as pl
import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.optim import Optimizer

from bnsweep.nn import capture_preactivations, norm_layers
from bnsweep.run.dashboards import (
    bn_dashboards,
    dashboard_layers,
    percentile_spec,
    unit_percentiles,
)
from bnsweep.run.lit import logging_step, new_history, payload, stats_finite
from bnsweep.run.losses import Sums


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
        self.track = percentile_spec(template, percentiles) if percentiles else None
        self.history = [new_history(self.track) for _ in range(s)]
        self.diverged_step: list[int | None] = [None] * s
        self.frozen: dict[int, dict[str, Tensor]] = {}  # member -> its weights and statistics
        # members whose divergence was an evaluation's (NaN or infinite validation loss or
        # running statistic): stopped after their step, as an independent run stops there
        self.stopped_at_eval: list[int] = []
        self.fit_done = False  # training has ended: a checkpoint saved now is the final state
        self.restored_step: int | None = None  # the step of a final state restored (no fit)
        self.resumed_from_step: int | None = None
        self.first_step_at: float | None = None
        self.final_validation = False  # the run's last validation: diverged members report too
        self.epoch_sums = Sums()  # (S, 2): Σ loss·n, Σ correct per member
        self._eval = Sums()  # (S, 2): Σ loss·n, Σ correct per member
        self._tracked: list[Tensor] = []  # per batch (S, values) of the tracked unit
        self.validated_now: list[int] = []  # members that recorded the latest validation
        self.test_metrics: list[tuple[float, float]] = []  # per member (acc, loss)
        self._saved_rng: list[Tensor] | None = None  # generator states read from a checkpoint

    def on_fit_start(self) -> None:
        # dropout masks are drawn where the activations are: on a GPU from per-member CUDA
        # generators seeded as seed_everything seeds an independent run's CUDA RNG (torch's fused
        # CUDA dropout draws differently, so there the masks are the member's own, not the bits
        # of an independent run's). Runs after the model moved and a checkpoint was read.
        self.epoch_sums.to(self.device)
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
        losses = torch.stack(
            [F.cross_entropy(lm, ym) for lm, ym in zip(logits.unbind(1), y.unbind(1))]
        )
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
            self.epoch_sums.add(sums, n)
        if logging_step(self):
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
        self.epoch_sums.clear()

    def _record_epoch(self, members: list[int]) -> None:
        if not self.epoch_sums.n:
            return
        means = self.epoch_sums.mean().tolist()
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
        self._eval.add(torch.stack([losses, correct], 1), n)
        return pre

    def _keep_unit(self, pre: Tensor) -> None:
        """The tracked unit of every member from member-blocked pre-activations."""
        s, unit = self.members, self.track["unit"]
        blocks = pre.unflatten(1, (s, -1))  # (N, S, C, …)
        self._tracked.append(blocks[:, :, unit].transpose(0, 1).reshape(s, -1))

    def _eval_means(self) -> list[tuple[float, float]]:
        # batch by batch, as an independent run's sums add its loss · n (bnsweep.run.losses)
        return [(acc, loss) for loss, acc in self._eval.take().tolist()]

    def validation_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> None:
        x, y = batch
        layers = [self.track["layer"]] if self.track else []
        dashboards = batch_idx == 0 and not self.trainer.sanity_checking
        if dashboards:  # the BN layers' blocks, captured in the same forward pass
            layers += list(dashboard_layers(self.net.net).values())
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
            quantiles = unit_percentiles(torch.cat(tracked, 1), self.track["q"])  # (S, len(q))
        finite_stats = stats_finite(self.net.net, self.members)
        if not isinstance(finite_stats, list):  # one member: stats_finite says one bool
            finite_stats = [finite_stats]
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
            if diverged is None and not (math.isfinite(loss) and finite_stats[m]):
                # an evaluation NaN or infinite: diverged here, as its independent run stops
                self.diverged_step[m] = self.global_step
                self.stopped_at_eval.append(m)
                self.frozen[m] = {k: v.detach().clone() for k, v in self._member_views(m).items()}
                self._record_epoch([m])
        if not self.active():
            self.trainer.should_stop = True

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
        return step if d is None else d if m in self.stopped_at_eval else d + 1

    def _log(self, m: int, metrics: dict[str, float], step: int | None = None) -> None:
        step = self.global_step if step is None else step
        for logger in self.member_loggers[m]:
            logger.log_metrics({**metrics, "epoch": self.current_epoch}, step=step)

    def on_save_checkpoint(self, checkpoint: dict) -> None:
        checkpoint["bnsweep"] = payload(self, [g.get_state() for g in self.net.generators],
                                        frozen=self.frozen, stopped_at_eval=self.stopped_at_eval)  # fmt: skip

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
        self.epoch_sums.load(saved)
        self.diverged_step = saved["diverged_step"]
        self.frozen = saved["frozen"]
        self.stopped_at_eval = list(saved.get("stopped_at_eval", []))
        self.fit_done = saved.get("fit_done", False)

"""The pre-flight check of a run, before it claims its folder: one training step and one
evaluation batch of the real data through a copy of the network, with everything training
will ask of it (the loss on its logits, the backward, the optimizer's step, PreciseBN's
recomputation, the dashboards' and percentiles' hooks, the probes' copy).

A network that cannot train here fails in one line naming the user's exception and their
``file:line`` (``bnsweep.nn.networks.NetworkError``), before any file is written; no run crashes
mid-training because of what the network is. The check works on copies and puts every RNG
back, so the run computes exactly what it computes without it.
"""

from __future__ import annotations

import contextlib
import copy
import random
from collections.abc import Iterator

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from bnsweep.nn import capture_preactivations, recompute_population_stats
from bnsweep.nn.networks import NetworkError, one_line

EVAL_IMAGES = 256  # of the first evaluation batch: enough to run every layer, cheap


@contextlib.contextmanager
def rng_kept() -> Iterator[None]:
    """Every RNG a run draws from (Python's, numpy's, torch's CPU and CUDA ones) as it was."""
    states = (random.getstate(), np.random.get_state(), torch.get_rng_state(),
              torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None)  # fmt: skip
    try:
        yield
    finally:
        random.setstate(states[0])
        np.random.set_state(states[1])
        torch.set_rng_state(states[2])
        if states[3] is not None:
            torch.cuda.set_rng_state_all(states[3])


def check(module: torch.nn.Module, datamodule, device: torch.device,
          precision: str | int = "32-true") -> None:  # noqa: ANN001  # fmt: skip
    """Raise NetworkError (one line) if the LightningModule ``module``'s network cannot take a
    training step and an evaluation batch of ``datamodule``'s real data on ``device``, its
    forward passes under autocast for a mixed ``precision`` as Lightning runs them."""
    from bnsweep.run.dashboards import dashboard_layers

    datamodule.setup("fit")  # on the CPU; the Trainer moves it to its device
    x, y = next(iter(datamodule.train_dataloader()))
    xv, yv = next(iter(datamodule.val_dataloader()))
    x, y, xv, yv = (t.to(device) for t in (x, y, xv[:EVAL_IMAGES], yv[:EVAL_IMAGES]))
    classes = datamodule.num_classes
    with rng_kept():
        net = copy.deepcopy(module.net).to(device).train()
        if precision == "64-true" or str(precision) == "64":
            net, x, xv = net.double(), x.double(), xv.double()
        low = {"bf16-mixed": torch.bfloat16, "16-mixed": torch.float16}.get(str(precision))
        autocast = torch.autocast(device.type, dtype=low, enabled=low is not None)
        stage = "training step"
        try:
            with autocast:
                logits = net(x)
                _check_logits(logits, len(x), classes)
                loss = F.cross_entropy(logits, y)
            loss.backward()
            module.optimizer_factory(net.parameters()).step()
            if getattr(module, "precise", None) is not None:
                stage = "PreciseBN recomputation"
                recompute_population_stats(net, [(x, y)])
            stage = "evaluation batch"
            net.eval()
            layers = list(dashboard_layers(net).values())
            track = getattr(module, "track", None)
            if track is not None:
                layers.append(track["layer"])
            with (
                torch.no_grad(),
                autocast,
                capture_preactivations(net, list(dict.fromkeys(layers))) as pre,
            ):
                logits = net(xv)
            _check_logits(logits, len(xv), classes)
            if track is not None:
                _check_unit(pre[track["layer"]], track)
        except NetworkError:
            raise
        except Exception as e:  # noqa: BLE001 - the user's network: any error, one line
            shape = tuple((xv if stage == "evaluation batch" else x).shape)
            raise one_line(e, f"the network failed its pre-flight {stage} on a batch of shape "
                              f"{shape}") from None  # fmt: skip


def _check_logits(logits: object, n: int, classes: int) -> None:
    if not isinstance(logits, Tensor) or tuple(logits.shape) != (n, classes):
        got = tuple(logits.shape) if isinstance(logits, Tensor) else type(logits).__name__
        raise NetworkError(
            f"the network's forward must return logits of shape (N, {classes}) (N images, "
            f"data.num_classes={classes}), got {got} for N={n}"
        )


def _check_unit(values: Tensor, track: dict) -> None:
    if values.dim() < 2 or not 0 <= track["unit"] < values.shape[1]:
        raise NetworkError(
            f"percentiles.unit must be an integer in [0, {values.shape[1] - 1}] (the channels "
            f"of {track['layer']}), got {track['unit']!r}"
        )

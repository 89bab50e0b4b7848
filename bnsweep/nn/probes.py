"""Loss-landscape probes (Santurkar, Tsipras, Ilyas & Madry 2018, "How does batch normalization
help optimization?", Fig. 4): at a training step, move from the weights w along the step's
gradient g by step sizes η and measure

- the loss L(w − ηg) on the step's batch: its range over η is the "loss landscape";
- the gradient change ‖∇L(w − ηg) − g‖₂: its range is the "gradient predictiveness";
- the effective β-smoothness, max over η of ‖∇L(w − ηg) − g‖₂ / ‖ηg‖₂.

The network probed is a copy (its BN layers may update their statistics: the copy's), and every
forward draws the random numbers the training step's forward drew (``rng``: the state before
it, so dropout masks are the step's); the caller's RNG is left as it was. So a run with probes
trains exactly as one without.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Callable, Sequence

import torch
from torch import Tensor, nn

KEYS = ("loss_min", "loss_max", "grad_change_min", "grad_change_max", "beta")


def _detached_copy(net: nn.Module) -> nn.Module:
    """A copy of ``net`` without its hooks (a dashboard's capture must not see the probes)."""
    probe = copy.deepcopy(net)
    for m in probe.modules():
        for hooks in (m._forward_hooks, m._forward_pre_hooks, m._backward_hooks):
            hooks.clear()
    return probe


def probe_landscape(
    net: nn.Module,
    loss_fn: Callable[[Tensor, Tensor], Tensor],
    x: Tensor,
    y: Tensor,
    grads: Sequence[Tensor | None],
    etas: Sequence[float],
    rng: tuple[Tensor, Tensor | None] | None = None,
) -> dict[str, float]:
    """The probes at the step sizes ``etas`` along ``grads`` (the gradients of ``net``'s
    parameters, in ``net.parameters()`` order; None: zero). ``rng``: (CPU state, CUDA state or
    None) the training forward started from. Returns the KEYS and ``grad_norm`` (‖g‖₂)."""
    probe = _detached_copy(net)
    params = list(probe.parameters())
    w = [p.detach().clone() for p in params]
    g = [torch.zeros_like(p) if gr is None else gr.detach().clone() for p, gr in zip(params, grads)]
    g_norm = math.sqrt(sum(float((t.double() ** 2).sum()) for t in g))
    cuda = [x.device.index or 0] if x.device.type == "cuda" else []
    losses, changes, betas = [], [], []
    with torch.random.fork_rng(devices=cuda):
        for eta in etas:
            if rng is not None:
                torch.set_rng_state(rng[0])
                if cuda and rng[1] is not None:
                    torch.cuda.set_rng_state(rng[1], x.device)
            with torch.no_grad():
                for p, p0, g0 in zip(params, w, g):
                    p.copy_(p0 - eta * g0)
            loss = loss_fn(probe(x), y)
            moved = torch.autograd.grad(loss, params, allow_unused=True)
            change = math.sqrt(sum(float(((-g0 if gm is None else gm - g0).double() ** 2).sum())
                                   for gm, g0 in zip(moved, g)))  # fmt: skip
            losses.append(float(loss.detach()))
            changes.append(change)
            betas.append(change / (eta * g_norm) if eta * g_norm > 0 else 0.0)
    return {
        "loss_min": min(losses), "loss_max": max(losses),
        "grad_change_min": min(changes), "grad_change_max": max(changes),
        "beta": max(betas), "grad_norm": g_norm,
    }  # fmt: skip

"""The training-mode batch normalisation function of ``bnsweep.nn.BatchNorm``: Ioffe &
Szegedy (2015), Alg. 1, with the paper's closed-form backward (formulas: batchnorm.py)."""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor


class _BatchNormTrain(torch.autograd.Function):
    """Training-mode normalisation with the paper's closed-form backward.

    Written for the CPU's memory traffic: each full-size pass over the batch costs about as
    much as a small kernel, and each fresh full-size buffer more. So the forward makes two
    buffers (torch's kernel makes one): the centred input d = x − μ_B, which is saved for the
    backward, and the output, whose buffer first holds d² for the variance (a two-pass mean and
    variance from plain sums; torch's ``var_mean`` over (N, H, W) is much slower than a sum
    there). The backward makes one buffer, g·d, and builds the input gradient in it. (An
    ``addcmul`` whose first operand is a broadcast per-channel vector is avoided: on the CPU
    it is far slower than a ``mul`` and an ``add_``.)

    At the FC shapes, (64, 120), each op costs more than its arithmetic, so the op count is
    kept down: per-channel vectors broadcast against (N, C) input without a ``view``, and the
    scalars 1/m, ε and −1/m are 0-dim tensors made once per (m, ε, device, dtype) (a
    tensor-scalar op wraps its Python number on every call). The measurements behind each
    choice: docs/reference/benchmarks.md, "Why the code is shaped so".
    """

    @staticmethod
    def forward(ctx: Any, x: Tensor, weight: Tensor | None, bias: Tensor | None, eps: float):
        m = x.numel() // x.shape[1]
        inv_m, eps_t, neg_inv_m, _ = batch_constants(m, eps, x)
        per_channel = _per_channel(x)
        mean = _channel_sum(x).mul_(inv_m)  # (C,)
        d = x - per_channel(mean)
        if torch.compiler.is_compiling():  # out of place: see _channel_sum's note
            var = _channel_sum(d * d) * inv_m
            invstd = (var + eps_t).rsqrt()
            scale = invstd if weight is None else invstd * weight
            y = d * per_channel(scale)
            y = y if bias is None else y + per_channel(bias)
        else:
            y = torch.mul(d, d)  # the output's buffer, holding d² until the variance is taken
            var = _channel_sum(y).mul_(inv_m)  # (C,): biased, from the centred values
            invstd = torch.add(var, eps_t).rsqrt_()
            scale = invstd if weight is None else invstd * weight  # γ/σ per channel
            torch.mul(d, per_channel(scale), out=y)
            if bias is not None:
                y.add_(per_channel(bias))  # (an addcmul with a broadcast β: far slower)
        ctx.save_for_backward(d, invstd, weight)
        ctx.neg_inv_m = neg_inv_m
        ctx.mark_non_differentiable(mean, var)
        ctx.set_materialize_grads(False)  # no zero tensors for the statistics' (absent) grads
        return y, mean, var

    @staticmethod
    def backward(ctx: Any, grad_y: Tensor, _grad_mean: Tensor, _grad_var: Tensor):
        if grad_y is None:  # the output is not in the graph (grads are not materialised)
            return None, None, None, None
        d, invstd, weight = ctx.saved_tensors
        grad_y = grad_y.contiguous()  # a slice of a larger gradient: sum in the usual order
        per_channel = _per_channel(d)
        traced = torch.compiler.is_compiling()  # out of place: see _channel_sum's note
        sum_g = _channel_sum(grad_y)  # (C,) = ∂ℓ/∂β
        buf = grad_y * d if traced else torch.mul(grad_y, d)
        sum_g_xhat = _channel_sum(buf) * invstd if traced else _channel_sum(buf).mul_(invstd)
        # (C,) = Σ g·x̂ = ∂ℓ/∂γ
        grad_x = grad_w = grad_b = None
        if ctx.needs_input_grad[0]:
            scale, shift, coef = _input_grad_terms(invstd, weight, sum_g, sum_g_xhat, ctx.neg_inv_m)
            if traced:
                grad_x = grad_y * per_channel(scale) + per_channel(shift) + d * per_channel(coef)
            else:  # built in the g·d buffer
                torch.mul(grad_y, per_channel(scale), out=buf).add_(per_channel(shift))
                grad_x = buf.addcmul_(d, per_channel(coef))
        if weight is not None:
            grad_w = sum_g_xhat if ctx.needs_input_grad[1] else None
            grad_b = sum_g if ctx.needs_input_grad[2] else None
        return grad_x, grad_w, grad_b, None


def _input_grad_terms(invstd: Tensor, weight: Tensor | None, sum_g: Tensor, sum_g_xhat: Tensor,
                      neg_inv_m: Tensor | float) -> tuple[Tensor, Tensor, Tensor]:  # fmt: skip
    """(scale, shift, coef) per channel, with ∂ℓ/∂x = γ/σ · (g − mean(g) − x̂·mean(g·x̂))
    = scale·g + shift + coef·d (d = x − μ_B)."""
    scale = invstd if weight is None else weight * invstd  # γ/σ per channel
    k = scale * neg_inv_m
    return scale, k * sum_g, k * invstd * sum_g_xhat


def _as_is(t: Tensor) -> Tensor:
    return t


def _as_channels(t: Tensor) -> Tensor:
    return t.view(1, -1, 1, 1)


def _as_channels_3d(t: Tensor) -> Tensor:
    return t.view(1, -1, 1)


def _as_channels_5d(t: Tensor) -> Tensor:
    return t.view(1, -1, 1, 1, 1)


_BROADCAST = {2: _as_is, 3: _as_channels_3d, 4: _as_channels, 5: _as_channels_5d}


def _per_channel(x: Tensor) -> Callable[[Tensor], Tensor]:
    """How a (C,) vector broadcasts against x: as it is for (N, C), viewed as (1, C, 1) for
    (N, C, L), (1, C, 1, 1) for (N, C, H, W), (1, C, 1, 1, 1) for (N, C, D, H, W)."""
    return _BROADCAST[x.dim()]


_CONSTANTS: dict[tuple, tuple[Tensor, ...]] = {}


_FULL_PRECISION = (torch.float32, torch.float64)


def batch_constants(m: int, eps: float, like: Tensor) -> tuple[Tensor | float, ...]:
    """(1/m, ε, −1/m, m/(m − 1)) as 0-dim tensors on ``like``'s device and dtype, made once per
    key; m/(m − 1) turns the biased batch variance into the unbiased one (inf for m = 1).
    Plain numbers under torch.compile (the graph takes them as constants) and for dtypes below
    float32, which keep the tensor-scalar arithmetic (in float32) rather than a 1/m rounded to
    their precision first (in float16, 1/50176 is subnormal)."""
    compiling = torch.compiler.is_compiling()
    key = (m, eps, like.device, like.dtype)
    if not compiling:
        found = _CONSTANTS.get(key)
        if found is not None:  # the common case
            return found
    made = (1.0 / m, eps, -1.0 / m, m / (m - 1) if m > 1 else math.inf)
    if compiling or like.dtype not in _FULL_PRECISION:
        return made
    if len(_CONSTANTS) > 256:  # many batch sizes: start over rather than grow
        _CONSTANTS.clear()
    found = tuple(torch.tensor(v, device=like.device, dtype=like.dtype) for v in made)
    _CONSTANTS[key] = found
    return found


def _channel_sum(t: Tensor) -> Tensor:
    """Σ over every dim but the channels (dim 1): (N, C) -> (C,); (N, C, …) summed over the
    positions (H·W) first (a contiguous inner reduction), then over N: on the CPU faster than one
    ``sum((0, 2, 3))`` and than ``mean`` (docs/reference/benchmarks.md).

    Under torch.compile the layer writes nothing into a buffer it has read (no ``out=``, no
    in-place ops on the activations): inductor fuses the passes itself, and on CUDA (torch
    2.11) it compiled the buffer-reusing backward into gradients off by O(1)
    (tests/test_batchnorm.py, tests/test_gpu.py); the CPU was unaffected."""
    if t.dim() == 2:
        return t.sum(0)
    return t.flatten(2).sum(2).sum(0)


def batch_norm_train(
    x: Tensor, weight: Tensor | None, bias: Tensor | None, eps: float
) -> tuple[Tensor, Tensor, Tensor]:
    """Normalise with batch statistics. Returns (y, batch mean, biased batch variance)."""
    return _BatchNormTrain.apply(x, weight, bias, eps)


class _SyncBatchNormTrain(torch.autograd.Function):
    """Training-mode normalisation with the statistics of the global batch: the shards of every
    process in ``group`` together (torch.nn.SyncBatchNorm's arithmetic, on any device).

    Forward: one all-reduce of [Σx, Σx², m] per channel, in float64, for the global mean and
    biased variance (Σx²/m − μ²: in float64 the cancellation costs nothing a float32 activation
    can show, unless its mean is ~10⁸ of its spread). Backward: one all-reduce of [Σg, Σg·d], so
    that ∂ℓ/∂x is the global batch's (the formula of ``_BatchNormTrain`` with the global m);
    ∂ℓ/∂γ and ∂ℓ/∂β stay this shard's sums, which data parallelism then averages with the other
    ranks' gradients, as it does for every parameter. Two collectives a layer and step, each of
    a latency that dominates at small shapes (docs/reference/benchmarks.md). Every rank must call it, with
    any number of samples ≥ 1 (shards may be unequal)."""

    @staticmethod
    def forward(ctx: Any, x: Tensor, weight: Tensor | None, bias: Tensor | None, eps: float,
                group: Any):  # fmt: skip
        import torch.distributed as dist

        c = x.shape[1]
        per_channel = _per_channel(x)
        wide = x.double()
        local = torch.empty(2 * c + 1, dtype=torch.float64, device=x.device)
        local[:c] = _channel_sum(wide)
        local[c : 2 * c] = _channel_sum(wide * wide)
        local[2 * c] = x.numel() // c
        dist.all_reduce(local, group=group)
        m = local[2 * c]
        mean64 = local[:c] / m
        var = (local[c : 2 * c] / m - mean64 * mean64).clamp_(min=0).to(x.dtype)
        mean = mean64.to(x.dtype)
        d = x - per_channel(mean)
        invstd = (var + eps).rsqrt()
        scale = invstd if weight is None else invstd * weight
        y = d * per_channel(scale)
        if bias is not None:
            y = y + per_channel(bias)
        ctx.save_for_backward(d, invstd, weight)
        ctx.group, ctx.m = group, float(m)
        m = m.clone()
        ctx.mark_non_differentiable(mean, var, m)
        ctx.set_materialize_grads(False)
        return y, mean, var, m

    @staticmethod
    def backward(ctx: Any, grad_y: Tensor, _grad_mean: Tensor, _grad_var: Tensor, _grad_m: Tensor):
        import torch.distributed as dist

        d, invstd, weight = ctx.saved_tensors
        c = d.shape[1]
        per_channel = _per_channel(d)
        if grad_y is None:  # this shard's output is out of the graph: it still takes part
            grad_y = torch.zeros_like(d)
        grad_y = grad_y.contiguous()
        local_g, local_gd = _channel_sum(grad_y), _channel_sum(grad_y * d)
        both = torch.cat([local_g, local_gd]).double()
        dist.all_reduce(both, group=ctx.group)
        sum_g = both[:c].to(d.dtype)
        sum_g_xhat = both[c:].to(d.dtype) * invstd
        grad_x = grad_w = grad_b = None
        if ctx.needs_input_grad[0]:  # the formula of one process, with the global m and sums
            scale, shift, coef = _input_grad_terms(invstd, weight, sum_g, sum_g_xhat, -1.0 / ctx.m)
            grad_x = grad_y * per_channel(scale) + per_channel(shift) + d * per_channel(coef)
        if weight is not None:
            grad_w = local_gd * invstd if ctx.needs_input_grad[1] else None
            grad_b = local_g if ctx.needs_input_grad[2] else None
        return grad_x, grad_w, grad_b, None, None


def sync_group() -> Any:
    """The process group a synchronised layer reduces over: torch.distributed's default group
    where it is initialised with more than one process, else None (one process: the layer's
    own batch is the global batch)."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
        return dist.group.WORLD
    return None


def batch_norm_train_sync(
    x: Tensor, weight: Tensor | None, bias: Tensor | None, eps: float, group: Any
) -> tuple[Tensor, Tensor, Tensor, float]:
    """``batch_norm_train`` over the global batch of ``group``'s processes. Returns (y, global
    mean, biased global variance, the global count of values per channel)."""
    y, mean, var, m = _SyncBatchNormTrain.apply(x, weight, bias, eps, group)
    return y, mean, var, float(m)

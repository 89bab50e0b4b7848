"""Batch normalization from scratch, with a choice of inference-statistics estimator.

Ioffe & Szegedy (2015), Alg. 1 (training): for each channel over the m values of a mini-batch
(m = N for (N, C) input, m = N·H·W for (N, C, H, W) input, §3.2)

    μ_B  = 1/m Σ x_i
    σ²_B = 1/m Σ (x_i − μ_B)²                  biased: this is what training normalises with
    x̂_i  = (x_i − μ_B) / √(σ²_B + ε)
    y_i  = γ x̂_i + β

and the closed-form backward pass (paper §3), with g = ∂ℓ/∂y:

    ∂ℓ/∂β = Σ g_i        ∂ℓ/∂γ = Σ g_i x̂_i
    ∂ℓ/∂x_i = γ / √(σ²_B + ε) · (g_i − 1/m Σ g_j − x̂_i · 1/m Σ g_j x̂_j)

Alg. 2 (inference): y = γ / √(Var[x] + ε) · x + (β − γ E[x] / √(Var[x] + ε)), with E[x] and
Var[x] estimated from training batches. `running_var` always stores the *unbiased* estimate
m/(m−1)·σ²_B, as torch.nn.BatchNorm does, so state dicts move between the two layers.

The estimator of (E[x], Var[x]) is the axis the studies sweep:

- ``momentum``: exponential moving average, torch's convention new = (1 − m)·old + m·batch.
- ``cumulative``: the plain average over every training batch since the last reset (torch's
  ``momentum=None``). Not Alg. 2, which averages the statistics of the final network: this
  average keeps those of the early weights, and lags on short runs.
- ``window``: the average of the last k training batches (k = ``window``); before k batches
  have been seen it averages those seen. The last k batch statistics are buffers, so a
  checkpoint keeps the window.

Whatever the estimator, ``running_mean`` / ``running_var`` hold the current estimate, and eval
mode reads only them.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any, Literal

import torch
from torch import Tensor, nn

from bnsweep.nn.layers import norm_layers

Estimator = Literal["momentum", "window", "cumulative"]
ESTIMATORS: tuple[str, ...] = ("momentum", "window", "cumulative")
_SHAPE_NAMES = {2: "(N, C)", 4: "(N, C, H, W)"}


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


class _BatchNormTrain(torch.autograd.Function):
    """Training-mode normalisation with the paper's closed-form backward.

    Written for the CPU's memory traffic: each full-size pass over the batch costs about as
    much as a small kernel, and each fresh full-size buffer more. So the forward makes two
    buffers (torch's kernel makes one): the centred input d = x − μ_B, which is saved for the
    backward, and the output, whose buffer first holds d² for the variance (a two-pass mean and
    variance from plain sums; torch's ``var_mean`` over (N, H, W) is ~10× slower than a sum
    there). The backward makes one buffer, g·d, and builds the input gradient in it. (An
    ``addcmul`` whose first operand is a broadcast per-channel vector is avoided: on the CPU
    it took 4.4 ms on (64, 6, 28, 28), where a ``mul`` and an ``add_`` take 0.06 ms.)

    At the FC shapes, (64, 120), each op costs more than its arithmetic, so the op count is
    kept down: per-channel vectors broadcast against (N, C) input without a ``view`` (~3 µs
    each), and the scalars 1/m, ε and −1/m are 0-dim tensors made once per (m, ε, device,
    dtype) (a tensor-scalar op wraps its Python number on every call: ~8 µs against ~3.5).
    """

    @staticmethod
    def forward(ctx: Any, x: Tensor, weight: Tensor | None, bias: Tensor | None, eps: float):
        m = x.numel() // x.shape[1]
        inv_m, eps_t, neg_inv_m, _ = _constants(m, eps, x)
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
                y.add_(per_channel(bias))  # (an addcmul with a broadcast β is ~70× slower here)
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
            scale = invstd if weight is None else weight * invstd  # γ/σ per channel
            # ∂ℓ/∂x = γ/σ · (g − mean(g) − x̂·mean(g·x̂)) = scale·g + coef·d + shift per channel
            k = scale * ctx.neg_inv_m
            coef = k * invstd * sum_g_xhat
            shift = k * sum_g
            if traced:
                grad_x = grad_y * per_channel(scale) + per_channel(shift) + d * per_channel(coef)
            else:  # built in the g·d buffer
                torch.mul(grad_y, per_channel(scale), out=buf).add_(per_channel(shift))
                grad_x = buf.addcmul_(d, per_channel(coef))
        if weight is not None:
            grad_w = sum_g_xhat if ctx.needs_input_grad[1] else None
            grad_b = sum_g if ctx.needs_input_grad[2] else None
        return grad_x, grad_w, grad_b, None


def _as_is(t: Tensor) -> Tensor:
    return t


def _as_channels(t: Tensor) -> Tensor:
    return t.view(1, -1, 1, 1)


def _per_channel(x: Tensor) -> Callable[[Tensor], Tensor]:
    """How a (C,) vector broadcasts against x: as it is for (N, C), viewed as (1, C, 1, 1) for
    (N, C, H, W)."""
    return _as_is if x.dim() == 2 else _as_channels


_CONSTANTS: dict[tuple, tuple[Tensor, ...]] = {}
_FULL_PRECISION = (torch.float32, torch.float64)


def _constants(m: int, eps: float, like: Tensor) -> tuple[Tensor | float, ...]:
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
    """Σ over every dim but the channels (dim 1): (N, C) -> (C,); (N, C, H, W) summed over
    H·W first (a contiguous inner reduction), then over N. On the CPU that is 2× faster than
    one ``sum((0, 2, 3))`` at (64, 16, 12, 12), and faster than ``mean``, which the forward
    took before (77 µs against 37 at (64, 6, 28, 28)).

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


class BatchNorm(nn.Module):
    """Batch normalization over (N, C) or (N, C, H, W) input; see the module docstring.

    Interface, parameter and buffer names follow ``torch.nn.BatchNorm1d/2d``; ``estimator``
    (``momentum`` | ``window`` | ``cumulative``) and ``window`` choose how the inference
    statistics are estimated. ``momentum=None`` means ``cumulative``, as in torch.
    """

    _expected_dims: tuple[int, ...] = (2, 4)

    def __init__(
        self,
        num_features: int,
        eps: float = 1e-5,
        momentum: float | None = 0.1,
        affine: bool = True,
        track_running_stats: bool = True,
        estimator: Estimator = "momentum",
        window: int = 5,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__()
        if isinstance(num_features, bool) or not isinstance(num_features, int) or num_features < 1:
            raise ValueError(f"num_features must be a positive integer, got {num_features!r}")
        if not _is_number(eps) or not eps > 0:
            raise ValueError(f"eps must be a number > 0, got {eps!r}")
        if estimator not in ESTIMATORS:
            raise ValueError(f"estimator must be one of {', '.join(ESTIMATORS)}, got {estimator!r}")
        if momentum is None:
            estimator = "cumulative"
        elif not _is_number(momentum) or not 0 <= momentum <= 1:
            raise ValueError(f"momentum must be a number in [0, 1] or None, got {momentum!r}")
        if isinstance(window, bool) or not isinstance(window, int) or window < 1:
            raise ValueError(f"window must be a positive integer, got {window!r}")
        self.num_features = num_features
        self._fold_cache: tuple | None = None  # eval (scale, shift) and what they were made from
        self.eps = float(eps)
        self.momentum = momentum
        self.affine = affine
        self.track_running_stats = track_running_stats
        self.estimator = estimator
        self.window = window
        factory = {"device": device, "dtype": dtype}
        if affine:
            self.weight = nn.Parameter(torch.empty(num_features, **factory))
            self.bias = nn.Parameter(torch.empty(num_features, **factory))
        else:
            self.register_parameter("weight", None)
            self.register_parameter("bias", None)
        if track_running_stats:
            self.register_buffer("running_mean", torch.zeros(num_features, **factory))
            self.register_buffer("running_var", torch.ones(num_features, **factory))
            self.register_buffer(
                "num_batches_tracked", torch.tensor(0, dtype=torch.long, device=device)
            )
            if estimator == "window":
                # the last k batch means and unbiased variances, a ring indexed by batch count
                self.register_buffer("window_mean", torch.zeros(window, num_features, **factory))
                self.register_buffer("window_var", torch.zeros(window, num_features, **factory))
        else:
            self.register_buffer("running_mean", None)
            self.register_buffer("running_var", None)
            self.register_buffer("num_batches_tracked", None)
        self.reset_parameters()

    def reset_running_stats(self) -> None:
        if self.track_running_stats:
            self.running_mean.zero_()
            self.running_var.fill_(1)
            self.num_batches_tracked.zero_()
            if self.estimator == "window":
                self.window_mean.zero_()
                self.window_var.zero_()

    def reset_parameters(self) -> None:
        self.reset_running_stats()
        if self.affine:
            nn.init.ones_(self.weight)
            nn.init.zeros_(self.bias)

    def extra_repr(self) -> str:
        s = (
            f"{self.num_features}, eps={self.eps}, momentum={self.momentum}, affine={self.affine}, "
            f"track_running_stats={self.track_running_stats}, estimator={self.estimator}"
        )
        return s + (f", window={self.window}" if self.estimator == "window" else "")

    def _check_input(self, x: Tensor) -> None:
        if x.dim() not in self._expected_dims:
            shapes = " or ".join(_SHAPE_NAMES[d] for d in self._expected_dims)
            raise ValueError(
                f"{type(self).__name__} expects {shapes} input, "
                f"got a {x.dim()}-D tensor of shape {tuple(x.shape)}"
            )
        if x.shape[1] != self.num_features:
            raise ValueError(
                f"{type(self).__name__}({self.num_features}) got input with {x.shape[1]} channels "
                f"(shape {tuple(x.shape)}); channel dim 1 must equal num_features"
            )

    # The hot paths below read parameters and buffers from ``_parameters`` / ``_buffers``:
    # nn.Module's ``__getattr__`` costs ~1.8 µs per access, which at the FC shapes was a tenth
    # of the layer's time in eval.

    def forward(self, x: Tensor) -> Tensor:
        self._check_input(x)
        buffers = self._buffers
        use_batch_stats = self.training or not self.track_running_stats
        if not use_batch_stats:
            return self._normalize_with(x, buffers["running_mean"], buffers["running_var"])
        m = x.numel() // x.shape[1]
        if m < 2 and self.training:
            raise ValueError(
                f"{type(self).__name__} needs more than 1 value per channel when training, "
                f"got input of shape {tuple(x.shape)}"
            )
        y, mean, var = self._batch_stats(x)
        if self.training and self.track_running_stats:
            self._update_running_stats(mean, var.mul(_constants(m, self.eps, var)[3]))
        return y

    def _batch_stats(self, x: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """(y, batch mean, biased batch variance) of a training-mode batch."""
        params = self._parameters
        return batch_norm_train(x, params["weight"], params["bias"], self.eps)

    def _normalize_with(self, x: Tensor, mean: Tensor, var: Tensor) -> Tensor:
        # Alg. 2 folded into one affine op: y = x·scale + shift, per channel
        scale, shift = self._folded(mean, var, x.dim())
        return (x * scale).add_(shift)

    def _folded(self, mean: Tensor, var: Tensor, dims: int) -> tuple[Tensor, Tensor]:
        """Per-channel (scale, shift) of the inference transform, shaped to broadcast against
        ``dims``-D input.

        Without autograd (validation, test) they are cached until a running statistic, γ or β
        changes: the cache is keyed by the tensors' identities, storage addresses and version
        counters (a ``.to()`` or ``load_state_dict`` changes one of them), so evaluation costs
        two elementwise ops.
        """
        params = self._parameters
        weight, bias = params["weight"], params["bias"]
        tensors = (mean, var, weight, bias) if self.affine else (mean, var)
        cacheable = not torch.is_grad_enabled()
        if cacheable:
            key = [dims, self.eps, torch.is_inference_mode_enabled()]
            for t in tensors:
                key += (id(t), t.data_ptr(), t._version)
            cache = self._fold_cache
            if cache is not None and cache[0] == key:
                return cache[1]
        scale = torch.rsqrt(var + self.eps)
        shift = -mean * scale
        if self.affine:
            scale = scale * weight
            shift = shift * weight + bias
        if dims != 2:
            scale, shift = scale.view(1, -1, 1, 1), shift.view(1, -1, 1, 1)
        if cacheable:
            self._fold_cache = (key, (scale.detach(), shift.detach()))
        return scale, shift

    def _update_running_stats(self, mean: Tensor, var_unbiased: Tensor) -> None:
        # the statistics are non-differentiable outputs of the training function, so these
        # in-place updates record no graph without a no_grad context (which cost ~25 µs a call)
        buffers = self._buffers
        running_mean, running_var = buffers["running_mean"], buffers["running_var"]
        count = buffers["num_batches_tracked"]
        count.add_(1)
        if self.estimator == "momentum":
            running_mean.lerp_(mean, self.momentum)
            running_var.lerp_(var_unbiased, self.momentum)
        elif self.estimator == "cumulative":
            # average over n batches: new = old + (batch − old)/n, without a host sync
            w = count.to(mean.dtype).reciprocal()
            running_mean.lerp_(mean, w)
            running_var.lerp_(var_unbiased, w)
        else:
            window_mean, window_var = buffers["window_mean"], buffers["window_var"]
            slot = torch.remainder(count - 1, self.window).view(1)
            window_mean.index_copy_(0, slot, mean.view(1, -1))
            window_var.index_copy_(0, slot, var_unbiased.view(1, -1))
            # unfilled slots are zero, so sum / min(n, k) is the mean of those seen
            seen = count.clamp(max=self.window).to(mean.dtype)
            torch.div(window_mean.sum(0), seen, out=running_mean)
            torch.div(window_var.sum(0), seen, out=running_var)

    @torch.no_grad()
    def _fill_window_from_running(self) -> None:
        """Make the window agree with running_mean/var: the slots of the batches seen hold them."""
        seen = int(min(self.num_batches_tracked.item(), self.window))
        self.window_mean.zero_()
        self.window_var.zero_()
        self.window_mean[:seen] = self.running_mean
        self.window_var[:seen] = self.running_var

    def _load_from_state_dict(
        self, state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys, error_msgs
    ):  # noqa: ANN001 (torch's signature)
        super()._load_from_state_dict(
            state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys, error_msgs
        )
        # A state dict from torch.nn.BatchNorm has no window: rebuild it from the loaded running
        # statistics, so the estimate continues from where torch left it.
        window_keys = [prefix + "window_mean", prefix + "window_var"]
        if (
            self.estimator == "window"
            and self.track_running_stats
            and prefix + "running_mean" in state_dict
            and not any(k in state_dict for k in window_keys)
        ):
            for k in window_keys:
                if k in missing_keys:
                    missing_keys.remove(k)
            self._fill_window_from_running()


class BatchNorm1d(BatchNorm):
    """Our layer restricted to (N, C) input, like torch.nn.BatchNorm1d on 2-D input."""

    _expected_dims = (2,)


class BatchNorm2d(BatchNorm):
    """Our layer restricted to (N, C, H, W) input, like torch.nn.BatchNorm2d."""

    _expected_dims = (4,)


def make_batchnorm(num_features: int, spatial: bool, **kwargs: Any) -> BatchNorm:
    """Norm-layer factory used by the networks: our layer, 2d for conv maps, 1d otherwise."""
    return (BatchNorm2d if spatial else BatchNorm1d)(num_features, **kwargs)


def make_torch_batchnorm(num_features: int, spatial: bool, **kwargs: Any) -> nn.Module:
    """Norm-layer factory for the reference: torch.nn.BatchNorm2d / BatchNorm1d."""
    return (nn.BatchNorm2d if spatial else nn.BatchNorm1d)(num_features, **kwargs)


@torch.no_grad()
def recompute_population_stats(
    model: nn.Module, batches: Any, device: torch.device | None = None
) -> int:
    """Replace every BN layer's running statistics by exact population statistics (Alg. 2).

    Runs the trained network over ``batches`` (an iterable of (x, y) or x) in training mode with
    the weights frozen: each BN layer averages its batch means and unbiased batch variances over
    all batches (the cumulative estimator). Dropout is switched off during the pass. Each layer's
    estimator and the model's train/eval mode are restored afterwards. Returns the batch count.
    """
    norms = list(norm_layers(model).values())
    if not norms:
        return 0
    was_training = {m: m.training for m in model.modules()}
    saved = [(m, m.momentum, getattr(m, "estimator", None)) for m in norms]
    for m in norms:
        m.reset_running_stats()
        m.momentum = None  # torch's layer: cumulative average
        if isinstance(m, BatchNorm):
            m.estimator = "cumulative"
    model.eval()
    for m in norms:
        m.train()
    n = 0
    try:
        for batch in batches:
            x = batch[0] if isinstance(batch, (tuple, list)) else batch
            model(x.to(device) if device is not None else x)
            n += 1
    finally:
        for m, momentum, estimator in saved:
            m.momentum = momentum
            if estimator is not None:
                m.estimator = estimator
            if estimator == "window":
                m._fill_window_from_running()  # the window now holds the population estimate
        for m, training in was_training.items():
            m.train(training)
    return n

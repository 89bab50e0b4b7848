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

The estimator of (E[x], Var[x]) is the axis the studies sweep: an object from
``bnsweep.nn.estimators`` (``momentum``, ``window``, ``cumulative``, or one registered there),
chosen by name. Whatever the estimator, ``running_mean`` / ``running_var`` hold the current
estimate, and eval mode reads only them.

Variants of the training transform:

- Ghost BN (Hoffer, Hubara & Soudry 2017): ``ghost_batch_size=k`` normalises each of the N/k
  virtual batches of k samples with its own statistics, and the estimator takes one update per
  virtual batch, in order. k = N is the layer above.
- Batch renormalization (Ioffe 2017, Alg. 1): ``BatchRenorm`` (bnsweep.nn.renorm).

Under data parallelism (several processes, torch.distributed initialised) each process
normalises its own shard, as torch's BN does. ``layer.sync = True`` (``bn.sync=true``) normalises
with the global batch's count, mean and variance instead, by all-reduce, and all-reduces the
backward's two per-channel sums, so that the input gradients are the global batch's and the
running statistics are equal on every rank (torch.nn.SyncBatchNorm's arithmetic, which torch
runs only on GPUs; this one runs on the CPU too: bnsweep.nn.functional). One process: no change.

The factories the ``bn=`` configs name and the lookups of norm layers in a network:
bnsweep.nn.norms.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn

from bnsweep.nn.estimators import (
    Estimator,
    check_momentum,
    check_window,
    estimator_class,
    make_estimator,
)
from bnsweep.nn.functional import (
    batch_constants,
    batch_norm_train,
    batch_norm_train_sync,
    sync_group,
)

_LOW_PRECISION = (torch.float16, torch.bfloat16)
_SHAPE_NAMES = {2: "(N, C)", 3: "(N, C, L)", 4: "(N, C, H, W)", 5: "(N, C, D, H, W)"}


def is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


class BatchNorm(nn.Module):
    """Batch normalization over (N, C), (N, C, L), (N, C, H, W) or (N, C, D, H, W) input (the
    statistics of each channel over every other dim); see the module docstring. The layer a
    network gets from ``norm(num_features)``, the way torchvision and timm call ``norm_layer``;
    ``BatchNorm1d`` / ``2d`` / ``3d`` restrict the input as torch's classes do.

    Interface, parameter and buffer names follow ``torch.nn.BatchNorm1d/2d``; ``estimator``
    (a registered name, or an Estimator) chooses how the inference statistics are estimated,
    and reads its options from the keywords (``momentum``, ``window``, or a registered
    estimator's own). ``momentum=None`` means ``cumulative``, as in torch.

    ``members`` > 1 makes the layer S = members stacked layers over S·C channels (see
    ``bnsweep.nn.stacked``): each member's batch statistics are computed on its own block of
    channels, as its own layer computes them, unless ``fused`` (one pass over all S·C, on a GPU
    by default); running statistics and eval are channel-wise, which is exact either way.
    """

    _expected_dims: tuple[int, ...] = (2, 3, 4, 5)

    def __init__(
        self,
        num_features: int,
        eps: float = 1e-5,
        momentum: float | None = 0.1,
        affine: bool = True,
        track_running_stats: bool = True,
        estimator: str | Estimator = "momentum",
        window: int = 5,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
        members: int = 1,
        fused: bool | None = None,
        ghost_batch_size: int | None = None,
        **options: Any,
    ) -> None:
        super().__init__()
        if isinstance(num_features, bool) or not isinstance(num_features, int) or num_features < 1:
            raise ValueError(f"num_features must be a positive integer, got {num_features!r}")
        if ghost_batch_size is not None and not (
            is_int(ghost_batch_size) and ghost_batch_size >= 1
        ):
            raise ValueError(
                f"bn.ghost_batch_size must be a positive integer, got {ghost_batch_size!r}"
            )
        self.ghost_batch_size = ghost_batch_size
        # statistics of the global batch under data parallelism (bn.sync; see the docstring)
        self.sync = False
        self._synced_m: float | None = None  # the global values per channel of the last sync
        if not is_number(eps) or not eps > 0:
            raise ValueError(f"eps must be a number > 0, got {eps!r}")
        named = not isinstance(estimator, Estimator)
        if named:
            estimator_class(estimator)  # an unknown name is refused first
        if momentum is None:
            estimator = "cumulative" if named else estimator  # torch's convention
        else:
            check_momentum(momentum)  # torch's keywords, checked whatever the estimator
        check_window(window)
        if named:
            estimator = make_estimator(
                estimator, {"momentum": momentum, "window": window, **options}
            )
        elif options:
            raise ValueError(f"unexpected options {sorted(options)} beside an Estimator object")
        self.num_features = num_features
        self._fold_cache: tuple | None = None  # eval (scale, shift) and what they were made from
        self.eps = float(eps)
        self.momentum = momentum
        self.affine = affine
        self.track_running_stats = track_running_stats
        self.stats = estimator  # how the inference statistics are estimated
        self.members, self.fused = members, fused
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
            for name, shape in estimator.shapes(num_features).items():  # the estimator's own
                self.register_buffer(name, torch.zeros(shape, **factory))
        else:
            self.register_buffer("running_mean", None)
            self.register_buffer("running_var", None)
            self.register_buffer("num_batches_tracked", None)
        self.reset_parameters()

    @property
    def estimator(self) -> str:
        """The estimator's name (``layer.stats`` is the estimator)."""
        return self.stats.name

    def reset_running_stats(self) -> None:
        if self.track_running_stats:
            self.running_mean.zero_()
            self.running_var.fill_(1)
            self.num_batches_tracked.zero_()
            self.stats.reset(self._buffers)

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
        s += self.stats.extra_repr()
        return s + (f", ghost_batch_size={self.ghost_batch_size}" if self.ghost_batch_size else "")

    def variant_options(self) -> dict[str, Any]:
        """The keywords beyond torch's and the estimator that make this layer what it is (a
        stacked copy is built with them)."""
        return {"ghost_batch_size": self.ghost_batch_size}

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
    # nn.Module's ``__getattr__`` costs, per access, a noticeable part of the layer's time in
    # eval at the FC shapes (docs/reference/benchmarks.md).

    def forward(self, x: Tensor) -> Tensor:
        own = (
            self._buffers["running_mean"]
            if self.track_running_stats
            else self._parameters["weight"]
        )
        if x.dtype in _LOW_PRECISION and own is not None and own.dtype not in _LOW_PRECISION:
            # mixed precision (autocast's bf16 / fp16 activations into a float32 layer), as
            # torch's BN takes it: the statistics, the normalisation and the running statistics
            # in float32, the output in the input's dtype. A layer cast to 16 bits itself
            # computes in its dtype.
            return self._forward(x.float()).to(x.dtype)
        return self._forward(x)

    def _forward(self, x: Tensor) -> Tensor:
        self._check_input(x)
        buffers = self._buffers
        use_batch_stats = self.training or not self.track_running_stats
        if not use_batch_stats:
            return self._normalize_with(x, buffers["running_mean"], buffers["running_var"])
        n = x.shape[0]
        # ghost batches in training; eval without running statistics normalises the whole batch
        k = (self.ghost_batch_size or n) if self.training else n
        if k and n % k:
            raise ValueError(
                f"bn.ghost_batch_size={k} must divide the training batch, got a batch of {n}"
            )
        m = x.numel() // x.shape[1] // (n // k) if n else 0  # values per channel and batch
        if m < 2 and self.training:
            raise ValueError(
                f"{type(self).__name__} needs more than 1 value per channel when training, "
                f"got input of shape {tuple(x.shape)}" + (f" in batches of {k}" if k != n else "")
            )
        self._synced_m = None
        y, stats = self._batch_stats(x, k)
        if self._synced_m is not None:  # the global batch's count: its unbiased variance
            m = self._synced_m
        if self.training and self.track_running_stats:
            correction = batch_constants(m, self.eps, x)[3]
            for mean, var in stats:  # one estimator update per (ghost) batch, in order
                self._update_running_stats(mean, var.mul(correction))
        return y

    def _batch_stats(self, x: Tensor, k: int) -> tuple[Tensor, list[tuple[Tensor, Tensor]]]:
        """(y, [(batch mean, biased batch variance) of each batch of k samples]) of a
        training-mode forward; member by member when the layer stacks S members (see the class
        docstring)."""
        params, buffers = self._parameters, self._buffers
        s = self.members
        whole = s == 1 or self.fused or (self.fused is None and x.is_cuda)
        tensors = [
            params["weight"],
            params["bias"],
            buffers["running_mean"],
            buffers["running_var"],
        ]
        if not whole:  # each member's parameters and statistics: its block of channels
            tensors = [[None] * s if t is None else t.chunk(s) for t in tensors]
        parts = []
        for xg in x.split(k) if k < x.shape[0] else (x,):
            if whole:
                parts.append(self._train_block(xg, *tensors))
                continue
            blocks = [
                self._train_block(xm.contiguous(), *member)
                for xm, *member in zip(xg.chunk(s, 1), *tensors)
            ]
            y, mean, var = zip(*blocks)
            parts.append((torch.cat(y, 1), torch.cat(mean), torch.cat(var)))
        y = parts[0][0] if len(parts) == 1 else torch.cat([p[0] for p in parts])
        return y, [(mean, var) for _, mean, var in parts]

    def _train_block(
        self, x: Tensor, weight: Tensor | None, bias: Tensor | None,
        running_mean: Tensor | None, running_var: Tensor | None,
    ) -> tuple[Tensor, Tensor, Tensor]:  # fmt: skip
        """(y, mean, biased var) of one batch of one member's channels (Alg. 1); with
        ``sync`` in training under data parallelism, of the global batch."""
        if self.sync and self.training and (group := sync_group()) is not None:
            if self.ghost_batch_size:
                raise ValueError("bn.sync=true normalises the global batch, which ghost batches "
                                 f"split: got bn.ghost_batch_size={self.ghost_batch_size}")  # fmt: skip
            y, mean, var, m = batch_norm_train_sync(x, weight, bias, self.eps, group)
            self._synced_m = int(m)
            return y, mean, var
        return batch_norm_train(x, weight, bias, self.eps)

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
            shape = (1, -1) + (1,) * (dims - 2)
            scale, shift = scale.view(shape), shift.view(shape)
        if cacheable:
            self._fold_cache = (key, (scale.detach(), shift.detach()))
        return scale, shift

    def _update_running_stats(self, mean: Tensor, var_unbiased: Tensor) -> None:
        # the statistics are non-differentiable outputs of the training function, so the
        # estimator's in-place updates record no graph without a no_grad context (which costs)
        buffers = self._buffers
        buffers["num_batches_tracked"].add_(1)
        self.stats.update(buffers, mean, var_unbiased)

    def _load_from_state_dict(
        self, state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys, error_msgs
    ):  # noqa: ANN001 (torch's signature)
        super()._load_from_state_dict(
            state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys, error_msgs
        )
        # A state dict from torch.nn.BatchNorm lacks the estimator's own buffers (the window):
        # rebuild them from the loaded running statistics, so the estimate continues from there
        own = [prefix + name for name in self.stats.own_buffers]
        if (
            own
            and self.track_running_stats
            and prefix + "running_mean" in state_dict
            and not any(k in state_dict for k in own)
        ):
            for k in own:
                if k in missing_keys:
                    missing_keys.remove(k)
            self.stats.from_running(self._buffers)


class BatchNorm1d(BatchNorm):
    """Our layer restricted to (N, C) or (N, C, L) input, like torch.nn.BatchNorm1d."""

    _expected_dims = (2, 3)


class BatchNorm2d(BatchNorm):
    """Our layer restricted to (N, C, H, W) input, like torch.nn.BatchNorm2d."""

    _expected_dims = (4,)


class BatchNorm3d(BatchNorm):
    """Our layer restricted to (N, C, D, H, W) input, like torch.nn.BatchNorm3d."""

    _expected_dims = (5,)


# torch's own BN layers (its lazy ones become these at their first forward)
TORCH_BATCHNORMS = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d, nn.SyncBatchNorm)

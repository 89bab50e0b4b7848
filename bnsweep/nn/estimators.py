"""How a BN layer estimates its inference statistics (E[x], Var[x]) from training batches.

An estimator is one small class: its options (keys of its ``conf/bn/<name>.yaml`` beside
``eps``), the buffers it keeps beside ``running_mean`` / ``running_var``, how a training batch
updates the estimate, how it resets, and along which dim its buffers stack when the seeds of a
point train as one network (``sweep.vectorize``). ``@register`` makes it ``BatchNorm(estimator=
name)`` and ``bn=<name>``; nothing else in bnsweep names it.

Every estimator leaves the current estimate in ``running_mean`` / ``running_var`` (eval mode
reads only them), the variance unbiased, as torch.nn.BatchNorm stores it.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, ClassVar

import torch
from torch import Tensor

# name -> estimator class, in the order they were registered
ESTIMATORS: dict[str, type[Estimator]] = {}


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


class Estimator:
    """The base: no own buffers, no options. ``update`` gets the layer's buffers (running_mean,
    running_var, num_batches_tracked already counting this batch, and this estimator's own),
    the batch mean and the unbiased batch variance; it runs without a no_grad context (the
    statistics are non-differentiable outputs of the training function)."""

    name: ClassVar[str] = ""
    # the BN layer's keywords this estimator reads (its conf/bn YAML's keys)
    options: ClassVar[tuple[str, ...]] = ()

    def __init__(self, **options: Any) -> None:
        self.settings = options

    # own buffers: name -> the dim of their channels, along which the S members of a stacked
    # layer lie (sweep.vectorize)
    own_buffers: ClassVar[dict[str, int]] = {}

    def shapes(self, num_features: int) -> dict[str, tuple[int, ...]]:
        """The shape of each own buffer; registered zero-filled on the layer."""
        return {}

    def update(self, buffers: Mapping[str, Tensor], mean: Tensor, var: Tensor) -> None:
        raise NotImplementedError

    def reset(self, buffers: Mapping[str, Tensor]) -> None:
        """Forget every batch seen (running_mean/var and the count are reset by the layer)."""
        for name in self.own_buffers:
            buffers[name].zero_()

    def from_running(self, buffers: Mapping[str, Tensor]) -> None:
        """Make the own buffers agree with running_mean/var (after a torch state dict without
        them was loaded, or population statistics were recomputed)."""

    def extra_repr(self) -> str:
        return "".join(f", {k}={v}" for k, v in self.settings.items())


def register(cls: type[Estimator]) -> type[Estimator]:
    """Class decorator: the estimator under ``cls.name``."""
    if not cls.name:
        raise ValueError(f"{cls.__name__} has no name")
    for other in ESTIMATORS.values():  # a stacked buffer's dim is looked up by its name alone
        clash = [b for b, d in cls.own_buffers.items() if other.own_buffers.get(b, d) != d]
        if other.name != cls.name and clash:
            raise ValueError(f"{cls.__name__}'s buffers {clash} are {other.__name__}'s, stacked "
                             "along another dim; name them apart")  # fmt: skip
    ESTIMATORS[cls.name] = cls
    return cls


def unregister(name: str) -> None:
    ESTIMATORS.pop(name, None)


def estimator_class(name: Any) -> type[Estimator]:
    """The registered estimator ``name``; a ValueError listing the registered ones otherwise."""
    if name not in ESTIMATORS:
        raise ValueError(f"estimator must be one of {', '.join(ESTIMATORS)}, got {name!r}")
    return ESTIMATORS[name]


def make_estimator(name: Any, given: Mapping[str, Any]) -> Estimator:
    """The estimator ``name`` with the options it reads from ``given`` (the layer's keywords)."""
    cls = estimator_class(name)
    return cls(**{k: given[k] for k in cls.options if k in given})


def stack_dim(buffer: str) -> int:
    """The dim along which S members' copies of a BN buffer lie in a stacked layer: an
    estimator's own buffer says; every other parameter and buffer has its channels first."""
    for cls in ESTIMATORS.values():
        if buffer in cls.own_buffers:
            return cls.own_buffers[buffer]
    return 0


def check_momentum(momentum: Any) -> None:
    if not _is_number(momentum) or not 0 <= momentum <= 1:
        raise ValueError(f"momentum must be a number in [0, 1] or None, got {momentum!r}")


def check_window(window: Any) -> None:
    if isinstance(window, bool) or not isinstance(window, int) or window < 1:
        raise ValueError(f"window must be a positive integer, got {window!r}")


@register
class Momentum(Estimator):
    """Exponential moving average, torch's convention: new = (1 − m)·old + m·batch."""

    name = "momentum"
    options = ("momentum",)

    def __init__(self, momentum: float = 0.1) -> None:
        check_momentum(momentum)
        super().__init__()
        self.momentum = momentum

    def update(self, buffers: Mapping[str, Tensor], mean: Tensor, var: Tensor) -> None:
        buffers["running_mean"].lerp_(mean, self.momentum)
        buffers["running_var"].lerp_(var, self.momentum)


@register
class Window(Estimator):
    """The average of the last k training batches (k = ``window``); before k batches it
    averages those seen. The last k batch statistics are buffers (a ring indexed by the batch
    count), so a checkpoint keeps the window."""

    name = "window"
    options = ("window",)

    def __init__(self, window: int = 5) -> None:
        check_window(window)
        super().__init__(window=window)
        self.window = window

    own_buffers = {"window_mean": 1, "window_var": 1}  # (k, C): channels along dim 1

    def shapes(self, num_features: int) -> dict[str, tuple[int, ...]]:
        return {name: (self.window, num_features) for name in self.own_buffers}

    def update(self, buffers: Mapping[str, Tensor], mean: Tensor, var: Tensor) -> None:
        count = buffers["num_batches_tracked"]
        window_mean, window_var = buffers["window_mean"], buffers["window_var"]
        slot = torch.remainder(count - 1, self.window).view(1)
        window_mean.index_copy_(0, slot, mean.view(1, -1))
        window_var.index_copy_(0, slot, var.view(1, -1))
        # unfilled slots are zero, so sum / min(n, k) is the mean of those seen
        seen = count.clamp(max=self.window).to(mean.dtype)
        torch.div(window_mean.sum(0), seen, out=buffers["running_mean"])
        torch.div(window_var.sum(0), seen, out=buffers["running_var"])

    @torch.no_grad()
    def from_running(self, buffers: Mapping[str, Tensor]) -> None:
        """The slots of the batches seen hold running_mean/var."""
        seen = int(min(buffers["num_batches_tracked"].item(), self.window))
        buffers["window_mean"].zero_()
        buffers["window_var"].zero_()
        buffers["window_mean"][:seen] = buffers["running_mean"]
        buffers["window_var"][:seen] = buffers["running_var"]


@register
class Cumulative(Estimator):
    """The plain average over every training batch since the last reset (torch's
    ``momentum=None``). Not the paper's Alg. 2, which averages the statistics of the final
    network: this average keeps those of the early weights, and lags on short runs."""

    name = "cumulative"

    def update(self, buffers: Mapping[str, Tensor], mean: Tensor, var: Tensor) -> None:
        # average over n batches: new = old + (batch − old)/n, without a host sync
        w = buffers["num_batches_tracked"].to(mean.dtype).reciprocal()
        buffers["running_mean"].lerp_(mean, w)
        buffers["running_var"].lerp_(var, w)

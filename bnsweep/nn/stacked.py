"""S copies of one network trained as one computation: the seeds of a vectorized sweep point.

Layout, *member-blocked channels*: a batch for S members is (N, S·C, H, W) or (N, S·F), member m
owning channels [m·C, (m+1)·C) and member m's own images in its block of the input. With it

- elementwise layers, pooling and ``Flatten`` act on each member unchanged, so every network's
  own ``forward`` runs as it is, only its layers are swapped;
- a BN layer (ours or torch's) over S·C channels *is* S independent BN layers: per-member batch
  statistics, per-member running statistics, for every estimator;
- convolutions and linear layers hold the members' weights side by side; on a GPU they run as
  one grouped convolution (groups = S) and one batched matmul, on the CPU as one plain call per
  member on its block, so that each member computes bit for bit what its independent run does;
- dropout draws each member's mask from that member's own generator, in the order an
  independent run draws them from the global RNG, so the masks are the same bits.

Members never mix: the loss is the sum of the members' mean losses, so each member's gradient
is its independent gradient, and elementwise optimizers (SGD, Adam, Adagrad) step each member
exactly as alone.

Every stacked tensor keeps the members along one dimension, blocked: parameters, running
statistics and optimizer state along dim 0, an estimator's own buffers along the dim it names
(the window's ring (k, S·C): dim 1);
0-d tensors (``num_batches_tracked``, Adam's ``step``) are shared. ``member_state`` and
``stack_states`` convert state dicts between one stacked network and S plain ones.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import Generator, Tensor, nn

from bnsweep.nn.batchnorm import TORCH_BATCHNORMS, BatchNorm
from bnsweep.nn.estimators import Estimator, stack_dim

# parameter-free layers that act per channel, hence per member, in the blocked layout
PER_CHANNEL = (
    nn.Sigmoid, nn.ReLU, nn.Tanh, nn.Identity, nn.Flatten, nn.AvgPool2d, nn.MaxPool2d,
)  # fmt: skip


class StackedConv2d(nn.Module):
    """S ``nn.Conv2d`` of one shape: (N, S·I, H, W) -> (N, S·O, H', W').

    ``fused``: one grouped convolution (groups = S), the GPU's choice; else one convolution per
    member on its block, which on the CPU computes bit for bit what an independent run does
    (the grouped kernel sums in another order, ~1e-6 apart, enough to flip a max-pool's pick).
    None: fused on CUDA tensors only.
    """

    def __init__(self, convs: Sequence[nn.Conv2d], fused: bool | None = None) -> None:
        super().__init__()
        c = convs[0]
        if c.padding_mode != "zeros":
            raise ValueError(f"cannot stack a Conv2d with padding_mode={c.padding_mode!r}")
        self.members, self.fused = len(convs), fused
        self.stride, self.padding, self.dilation = c.stride, c.padding, c.dilation
        self.groups = c.groups
        # (S·O, I/groups, k, k): member m's filters are rows [m·O, (m+1)·O)
        self.weight = nn.Parameter(torch.cat([m.weight.detach() for m in convs]))
        bias = c.bias is not None
        self.bias = nn.Parameter(torch.cat([m.bias.detach() for m in convs])) if bias else None

    def forward(self, x: Tensor) -> Tensor:
        s = self.members
        args = (self.stride, self.padding, self.dilation)
        if self.fused or (self.fused is None and x.is_cuda):
            return F.conv2d(x, self.weight, self.bias, *args, self.groups * s)
        xs, ws = x.chunk(s, 1), self.weight.chunk(s)
        bs = self.bias.chunk(s) if self.bias is not None else [None] * s
        return torch.cat([F.conv2d(*a, *args, self.groups) for a in zip(xs, ws, bs)], 1)


class StackedLinear(nn.Module):
    """S ``nn.Linear`` of one shape: (N, S·I) -> (N, S·O).

    ``fused``: one batched matmul; else one ``F.linear`` per member (on the CPU bit for bit an
    independent run's; MKL's batched kernel sums large layers in another order). None: fused
    on CUDA tensors only.
    """

    def __init__(self, linears: Sequence[nn.Linear], fused: bool | None = None) -> None:
        super().__init__()
        self.members, self.fused = len(linears), fused
        self.weight = nn.Parameter(torch.stack([m.weight.detach() for m in linears]))  # (S, O, I)
        bias = linears[0].bias is not None
        self.bias = nn.Parameter(torch.stack([m.bias.detach() for m in linears])) if bias else None

    def forward(self, x: Tensor) -> Tensor:
        s, (o, i), n = self.members, self.weight.shape[1:], x.shape[0]
        x = x.view(n, s, i)
        if self.fused or (self.fused is None and x.is_cuda):
            w = self.weight.transpose(1, 2)  # (S, I, O)
            xt = x.transpose(0, 1)  # (S, N, I)
            b = self.bias
            y = torch.bmm(xt, w) if b is None else torch.baddbmm(b.unsqueeze(1), xt, w)
            return y.transpose(0, 1).reshape(n, s * o)  # (S, N, O) -> (N, S·O)
        # unbind, not indexing: its backward stacks the members' gradients once, where each
        # index's backward would write a zero-filled gradient of all S members (S² work)
        bs = self.bias.unbind(0) if self.bias is not None else [None] * s
        return torch.cat([F.linear(*a) for a in zip(x.unbind(1), self.weight.unbind(0), bs)], 1)


class StackedDropout(nn.Module):
    """Dropout with each member's mask drawn from that member's generator.

    An independent run on the CPU draws ``empty_like(x).bernoulli_(1 − p)`` from the global RNG
    (torch's CPU dropout); here member m draws the same-shaped mask from ``generators[m]``.
    ``generators`` is shared by every dropout layer of the network, as the global RNG is.
    """

    def __init__(self, p: float, generators: list[Generator]) -> None:
        super().__init__()
        self.p = p
        self.generators = generators

    def forward(self, x: Tensor) -> Tensor:
        if not self.training or self.p == 0:
            return x
        s = len(self.generators)
        shape = (x.shape[0], x.shape[1] // s, *x.shape[2:])  # one member's block
        masks = [
            torch.empty(shape, dtype=x.dtype, device=x.device).bernoulli_(1 - self.p, generator=g)
            for g in self.generators
        ]
        return x * torch.cat(masks, 1).div_(1 - self.p)


class _ContiguousGrad(torch.autograd.Function):
    """Identity whose backward hands on a contiguous gradient: a member's slice of the stacked
    gradient is strided, and torch's BN backward would reduce it in another order."""

    @staticmethod
    def forward(ctx, x: Tensor) -> Tensor:  # noqa: ANN001
        return x.view_as(x)

    @staticmethod
    def backward(ctx, grad: Tensor) -> Tensor:  # noqa: ANN001
        return grad.contiguous()


class _TorchMemberStats:
    """The same for torch.nn.BatchNorm over S·C channels: in training, one ``F.batch_norm``
    per member on its block, updating that member's slice of the running statistics."""

    members: int
    fused: bool | None

    def forward(self, x: Tensor) -> Tensor:
        if not self.training or self.fused or (self.fused is None and x.is_cuda):
            return super().forward(x)
        self._check_input_dim(x)
        factor = 0.0 if self.momentum is None else self.momentum
        if self.track_running_stats:  # as torch's _BatchNorm.forward
            self.num_batches_tracked.add_(1)
            if self.momentum is None:
                factor = 1.0 / float(self.num_batches_tracked)
        s = self.members
        none = [None] * s
        stats = (self.running_mean.chunk(s), self.running_var.chunk(s))
        stats = stats if self.track_running_stats else (none, none)
        params = (self.weight.chunk(s), self.bias.chunk(s)) if self.affine else (none, none)
        ys = [
            _ContiguousGrad.apply(
                F.batch_norm(xm.contiguous(), rm, rv, w, b, True, factor, self.eps)
            )
            for xm, rm, rv, w, b in zip(x.chunk(s, 1), *stats, *params)
        ]
        return torch.cat(ys, 1)


class _TorchMemberBatchNorm1d(_TorchMemberStats, nn.BatchNorm1d):
    pass


class _TorchMemberBatchNorm2d(_TorchMemberStats, nn.BatchNorm2d):
    pass


class MemberEstimators(Estimator):
    """The estimators of S stacked members that estimate differently (an EMA of momentum 0.1
    beside 0.01, or beside the cumulative average: points a vectorized sweep stacks, see
    ``bnsweep.sweep.points``): each updates its own block of the layer's buffers, as its own layer
    would. They keep the same own buffers (the stacking needs one layout)."""

    name = "members"

    def __init__(self, estimators: Sequence[Estimator]) -> None:
        super().__init__()
        self.estimators = list(estimators)
        layouts = {tuple(sorted(e.own_buffers.items())) for e in self.estimators}
        if len(layouts) > 1:
            names = ", ".join(sorted({e.name for e in self.estimators}))
            raise ValueError(f"the estimators {names} keep different buffers; they cannot stack")
        self.own_buffers = dict(self.estimators[0].own_buffers)

    def shapes(self, num_features: int) -> dict[str, tuple[int, ...]]:
        return self.estimators[0].shapes(num_features)

    def _views(self, buffers: Mapping[str, Tensor], m: int) -> dict[str, Tensor]:
        s = len(self.estimators)
        return {k: t if t.dim() == 0 else member_view(t, k, m, s) for k, t in buffers.items()
                if t is not None}  # fmt: skip

    def update(self, buffers: Mapping[str, Tensor], mean: Tensor, var: Tensor) -> None:
        s = len(self.estimators)
        for m, (e, mm, vm) in enumerate(zip(self.estimators, mean.chunk(s), var.chunk(s))):
            e.update(self._views(buffers, m), mm, vm)

    def reset(self, buffers: Mapping[str, Tensor]) -> None:
        for m, e in enumerate(self.estimators):
            e.reset(self._views(buffers, m))

    def from_running(self, buffers: Mapping[str, Tensor]) -> None:
        for m, e in enumerate(self.estimators):
            e.from_running(self._views(buffers, m))

    def extra_repr(self) -> str:
        return ", members=[" + "; ".join(e.name + e.extra_repr() for e in self.estimators) + "]"


def _same_estimator(a: Estimator, b: Estimator) -> bool:
    return type(a) is type(b) and vars(a) == vars(b)


def _stack_norm(norms: Sequence[nn.Module], fused: bool | None) -> nn.Module:
    """One BN layer over S·C channels, holding the S members' parameters and statistics: our
    layer with ``members=S`` (each member's batch statistics on its own block), or torch's
    layer whose training forward runs member by member. Each tensor is the members' tensors
    concatenated along its channels' dim (an estimator's own buffer names its dim)."""
    first = norms[0]
    s, c = len(norms), first.num_features
    common = {"eps": first.eps, "momentum": first.momentum, "affine": first.affine,
              "track_running_stats": first.track_running_stats}  # fmt: skip
    if isinstance(first, BatchNorm):
        stats = [n.stats for n in norms]
        same = all(_same_estimator(stats[0], e) for e in stats[1:])
        estimator = copy.copy(first.stats) if same else MemberEstimators(stats)
        stacked = type(first)(s * c, estimator=estimator, members=s, fused=fused,
                              **common, **first.variant_options())  # fmt: skip
    else:
        spatial = isinstance(first, nn.BatchNorm2d)
        stacked = (_TorchMemberBatchNorm2d if spatial else _TorchMemberBatchNorm1d)(s * c, **common)
        stacked.members, stacked.fused = s, fused
    for name, t in [*first.named_parameters(recurse=False), *first.named_buffers(recurse=False)]:
        if t is None:
            continue
        if t.dim() == 0:  # num_batches_tracked: the members count the same batches
            value = t.detach().clone()
        else:
            value = torch.cat([getattr(m, name).detach() for m in norms], stack_dim(name))
        if isinstance(t, nn.Parameter):
            setattr(stacked, name, nn.Parameter(value))
        else:
            setattr(stacked, name, value)
    return stacked.train(first.training)


def _stack_module(
    modules: Sequence[nn.Module], name: str, generators: list[Generator], fused: bool | None
) -> nn.Module | None:
    first = modules[0]
    if isinstance(first, nn.Conv2d):
        return StackedConv2d(modules, fused)
    if isinstance(first, nn.Linear):
        return StackedLinear(modules, fused)
    if isinstance(first, (BatchNorm, *TORCH_BATCHNORMS)):
        return _stack_norm(modules, fused)
    if isinstance(first, nn.Dropout):
        if len(generators) != len(modules):
            raise ValueError(
                f"dropout layer {name!r} needs one generator per member: got {len(generators)} "
                f"for {len(modules)} members"
            )
        return StackedDropout(first.p, generators)
    if isinstance(first, PER_CHANNEL):
        return copy.deepcopy(first)
    if list(first.children()):
        return None  # a container: its children are stacked in place
    raise ValueError(
        f"sweep.vectorize cannot stack layer {name!r} of type {type(first).__name__}; "
        f"stackable: Conv2d, Linear, BN, Dropout, {', '.join(t.__name__ for t in PER_CHANNEL)}"
    )


class StackedNet(nn.Module):
    """S networks of one architecture as one module; ``forward`` maps member-blocked input
    (N, S·C, …) to logits (N, S, classes).

    ``generators`` (one per member) feed the dropout layers; member m's generator should hold
    the state that the global RNG has in member m's independent run when training starts.
    ``fused`` chooses the convolution and linear kernels (see ``StackedConv2d``).
    """

    def __init__(
        self,
        nets: Sequence[nn.Module],
        generators: Sequence[Generator] = (),
        fused: bool | None = None,
    ) -> None:
        super().__init__()
        if len(nets) < 1:
            raise ValueError("a stacked network needs at least one member")
        shapes = [{k: tuple(v.shape) for k, v in n.state_dict().items()} for n in nets]
        if any(s != shapes[0] for s in shapes[1:]):
            raise ValueError("stacked networks must share one architecture (state dict shapes)")
        self.members = len(nets)
        # the members' own learning rates where they differ (``member_lrs``); None: one lr
        self.lrs: list[float] | None = None
        self.member_shapes = shapes[0]  # state dict key -> shape of one member's tensor
        self.generators = list(generators)
        self.fused = fused
        self.net = copy.deepcopy(nets[0])
        self._replace(self.net, list(nets), "")

    def _replace(self, target: nn.Module, sources: list[nn.Module], prefix: str) -> None:
        for name, child in list(target.named_children()):
            peers = [getattr(s, name) for s in sources]
            stacked = _stack_module(peers, prefix + name, self.generators, self.fused)
            if stacked is None:
                self._replace(child, peers, prefix + name + ".")
            else:
                setattr(target, name, stacked)

    def forward(self, x: Tensor) -> Tensor:
        logits = self.net(x)  # (N, S·classes)
        return logits.view(logits.shape[0], self.members, -1)

    def member_state_dict(self, m: int) -> dict[str, Tensor]:
        """Member m's state dict: the keys and shapes of the plain network's."""
        return member_state(self.net.state_dict(), self.member_shapes, m, self.members)

    def load_member_state_dicts(self, states: Sequence[Mapping[str, Tensor]]) -> None:
        shapes = {k: tuple(v.shape) for k, v in self.net.state_dict().items()}
        self.net.load_state_dict(stack_states(states, shapes))


def stack_inputs(xs: Sequence[Tensor]) -> Tensor:
    """S members' batches (N, C, …) -> one member-blocked batch (N, S·C, …)."""
    return torch.cat(list(xs), 1)


def _member_dim(key: str) -> int:
    return stack_dim(key.rsplit(".", 1)[-1])


def member_view(t: Tensor, key: str, m: int, members: int) -> Tensor:
    """Member m's block of a stacked tensor, as a view (writes go into the stacked tensor)."""
    dim = _member_dim(key)
    return t.unflatten(dim, (members, -1)).select(dim, m)


def member_state(stacked: Mapping[str, Tensor], shapes: Mapping[str, tuple], m: int,
                 members: int) -> dict[str, Tensor]:  # fmt: skip
    """Member m's state dict (a plain network's keys and shapes) from a stacked state dict."""
    out = {}
    for key, shape in shapes.items():
        t = stacked[key]
        if t.dim() == 0:
            out[key] = t.clone()
        else:
            out[key] = member_view(t, key, m, members).reshape(shape).clone()
    return out


def stack_states(states: Sequence[Mapping[str, Tensor]], stacked_shapes: Mapping[str, tuple]
                 ) -> dict[str, Tensor]:  # fmt: skip
    """The inverse of ``member_state``: S plain state dicts -> one stacked state dict."""
    out = {}
    for key, shape in stacked_shapes.items():
        ts = [s[key] for s in states]
        if ts[0].dim() == 0:
            out[key] = ts[0].clone()
        else:
            out[key] = torch.stack(ts, _member_dim(key)).reshape(shape)
    return out


__all__ = [
    "MemberEstimators",
    "StackedConv2d",
    "StackedDropout",
    "StackedLinear",
    "StackedNet",
    "member_state",
    "member_view",
    "stack_inputs",
    "stack_states",
]


def member_lrs(optimizer: torch.optim.Optimizer, lrs: Sequence[float]) -> torch.optim.Optimizer:
    """``optimizer`` (made with lr=1) stepping member m of every stacked parameter at ``lrs[m]``.

    Its step runs at lr 1 on weights set to zero, which leaves each weight at minus its update
    (exactly: 0 − 1·u), then adds ``lrs[m]`` times that to member m's weights. For SGD this is
    the same arithmetic as a run at its own lr (w + (−lr)·u); for Adam, Adagrad and RMSprop the
    step size is rounded once more (lr / bias correction applied in two products), a difference
    in the last bit of an update. Parameters keep their members along dim 0, blocked."""
    members = len(lrs)
    params = [p for group in optimizer.param_groups for p in group["params"]]
    plain = optimizer.step

    def step(closure: Any = None) -> Any:
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        with torch.no_grad():
            before = [p.detach().clone() for p in params]
            for p in params:
                p.zero_()
        plain()
        with torch.no_grad():
            for p, b in zip(params, before):
                update, blocks = p.reshape(members, -1), b.view(members, -1)
                for m, lr in enumerate(lrs):
                    blocks[m].add_(update[m], alpha=lr)
                p.copy_(b)
        return loss

    optimizer.step = step  # an instance's own step: Lightning calls optimizer.step(closure=…)
    return optimizer

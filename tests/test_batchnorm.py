"""Our BatchNorm layer against torch.nn.BatchNorm1d/2d and against statistics recomputed here."""

from __future__ import annotations

import pytest
import torch
from conftest import DEVICES
from torch import nn

from bnsweep.nn import (
    MLP,
    BatchNorm,
    BatchNorm1d,
    BatchNorm2d,
    LeNet,
    make_batchnorm,
    recompute_population_stats,
)
from bnsweep.nn.functional import batch_norm_train

SHAPES = {"1d": (6,), "2d": (4, 5, 5)}  # per-sample shape after N; C first
TOL = dict(rtol=1e-5, atol=1e-5)
# γ and β gradients are sums over up to 800 products of mixed signs, accumulated over 20 steps:
# float32 reductions in another order differ at ~1e-5 (against a float64 reference, one step:
# torch's own error up to 5e-6, ours up to 1.3e-5). In float64 every quantity must agree to 1e-9.
PARAM_GRAD_TOL = {
    torch.float32: dict(rtol=1e-4, atol=5e-5),
    torch.float64: dict(rtol=1e-9, atol=1e-9),
}
DTYPE_TOL = {torch.float32: TOL, torch.float64: dict(rtol=1e-9, atol=1e-9)}


def _pair(kind: str, ours_kwargs: dict, torch_kwargs: dict, affine: bool):
    c = SHAPES[kind][0]
    ours = (BatchNorm1d if kind == "1d" else BatchNorm2d)(c, affine=affine, **ours_kwargs)
    ref = (nn.BatchNorm1d if kind == "1d" else nn.BatchNorm2d)(c, affine=affine, **torch_kwargs)
    if affine:  # non-trivial γ, β so their gradients and effect are tested
        g = torch.Generator().manual_seed(1)
        weight, bias = torch.rand(c, generator=g) + 0.5, torch.randn(c, generator=g)
        with torch.no_grad():
            for layer in (ours, ref):
                layer.weight.copy_(weight)
                layer.bias.copy_(bias)
    return ours, ref


CONFIGS = [
    ({"momentum": 0.1}, {"momentum": 0.1}),
    ({"momentum": 0.9}, {"momentum": 0.9}),
    ({"estimator": "cumulative"}, {"momentum": None}),
    ({"momentum": None}, {"momentum": None}),
]


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=["f32", "f64"])
@pytest.mark.parametrize("affine", [True, False], ids=["affine", "no-affine"])
@pytest.mark.parametrize("cfg", CONFIGS, ids=["m0.1", "m0.9", "cumulative", "momentum-None"])
@pytest.mark.parametrize("kind", ["1d", "2d"])
@pytest.mark.parametrize("device", DEVICES)
def test_matches_torch_over_training_then_eval(kind, cfg, affine, dtype, device):
    ours, ref = _pair(kind, cfg[0], cfg[1], affine)
    ours, ref = ours.to(device, dtype), ref.to(device, dtype)
    tol, param_tol = DTYPE_TOL[dtype], PARAM_GRAD_TOL[dtype]
    g = torch.Generator().manual_seed(0)
    for step in range(20):
        n = [2, 3, 8, 17, 32][step % 5]
        x = (torch.randn(n, *SHAPES[kind], generator=g) * 3 + 1.5).to(device, dtype)
        x.requires_grad_()
        x_ref = x.detach().clone().requires_grad_()
        grad = torch.randn(n, *SHAPES[kind], generator=g).to(device, dtype)
        y, y_ref = ours(x), ref(x_ref)
        torch.testing.assert_close(y, y_ref, **tol)
        (y * grad).sum().backward()
        (y_ref * grad).sum().backward()
        torch.testing.assert_close(x.grad, x_ref.grad, **tol)
        if affine:
            torch.testing.assert_close(ours.weight.grad, ref.weight.grad, **param_tol)
            torch.testing.assert_close(ours.bias.grad, ref.bias.grad, **param_tol)
        torch.testing.assert_close(ours.running_mean, ref.running_mean, **tol)
        torch.testing.assert_close(ours.running_var, ref.running_var, **tol)
        for buffer in (ours.running_mean, ours.running_var):  # updated outside autograd
            assert buffer.grad_fn is None and not buffer.requires_grad
        assert ours.num_batches_tracked.item() == ref.num_batches_tracked.item() == step + 1
    ours.eval(), ref.eval()
    x = (torch.randn(7, *SHAPES[kind], generator=g) * 3 + 1.5).to(device, dtype)
    torch.testing.assert_close(ours(x), ref(x), **tol)


def test_no_running_stats_normalises_with_batch_in_eval():
    ours, ref = (
        BatchNorm2d(4, track_running_stats=False),
        nn.BatchNorm2d(4, track_running_stats=False),
    )
    ours.eval(), ref.eval()
    x = torch.randn(5, 4, 3, 3) * 2 + 1
    torch.testing.assert_close(ours(x), ref(x), **TOL)
    assert ours.running_mean is None and "running_mean" not in ours.state_dict()


@pytest.mark.parametrize("k", [1, 3, 5])
@pytest.mark.parametrize("kind", ["1d", "2d"])
def test_window_averages_last_k_batches(kind, k):
    layer = make_batchnorm(SHAPES[kind][0], kind == "2d", estimator="window", window=k)
    dims = (0,) if kind == "1d" else (0, 2, 3)
    g = torch.Generator().manual_seed(3)
    means, variances = [], []
    for step in range(9):
        x = torch.randn(8 + step, *SHAPES[kind], generator=g) * (1 + step) + step
        layer(x)
        means.append(x.mean(dims))
        variances.append(x.var(dims, unbiased=True))
        seen = min(step + 1, k)  # before k batches, the average of those seen
        torch.testing.assert_close(layer.running_mean, torch.stack(means[-seen:]).mean(0), **TOL)
        torch.testing.assert_close(layer.running_var, torch.stack(variances[-seen:]).mean(0), **TOL)
    layer.eval()
    x = torch.randn(4, *SHAPES[kind], generator=g)
    shape = (1, -1) if kind == "1d" else (1, -1, 1, 1)
    expected = (x - layer.running_mean.view(shape)) / (
        layer.running_var.view(shape) + layer.eps
    ).sqrt()
    torch.testing.assert_close(layer(x), expected, **TOL)


def test_window_survives_checkpoint_round_trip(tmp_path):
    a = BatchNorm1d(5, estimator="window", window=4)
    g = torch.Generator().manual_seed(0)
    for _ in range(6):
        a(torch.randn(10, 5, generator=g))
    torch.save(a.state_dict(), tmp_path / "bn.pt")
    b = BatchNorm1d(5, estimator="window", window=4)
    b.load_state_dict(torch.load(tmp_path / "bn.pt", weights_only=True))
    for key in ("window_mean", "window_var", "running_mean", "running_var", "num_batches_tracked"):
        torch.testing.assert_close(getattr(a, key), getattr(b, key))
    x = torch.randn(10, 5, generator=g) * 4
    a(x), b(x)  # the next update drops the same oldest batch in both
    torch.testing.assert_close(a.running_mean, b.running_mean)
    torch.testing.assert_close(a.running_var, b.running_var)


@pytest.mark.parametrize("estimator", ["momentum", "cumulative", "window"])
def test_state_dict_moves_both_ways_with_torch(estimator):
    ours = BatchNorm2d(3, estimator=estimator, momentum=0.3)
    ref = nn.BatchNorm2d(3, momentum=0.3)
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        ours.weight.copy_(torch.rand(3) + 0.5)
        ours.bias.copy_(torch.randn(3))
    for _ in range(3):
        ours(torch.randn(6, 3, 4, 4, generator=g) * 2 + 1)
    # ours -> torch: torch ignores nothing it needs; window buffers are ours only
    sd = {k: v for k, v in ours.state_dict().items() if not k.startswith("window_")}
    ref.load_state_dict(sd)
    ours.eval(), ref.eval()
    x = torch.randn(5, 3, 4, 4, generator=g)
    torch.testing.assert_close(ours(x), ref(x), **TOL)
    # torch -> ours, strict: the same eval output, and training continues from torch's estimate
    ref.train()
    for _ in range(2):
        ref(torch.randn(6, 3, 4, 4, generator=g) + 3)
    back = BatchNorm2d(3, estimator=estimator, momentum=0.3)
    back.load_state_dict(ref.state_dict())
    ref.eval(), back.eval()
    torch.testing.assert_close(back(x), ref(x), **TOL)
    assert back.num_batches_tracked.item() == 5
    if estimator == "window":
        back.train()
        xb = torch.randn(6, 3, 4, 4, generator=g)
        back(xb)  # window of 5: the 5 seen slots average to torch's estimate, then one new batch
        expected = (ref.running_mean * 4 + xb.mean((0, 2, 3))) / 5
        torch.testing.assert_close(back.running_mean, expected, **TOL)


def test_gradcheck_float64():
    for shape, cls in [((6, 4), BatchNorm1d), ((4, 3, 3, 2), BatchNorm2d)]:
        layer = cls(shape[1], dtype=torch.float64)
        with torch.no_grad():
            layer.weight.uniform_(0.5, 1.5)
            layer.bias.normal_()
        x = torch.randn(*shape, dtype=torch.float64, requires_grad=True)
        assert torch.autograd.gradcheck(layer, (x,))
        w = layer.weight.detach().clone().requires_grad_()
        b = layer.bias.detach().clone().requires_grad_()
        assert torch.autograd.gradcheck(
            lambda i, w, b: batch_norm_train(i, w, b, 1e-5)[0], (x, w, b)
        )


def test_forward_does_not_call_torch_batch_norm(monkeypatch):
    def forbidden(*a, **k):
        raise AssertionError("torch's batch_norm was called")

    monkeypatch.setattr(torch.nn.functional, "batch_norm", forbidden)
    monkeypatch.setattr(torch, "batch_norm", forbidden)
    layer = BatchNorm2d(3)
    y = layer(torch.randn(4, 3, 2, 2, requires_grad=True))
    y.sum().backward()
    layer.eval()
    layer(torch.randn(4, 3, 2, 2))


def test_eval_does_not_change_statistics_and_repr_shows_settings():
    layer = BatchNorm1d(4, estimator="window", window=3, eps=1e-8)
    layer(torch.randn(8, 4))
    before = layer.state_dict()
    before = {k: v.clone() for k, v in before.items()}
    layer.eval()
    layer(torch.randn(8, 4) * 10)
    for k, v in layer.state_dict().items():
        torch.testing.assert_close(v, before[k])
    assert "estimator=window, window=3" in repr(layer) and "eps=1e-08" in repr(layer)


def test_reset_running_stats_and_parameters():
    layer = BatchNorm1d(3, estimator="window", window=2)
    with torch.no_grad():
        layer.weight.fill_(3)
    layer(torch.randn(5, 3) + 4)
    layer.reset_running_stats()
    assert layer.running_mean.eq(0).all() and layer.running_var.eq(1).all()
    assert layer.num_batches_tracked.item() == 0 and layer.window_mean.eq(0).all()
    assert layer.weight.eq(3).all()  # parameters untouched by reset_running_stats
    layer.reset_parameters()
    assert layer.weight.eq(1).all() and layer.bias.eq(0).all()


@pytest.mark.parametrize(
    "make, x, message",
    [
        (
            lambda: BatchNorm(4),
            torch.randn(3, 4, 1, 1, 1, 2),
            "got a 6-D tensor of shape (3, 4, 1, 1, 1, 2)",
        ),
        (
            lambda: BatchNorm1d(4),
            torch.randn(3, 4, 2, 2),
            "expects (N, C) or (N, C, L) input, got a 4-D",
        ),
        (lambda: BatchNorm2d(4), torch.randn(3, 4), "expects (N, C, H, W) input, got a 2-D"),
        (lambda: BatchNorm2d(4), torch.randn(3, 5, 2, 2), "got input with 5 channels"),
        (lambda: BatchNorm1d(4), torch.randn(1, 4), "more than 1 value per channel"),
        (lambda: BatchNorm2d(4), torch.randn(1, 4, 1, 1), "more than 1 value per channel"),
    ],
)
def test_input_errors(make, x, message):
    with pytest.raises(ValueError) as err:
        make()(x)
    assert message in str(err.value)


def test_single_value_per_channel_is_fine_in_eval():
    layer = BatchNorm1d(4).eval()
    assert layer(torch.randn(1, 4)).shape == (1, 4)


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"momentum": 1.5}, "momentum must be a number in [0, 1] or None, got 1.5"),
        ({"momentum": -0.1}, "momentum must be a number in [0, 1] or None, got -0.1"),
        ({"estimator": "window", "window": 0}, "window must be a positive integer, got 0"),
        ({"window": 2.5}, "window must be a positive integer, got 2.5"),
        ({"eps": 0}, "eps must be a number > 0, got 0"),
        ({"eps": -1e-5}, "eps must be a number > 0, got -1e-05"),
        ({"estimator": "ema"}, "estimator must be one of momentum, window, cumulative, got 'ema'"),
    ],
)
def test_constructor_errors(kwargs, message):
    with pytest.raises(ValueError) as err:
        BatchNorm1d(4, **kwargs)
    assert str(err.value) == message


def test_population_stats_equal_direct_average():
    """Alg. 2: E[x] = mean of batch means, Var[x] = mean of unbiased batch variances."""
    torch.manual_seed(0)
    net = MLP(bn=["fc1"], norm=lambda c, s: make_batchnorm(c, s, estimator="window", window=2))
    batches = [torch.rand(30, 1, 28, 28) for _ in range(7)]
    with torch.no_grad():  # the first BN sees fc1's affine output: compute it directly
        pre = [net.fc1.affine(b.flatten(1)) for b in batches]
    expected_mean = torch.stack([p.mean(0) for p in pre]).mean(0)
    expected_var = torch.stack([p.var(0, unbiased=True) for p in pre]).mean(0)
    net.eval()
    weights = {k: v.clone() for k, v in net.named_parameters()}
    assert recompute_population_stats(net, [(b, None) for b in batches]) == 7
    bn = net.fc1.bn
    torch.testing.assert_close(bn.running_mean, expected_mean, **TOL)
    torch.testing.assert_close(bn.running_var, expected_var, **TOL)
    assert bn.estimator == "window" and not net.training  # restored
    for k, v in net.named_parameters():
        assert torch.equal(v, weights[k])  # weights frozen
    bn.train()  # the window was refilled with the population estimate
    torch.testing.assert_close(bn.window_mean.mean(0), expected_mean, **TOL)


def test_population_stats_for_torch_layers_and_deep_nets():
    """Every layer, ours or torch's, gets the same population statistics over the same pass."""
    torch.manual_seed(1)
    ours = LeNet(bn=["conv1", "conv2", "fc1", "fc2"], norm=lambda c, s: make_batchnorm(c, s))
    torch.manual_seed(1)
    ref = LeNet(
        bn=["conv1", "conv2", "fc1", "fc2"],
        norm=lambda c, s: (nn.BatchNorm2d if s else nn.BatchNorm1d)(c, momentum=0.5),
    )
    batches = [torch.rand(16, 1, 28, 28) for _ in range(5)]
    recompute_population_stats(ours, batches)
    recompute_population_stats(ref, batches)
    for name in ("conv1", "conv2", "fc1", "fc2"):
        a, b = getattr(ours, name).bn, getattr(ref, name).bn
        torch.testing.assert_close(a.running_mean, b.running_mean, **TOL)
        torch.testing.assert_close(a.running_var, b.running_var, **TOL)
        assert b.momentum == 0.5


def test_eval_transform_cache_follows_every_change():
    """Evaluation without autograd reuses the folded (scale, shift); any change to the running
    statistics, γ, β or the dtype must show in the next output, as in torch's layer."""
    ours, ref = BatchNorm2d(4), nn.BatchNorm2d(4)
    x = torch.randn(8, 4, 3, 3) * 2 + 1

    def agree() -> None:
        ours.eval(), ref.eval()
        with torch.no_grad():
            torch.testing.assert_close(ours(x), ref(x), **TOL)
        with torch.inference_mode():  # how Lightning validates
            torch.testing.assert_close(ours(x), ref(x), **TOL)
        xg = x.clone().requires_grad_()  # eval with autograd: γ gets its gradient
        ours(xg).sum().backward()
        assert ours.weight.grad is not None
        ours.weight.grad = None

    agree()
    for _ in range(2):  # running statistics change in training
        ours.train(), ref.train()
        ours(x * 1.5 + 0.3), ref(x * 1.5 + 0.3)
        agree()
    with torch.no_grad():  # γ and β changed in place
        for layer in (ours, ref):
            layer.weight.mul_(2.0)
            layer.bias.add_(0.5)
    agree()
    ref.running_mean.fill_(0.7)
    ours.load_state_dict(ref.state_dict())
    agree()
    ours, ref = ours.double(), ref.double()
    x = x.double()
    agree()


@pytest.mark.parametrize("device", DEVICES)
def test_compiled_training_function_matches_eager(device):
    """Under torch.compile the training function takes its traced path (no buffer reuse):
    the same output and gradients as eager mode, on the CPU and on a GPU."""
    torch._dynamo.reset()
    g = torch.Generator().manual_seed(4)
    for shape in [(64, 30), (16, 6, 5, 5)]:
        c = shape[1]
        x = (torch.randn(shape, generator=g) * 3 + 1).to(device).requires_grad_()
        w = (torch.rand(c, generator=g) + 0.5).to(device).requires_grad_()
        b = torch.randn(c, generator=g).to(device).requires_grad_()
        grad = torch.randn(shape, generator=g).to(device)
        eager = batch_norm_train(x, w, b, 1e-5)
        compiled = torch.compile(batch_norm_train)(x, w, b, 1e-5)
        for a, e in zip(compiled, eager):
            torch.testing.assert_close(a, e, **TOL)
        expected = torch.autograd.grad(eager[0], (x, w, b), grad)
        got = torch.autograd.grad(compiled[0], (x, w, b), grad)
        for a, e in zip(got, expected):
            torch.testing.assert_close(a, e, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("kind", ["1d", "2d"])
def test_bfloat16_training_step_matches_torch_in_bfloat16(kind):
    """A training step in bfloat16 (output, input gradient, running statistics) is as near the
    float64 truth as torch's own bfloat16 layer, within bfloat16's rounding."""
    shape = (64, 6) if kind == "1d" else (64, 6, 28, 28)
    g = torch.Generator().manual_seed(0)
    x64 = torch.randn(shape, generator=g, dtype=torch.float64) * 3 + 5
    grad = torch.randn(shape, generator=g, dtype=torch.float64)
    out = {}
    for name, layer, dtype in (
        ("ours", make_batchnorm(6, kind == "2d"), torch.bfloat16),
        ("torch", (nn.BatchNorm1d if kind == "1d" else nn.BatchNorm2d)(6), torch.bfloat16),
        ("truth", (nn.BatchNorm1d if kind == "1d" else nn.BatchNorm2d)(6), torch.float64),
    ):
        layer = layer.to(dtype)
        x = x64.to(dtype).requires_grad_()
        y = layer(x)
        y.backward(grad.to(dtype))
        out[name] = [t.double() for t in (y, x.grad, layer.running_mean, layer.running_var)]
    for what, ours, ref, truth in zip(("y", "grad", "mean", "var"), *out.values()):
        ours_err = (ours - truth).abs().max().item()
        torch_err = (ref - truth).abs().max().item()
        assert ours_err <= 2 * torch_err + 1e-2 * truth.abs().max().item(), (
            what,
            ours_err,
            torch_err,
        )

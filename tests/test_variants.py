"""The normalization variants and the recipes they came with, each against a reference: ghost
BN against BN on each slice, batch renorm against a float64 hand computation of Ioffe (2017)'s
Alg. 1, PreciseBN against a plain average recomputed here, GroupNorm / LayerNorm against
torch's layers, and the activation / BN-position axes, per-pixel standardisation, orthogonal
and per-layer init, Adagrad's accumulator start."""

from __future__ import annotations

import copy
import json
from functools import partial

import pytest
import torch
import torch.nn.functional as F
from conftest import compose_cfg
from helpers import SHORT, refused_with
from torch import nn

from bnsweep.config.checks import ConfigError, validate
from bnsweep.nn import (
    MLP,
    BatchNorm1d,
    BatchNorm2d,
    InitCNN,
    LeNet,
    make_batch_renorm,
    make_batchnorm,
    make_group_norm,
    make_layer_norm,
    recompute_population_stats,
)
from bnsweep.nn.layers import ACTIVATIONS


def _grads(layer: nn.Module, x: torch.Tensor, g: torch.Tensor):
    x = x.detach().clone().requires_grad_(True)
    y = layer(x)
    y.backward(g)
    return y.detach(), x.grad, layer.weight.grad, layer.bias.grad


# ---------------------------------------------------------------- ghost batch norm


@pytest.mark.parametrize("shape", [(32, 6, 5, 5), (32, 20)])
@pytest.mark.parametrize("estimator", ["momentum", "window", "cumulative"])
def test_ghost_bn_equals_bn_on_each_slice_and_bn_itself_when_k_is_n(shape, estimator):
    Layer = BatchNorm2d if len(shape) == 4 else BatchNorm1d
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(shape, generator=gen) * 3 + 1
    g = torch.randn(shape, generator=gen)
    # k = N: our BN, outputs, gradients and running statistics
    ghost, plain = (
        Layer(shape[1], estimator=estimator, ghost_batch_size=32),
        Layer(shape[1], estimator=estimator),
    )
    whole = _grads(plain, x, g)
    for a, b in zip(_grads(ghost, x, g), whole):
        torch.testing.assert_close(a, b, rtol=0, atol=0)
    torch.testing.assert_close(ghost.running_var, plain.running_var, rtol=0, atol=0)
    # k = 8: BN applied to each slice of 8 separately, one estimator update per slice in order
    ghost = Layer(shape[1], estimator=estimator, ghost_batch_size=8)
    y, gx, gw, gb = _grads(ghost, x, g)
    ref = Layer(shape[1], estimator=estimator)
    parts = [_grads(ref, xs, gs) for xs, gs in zip(x.split(8), g.split(8))]
    # (the reference layer accumulates γ, β gradients over the four slices, as ghost BN does)
    torch.testing.assert_close(y, torch.cat([p[0] for p in parts]), rtol=0, atol=1e-6)
    torch.testing.assert_close(gx, torch.cat([p[1] for p in parts]), rtol=0, atol=1e-6)
    torch.testing.assert_close(gw, ref.weight.grad, rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(gb, ref.bias.grad, rtol=1e-6, atol=1e-6)
    assert int(ghost.num_batches_tracked) == int(ref.num_batches_tracked) == 4
    for name in ("running_mean", "running_var"):
        torch.testing.assert_close(getattr(ghost, name), getattr(ref, name), rtol=1e-6, atol=1e-7)
    # and the slices' statistics differ from the whole batch's: the test can fail
    assert not torch.allclose(y, whole[0], atol=1e-3)


def test_ghost_bn_refuses_a_batch_it_does_not_divide():
    layer = BatchNorm1d(4, ghost_batch_size=8)
    with pytest.raises(
        ValueError, match=r"bn.ghost_batch_size=8 must divide the training batch, got a batch of 12"
    ):
        layer(torch.randn(12, 4))
    layer.eval()(torch.randn(12, 4))  # eval reads the running statistics: any batch


# ---------------------------------------------------------------- batch renormalization


def _renorm_by_hand(x, gamma, beta, mu, sigma, r_max, d_max, eps, g):
    """Ioffe (2017), Alg. 1 in float64, channel by channel over (N, C) input, and its backward
    with r and d held constant: y = γ(x̂·r + d) + β with x̂ = (x − μ_B)/σ_B, so
    ∂ℓ/∂x = γ·r/σ_B · (g − mean(g) − x̂·mean(g·x̂))."""
    x, g = x.double(), g.double()
    mean = x.mean(0)
    std = ((x - mean) ** 2).mean(0).add(eps).sqrt()
    r = (std / sigma).clamp(1 / r_max, r_max)
    d = ((mean - mu) / sigma).clamp(-d_max, d_max)
    xhat = (x - mean) / std
    y = gamma * (xhat * r + d) + beta
    gx = gamma * r / std * (g - g.mean(0) - xhat * (g * xhat).mean(0))
    return y, gx, (g * (xhat * r + d)).sum(0), g.sum(0), r, d


def test_batch_renorm_equals_the_papers_algorithm_with_its_clipping():
    gen = torch.Generator().manual_seed(1)
    n, c = 16, 6
    x = (torch.randn(n, c, generator=gen, dtype=torch.float64) * torch.tensor([0.2, 1, 5, 1, 1, 1])
         + torch.tensor([0, 0, 0, 4, -4, 0.3]))  # fmt: skip
    g = torch.randn(n, c, generator=gen, dtype=torch.float64)
    layer = make_batch_renorm(
        c, False, r_max=2.0, d_max=1.5, warmup=0, r_max_steps=0, d_max_steps=0
    ).double()
    with torch.no_grad():
        layer.weight.copy_(torch.linspace(0.5, 2, c))
        layer.bias.copy_(torch.linspace(-1, 1, c))
    mu, var = layer.running_mean.clone(), layer.running_var.clone()  # 0 and 1 at the start
    y, gx, gw, gb = _grads(layer, x, g)
    ref_y, ref_gx, ref_gw, ref_gb, r, d = _renorm_by_hand(
        x,
        layer.weight.detach(),
        layer.bias.detach(),
        mu,
        (var + layer.eps).sqrt(),
        2.0,
        1.5,
        layer.eps,
        g,
    )
    # channel 0 clips r at 1/r_max, channel 2 at r_max, channels 3 and 4 clip d: the clipping is
    # exercised; channel 5 is unclipped
    assert r[0] == 0.5 and r[2] == 2.0 and d[3] == 1.5 and d[4] == -1.5 and 0.5 < r[5] < 2
    for ours, ref in [(y, ref_y), (gx, ref_gx), (gw, ref_gw), (gb, ref_gb)]:
        torch.testing.assert_close(ours, ref, rtol=1e-10, atol=1e-10)
    # the running statistics: the momentum estimator's update with the batch's
    torch.testing.assert_close(layer.running_mean, 0.9 * mu + 0.1 * x.mean(0))
    torch.testing.assert_close(layer.running_var, 0.9 * var + 0.1 * x.var(0))


def test_batch_renorm_with_unit_limits_is_bn_and_follows_the_papers_schedule():
    x, g = torch.randn(32, 5, 4, 4), torch.randn(32, 5, 4, 4)
    renorm = make_batch_renorm(
        5, True, r_max=1.0, d_max=0.0, warmup=0, r_max_steps=0, d_max_steps=0
    )
    bn = make_batchnorm(5, True)
    for _ in range(3):  # the running statistics then differ from the batch's: r, d would act
        for a, b in zip(_grads(renorm, x * 2 + 1, g), _grads(bn, x * 2 + 1, g)):
            torch.testing.assert_close(a, b, rtol=0, atol=0)
    torch.testing.assert_close(renorm.running_var, bn.running_var, rtol=0, atol=0)
    # r_max 1 → 3 by 40k and d_max 0 → 5 by 25k, after 5k steps of plain BN
    paper = make_batch_renorm(5, True)
    assert paper.limits(0) == paper.limits(4999) == (1.0, 0.0)
    assert paper.limits(15000) == (1.0 + 2 * 10000 / 35000, 5 * 10000 / 20000)
    assert paper.limits(25000) == (1.0 + 2 * 20000 / 35000, 5.0)
    assert paper.limits(40000) == paper.limits(10**6) == (3.0, 5.0)
    # the schedule counts the layer's training steps
    layer = make_batch_renorm(5, True, warmup=2, r_max_steps=4, d_max_steps=4)
    for step in range(5):
        layer(x)
        assert layer._limits == layer.limits(step)
    assert layer._limits == (3.0, 5.0)


# ---------------------------------------------------------------- PreciseBN and Alg. 2


def test_recomputed_statistics_are_the_plain_average_over_the_same_batches():
    """What PreciseBN leaves in each BN layer: E_B[μ_B] and E_B[unbiased σ²_B] of its input
    over the K batches, the network in training mode with the weights frozen (recomputed here
    in float64 from the inputs each layer received)."""
    torch.manual_seed(0)
    net = LeNet(bn=["conv1", "conv2", "fc1", "fc2"], norm=make_batchnorm)
    batches = [torch.rand(16, 1, 28, 28) for _ in range(5)]
    ref = copy.deepcopy(net).train()
    seen: dict[str, list] = {}
    hooks = [m.bn.register_forward_pre_hook(lambda mod, inp, name=name: seen.setdefault(name, []).append(inp[0].double()))
             for name, m in ref.named_children() if hasattr(m, "bn")]  # fmt: skip
    with torch.no_grad():
        for x in batches:
            ref(x)
    for h in hooks:
        h.remove()
    weights = copy.deepcopy(net.state_dict())
    assert recompute_population_stats(net, batches) == 5
    for name, inputs in seen.items():
        dims = (0, 2, 3) if inputs[0].dim() == 4 else (0,)
        mean = torch.stack([x.mean(dims) for x in inputs]).mean(0)
        var = torch.stack([x.var(dims) for x in inputs]).mean(0)  # unbiased per batch
        bn = getattr(net, name).bn
        torch.testing.assert_close(bn.running_mean.double(), mean, rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(bn.running_var.double(), var, rtol=1e-5, atol=1e-6)
    for key, value in net.state_dict().items():
        if "running" not in key and "num_batches" not in key:
            assert torch.equal(value, weights[key]), key  # the weights frozen


def _short_run(make_cfg, tmp_path, name, *overrides):
    from bnsweep.run.training import run

    cfg = make_cfg(f"run_dir={tmp_path / name}", "model=lenet_fc_bn2", *SHORT, *overrides)
    return run(cfg), tmp_path / name


def test_precise_bn_leaves_training_bit_identical_and_scores_with_the_recomputed_statistics(
    make_cfg, tmp_path
):
    plain, plain_dir = _short_run(make_cfg, tmp_path, "plain")
    precise, precise_dir = _short_run(make_cfg, tmp_path, "precise", "bn.precise_batches=4")
    # training computes exactly what it computes without PreciseBN: curves and final state
    for key in ("train/loss", "train/acc", "val/acc", "val/loss"):
        assert precise["history"][key] == plain["history"][key], key
    assert precise["test/acc"] == plain["test/acc"]
    a = torch.load(plain_dir / "ckpt" / "last.ckpt", weights_only=True)["state_dict"]
    b = torch.load(precise_dir / "ckpt" / "last.ckpt", weights_only=True)["state_dict"]
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    # the second score: the final weights with statistics recomputed over the first 4 batches of
    # the first epoch's order, scored here on the test batches the run used (limit_test_batches=1)
    from bnsweep.run.training import build

    cfg = make_cfg("model=lenet_fc_bn2", *SHORT)
    module, data = build(cfg)
    module.net.load_state_dict({k[len("net.") :]: v for k, v in b.items()})
    data.prepare_data(), data.setup()
    loader = data.train_dataloader()
    recompute_population_stats(module.net, [batch for _, batch in zip(range(4), loader)])
    module.net.eval()
    x, y = next(iter(data.test_dataloader()))
    with torch.no_grad():
        acc = (module.net(x).argmax(1) == y).float().mean().item()
    assert precise["test/acc_precise"] == pytest.approx(acc, abs=1e-6)
    assert len(precise["history"]["val/acc_precise"]) == len(precise["history"]["val/acc"])
    assert precise["val/acc_precise"] == precise["history"]["val/acc_precise"][-1]
    # after 20 steps the momentum estimate lags the weights: the two scores differ
    assert precise["test/acc_precise"] != precise["test/acc"]


def test_population_is_alg2_and_cumulative_is_not(make_cfg, tmp_path):
    """bn=population scores val/acc and test/acc with statistics recomputed over every training
    batch with the final network (Alg. 2); the momentum estimate is kept as *_running."""
    pop, _ = _short_run(make_cfg, tmp_path, "pop", "bn=population", "data.train_size=640")
    running, _ = _short_run(
        make_cfg, tmp_path, "run", "bn.precise_batches=all", "data.train_size=640"
    )
    # the same training; the headline and the second score swap
    assert pop["history"]["train/loss"] == running["history"]["train/loss"]
    assert (
        pop["test/acc"] == running["test/acc_precise"]
        and pop["test/acc_running"] == running["test/acc"]
    )
    assert pop["history"]["val/acc"] == running["history"]["val/acc_precise"]


def test_torch_bn_with_momentum_null_is_accepted(cli, tmp_path):
    """torch's own cumulative mode: bn=torch bn.momentum=null (refused before)."""
    proc = cli(
        "train.py",
        "bn=torch",
        "bn.momentum=null",
        "model=lenet_bn1",
        *SHORT,
        f"run_dir={tmp_path / 'r'}",
        "logger=none",
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert json.loads((tmp_path / "r" / "metrics.json").read_text())["status"] == "finished"


# ---------------------------------------------------------------- GroupNorm and LayerNorm


def test_group_and_layer_norm_slots_equal_torchs_layers():
    gen = torch.Generator().manual_seed(2)
    x4, x2 = torch.randn(8, 6, 5, 5, generator=gen), torch.randn(8, 12, generator=gen)
    gn, ln4, ln2 = (
        make_group_norm(6, True, groups=3),
        make_layer_norm(6, True),
        make_layer_norm(12, False),
    )
    for layer in (gn, ln4, ln2):
        with torch.no_grad():
            layer.weight.copy_(torch.rand(layer.weight.shape, generator=gen) + 0.5)
            layer.bias.copy_(torch.randn(layer.bias.shape, generator=gen))
    torch.testing.assert_close(gn(x4), F.group_norm(x4, 3, gn.weight, gn.bias, 1e-5))
    ref = F.layer_norm(x4, (6, 5, 5), eps=1e-5) * ln4.weight.view(1, -1, 1, 1) + ln4.bias.view(
        1, -1, 1, 1
    )
    torch.testing.assert_close(ln4(x4), ref)  # over C·H·W, γ and β per channel
    torch.testing.assert_close(ln2(x2), F.layer_norm(x2, (12,), ln2.weight, ln2.bias, 1e-5))
    assert isinstance(ln2, nn.LayerNorm)
    net = LeNet(bn=["conv2", "fc1"], norm=partial(make_group_norm, groups=4))
    assert isinstance(net.conv2.bn, nn.GroupNorm) and net.conv2.bn.num_groups == 4
    with pytest.raises(
        ValueError,
        match=r"bn.groups must be a positive integer dividing the channels of every normalised layer, got 4 for a layer of 6",
    ):
        LeNet(bn=["conv1"], norm=partial(make_group_norm, groups=4))


# ---------------------------------------------------------------- model axes


@pytest.mark.parametrize("net_class", [LeNet, MLP, InitCNN])
def test_activation_and_position_are_axes_and_the_defaults_are_unchanged(net_class):
    bn = ["fc1"]
    default = net_class(bn=bn, norm=make_batchnorm)
    own = nn.ReLU if net_class is InitCNN else nn.Sigmoid
    assert [type(c) for c in default.fc1.children()] == [nn.Linear, BatchNorm1d, own]
    post = net_class(bn=bn, norm=make_batchnorm, activation="tanh", bn_position="post")
    assert [type(c) for c in post.fc1.children()] == [nn.Linear, nn.Tanh, BatchNorm1d]
    assert all(not isinstance(m, (nn.Sigmoid, nn.ReLU)) for m in post.modules())
    # post: BN's output feeds the next layer, its input is the nonlinearity's output
    x = torch.rand(8, 1, 28, 28)
    seen = {}
    post.fc1.bn.register_forward_pre_hook(lambda m, inp: seen.setdefault("in", inp[0]))
    post(x)
    assert seen["in"].min() >= -1 and seen["in"].max() <= 1  # tanh's range
    with pytest.raises(
        ValueError,
        match=r"model.activation must be one of \['sigmoid', 'tanh', 'relu'\], got 'elu'",
    ):
        net_class(activation="elu")
    with pytest.raises(
        ValueError, match=r"model.bn_position must be one of \['pre', 'post'\], got 'mid'"
    ):
        net_class(bn=bn, norm=make_batchnorm, bn_position="mid")


def test_the_config_lists_the_networks_activations():
    from bnsweep.config.checks import ACTIVATIONS as NAMES

    assert tuple(ACTIVATIONS) == NAMES


def test_the_tanh_bn_mlp_trains(make_cfg, tmp_path):
    """REFERENCES §2's MLP: 784-100-100-100-10, BN → tanh, now one config."""
    from bnsweep.run.training import run

    cfg = make_cfg(f"run_dir={tmp_path / 'tanh'}", "model=mlp_bn", "model.activation=tanh", "data.train_size=6000",
                   "trainer.max_steps=300", "trainer.max_epochs=null", "trainer.limit_val_batches=2",
                   "trainer.limit_test_batches=2", "logger=none")  # fmt: skip
    record = run(cfg)
    assert record["test/acc"] > 0.85, record["test/acc"]  # chance is 0.1
    assert cfg.model.activation == "tanh" and cfg.model.bn == ["fc1", "fc2", "fc3"]


# ---------------------------------------------------------------- recipes


def test_per_pixel_standardisation_is_standard_scalers(make_cfg):
    from hydra.utils import instantiate

    data = instantiate(make_cfg("data.normalize=per_pixel", "data.train_size=2000").data)
    data.prepare_data(), data.setup()
    raw = data.tensors.images["x_train"].double().flatten(1) / 255
    mean, std = raw.mean(0), raw.std(0, correction=0)
    ref = (raw - mean) / torch.where(std > 0, std, torch.ones_like(std))  # a constant pixel: / 1
    ours = data.tensors["x_train"].double().flatten(1)
    torch.testing.assert_close(ours, ref, rtol=1e-5, atol=1e-5)
    assert (std == 0).any()  # MNIST's corners: the constant-pixel rule is exercised
    assert (
        ours.mean(0).abs().max() < 1e-5
        and ours[:, std > 0].std(0, correction=0).sub(1).abs().max() < 1e-4
    )
    x, _ = next(iter(data.train_dataloader()))  # the training batches are scaled the same
    assert x.dtype == torch.float32 and x.shape[1:] == (1, 28, 28)


def test_orthogonal_init_and_per_layer_scales():
    from bnsweep.nn.init import orthogonal, truncated_normal

    net = orthogonal(LeNet(), gain=2.0, generator=torch.Generator().manual_seed(0))
    w = net.fc2.affine.weight  # (84, 120): orthogonal rows
    torch.testing.assert_close(w @ w.T, 4 * torch.eye(84), atol=1e-5, rtol=0)
    conv = net.conv2.affine.weight.flatten(1)  # (16, 54)
    torch.testing.assert_close(conv @ conv.T, 4 * torch.eye(16), atol=1e-5, rtol=0)
    assert net.fc1.affine.bias.abs().max() == 0
    # the BN-CNN of REFERENCES §3: convs N(0, 0.1²) cut at ±0.2 with bias 0.1, fc1 std 0.05 cut
    # with bias 0, the output layer N(0, 0.05²) uncut
    layers = {
        "fc1": {"std": 0.05, "bias": 0.0},
        "fc2": {"std": 0.05, "bias": 0.0, "truncated": False},
    }
    cnn = truncated_normal(InitCNN(), 0.1, 0.1, torch.Generator().manual_seed(0), layers=layers)
    assert cnn.conv1.affine.weight.abs().max() <= 0.2 and cnn.conv1.affine.bias.eq(0.1).all()
    assert cnn.fc1.affine.weight.abs().max() <= 0.1 and cnn.fc1.affine.bias.eq(0).all()
    assert cnn.fc1.affine.weight.std().item() == pytest.approx(0.05 * 0.8796, rel=0.01)
    assert cnn.fc2.weight.abs().max() > 0.1  # 10,240 untruncated draws: some beyond 2σ
    assert cnn.fc2.weight.std().item() == pytest.approx(0.05, rel=0.03)
    with pytest.raises(
        ValueError,
        match=r"init.layers names unknown layer\(s\) \['fc9'\]; choose from \['conv1', 'conv2', 'fc1', 'fc2'\]",
    ):
        truncated_normal(InitCNN(), 0.1, layers={"fc9": {"std": 0.1}})


def test_adagrads_accumulator_start_is_a_listed_key(make_cfg):
    from hydra.utils import instantiate

    cfg = make_cfg("optimizer=adagrad", "optimizer.initial_accumulator_value=0.1")
    opt = instantiate(cfg.optimizer)([nn.Parameter(torch.zeros(3))])
    assert opt.state_dict()["state"][0]["sum"].eq(0.1).all()


# ---------------------------------------------------------------- config: refusals, old folders


BAD = [
    (["model.activation=elu"], "model.activation must be one of ['sigmoid', 'tanh', 'relu'], got 'elu'"),
    (["model.bn_position=mid"], "model.bn_position must be one of ['pre', 'post'], got 'mid'"),
    (["bn=ghost", "bn.ghost_batch_size=0"], "bn.ghost_batch_size must be a positive integer, got 0"),
    (["bn=ghost", "bn.ghost_batch_size=48"], "bn.ghost_batch_size must divide data.batch_size (64), got 48"),
    (["bn=ghost", "bn.ghost_batch_size=16"],
     "bn.ghost_batch_size must divide every training batch, got 16: the epoch's last batch has 24 images; data.drop_last=true leaves it out"),
    (["bn=renorm", "bn.r_max=0.5"], "bn.r_max must be a finite number >= 1, got 0.5"),
    (["bn=renorm", "bn.d_max=-1"], "bn.d_max must be a finite number >= 0, got -1"),
    (["bn=renorm", "bn.r_max_steps=10"], "bn.r_max_steps must be an integer >= bn.warmup (5000), got 10"),
    (["bn=group", "bn.groups=0"], "bn.groups must be a positive integer, got 0"),
    (["bn.precise_batches=0"], "bn.precise_batches must be null (off), a positive integer or all, got 0"),
    (["bn.evaluate=best"], "bn.evaluate must be one of ['running', 'precise'], got 'best'"),
    (["bn.evaluate=precise"], "bn.evaluate=precise needs bn.precise_batches (a positive integer or all), got bn.precise_batches=null"),
    (["bn=group", "+bn.precise_batches=5"], "bn.precise_batches=5 needs a layer with inference statistics; group norm has none"),
    (["data.normalize=whiten"], "data.normalize must be one of ['scale', 'standardize', 'per_pixel'], got 'whiten'"),
    (["init=orthogonal", "init.gain=0"], "init.gain must be a finite number > 0, got 0"),
    (["init.layers={fc1:{std:-1}}"], "init.layers must be null or a mapping {LAYER: {std: S, bias: B, truncated: true|false}}, got {'fc1': {'std': -1}}"),
    (["optimizer=adagrad", "optimizer.initial_accumulator_value=-1"],
     "optimizer.initial_accumulator_value must be a finite number >= 0, got -1"),
    (["bn=torch", "bn.momentum=2"], "bn.momentum must be a number in [0, 1], or null (the cumulative average), got 2"),
]  # fmt: skip


@pytest.mark.parametrize("args, message", BAD, ids=[" ".join(a) for a, _ in BAD])
def test_each_new_keys_bad_value_is_one_line(make_cfg, args, message):
    with pytest.raises(ConfigError) as e:
        validate(make_cfg(*args))
    assert str(e.value) == message


def test_refusals_through_the_command_line_leave_no_folder(cli, tmp_path):
    """A config check and a constructor's check (a group count LeNet's 6 channels refuse)."""
    for args, message in [
        (["bn=ghost", "bn.ghost_batch_size=16"], f"error: {BAD[4][1]}"),
        (["model=lenet_bn1", "bn=group", "bn.groups=4"],
         "error: bn.groups must be a positive integer dividing the channels of every normalised layer, got 4 for a layer of 6"),
        (["sweep.vectorize=true", "bn=layer", *SHORT],
         "error: bn=layer cannot be combined with sweep.vectorize=true (torch's LayerNorm does not stack by member); run its seeds as separate jobs"),
        (["sweep.vectorize=true", "bn.precise_batches=3", *SHORT],
         "error: bn.precise_batches=3 cannot be combined with sweep.vectorize=true; run its seeds as separate jobs"),
    ]:  # fmt: skip
        script = "sweep.py" if "sweep.vectorize=true" in args else "train.py"
        proc = cli(script, *args, timeout=120)
        assert refused_with(proc, message) or (
            proc.returncode == 2 and proc.stderr.strip().splitlines()[-1] == message
        ), proc.stderr[-2000:]
        outputs = tmp_path / "outputs"
        assert not outputs.exists() or not any(p.is_file() for p in outputs.rglob("*")), list(
            outputs.rglob("*")
        )


def test_a_folder_recorded_before_the_new_keys_existed_still_matches():
    """run_config.json of a run made before model.activation, model.bn_position, bn.precise_
    batches … existed: without them. The same run now compares equal (a resume continues it);
    a run that sets one of them to another value does not."""
    from bnsweep.run.folders import comparable, config_snapshot

    now = config_snapshot(compose_cfg("train", ["model=lenet_fc_bn2", "run_dir=/tmp/x"]))
    resolved = compose_cfg("train", ["model=lenet_fc_bn2", "run_dir=/tmp/x"])
    from omegaconf import OmegaConf

    full = OmegaConf.to_container(resolved, resolve=True)
    assert full["model"]["activation"] == "sigmoid" and full["bn"]["precise_batches"] is None
    old = copy.deepcopy(full)
    for group, key in [("model", "activation"), ("model", "bn_position"), ("bn", "precise_batches"),
                       ("bn", "evaluate"), ("init", "layers"), ("data", "drop_last")]:  # fmt: skip
        del old[group][key]
    del old["probes"]  # a group of later keys only
    assert comparable(old) == now
    tanh = config_snapshot(
        compose_cfg("train", ["model=lenet_fc_bn2", "run_dir=/tmp/x", "model.activation=tanh"])
    )
    assert tanh != now and tanh["model"]["activation"] == "tanh"
    cnn = config_snapshot(
        compose_cfg("train", ["model=cnn", "run_dir=/tmp/x", "model.activation=relu"])
    )
    assert "activation" not in cnn["model"]  # the CNN's own nonlinearity


def test_a_sweep_over_the_variants_names_each_in_the_report_and_hparams(cli, tmp_path):
    """bn=ghost,renorm,population,layer in one sweep: each a point of the report, a value of
    the HPARAMS tab's bn, and bn=population's runs record both scores."""
    from helpers import read_summary, sweep_dir_of
    from test_sweep import hparams_experiment

    variants = ["ghost", "renorm", "population", "layer"]
    proc = cli("sweep.py", "-m", f"bn={','.join(variants)}", "model=lenet_bn2", "seeds=[0]", *SHORT,
               "data.train_size=640")  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    sweep = sweep_dir_of(tmp_path)
    assert sorted(r["bn"] for r in read_summary(sweep)) == sorted(variants)
    infos = {i.name: i for i in hparams_experiment(sweep / "aggregate").hparam_infos}
    assert sorted(v.string_value for v in infos["bn"].domain_discrete.values) == sorted(variants)
    pop = json.loads(next(sweep.glob("*bn=population*/metrics.json")).read_text())
    assert pop["hparams"]["bn"] == "population" and pop["test/acc_running"] is not None

"""The networks of the studies: shapes, BN placement, parameter counts, pluggable norm layers."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from bnsweep.nn import (
    MLP,
    BatchNorm,
    InitCNN,
    LeNet,
    block_names,
    capture_preactivations,
    count_parameters,
    make_batchnorm,
    make_torch_batchnorm,
    norm_layers,
)

LENET_VARIANTS = {
    "lenet": [],
    "lenet_bn1": ["conv1"],
    "lenet_bn2": ["conv1", "conv2"],
    "lenet_fc_bn1": ["conv1", "conv2", "fc1"],
    "lenet_fc_bn2": ["conv1", "conv2", "fc1", "fc2"],
}
CHANNELS = {"conv1": 6, "conv2": 16, "fc1": 120, "fc2": 84}


@pytest.mark.parametrize("factory", [make_batchnorm, make_torch_batchnorm], ids=["ours", "torch"])
@pytest.mark.parametrize("variant", LENET_VARIANTS)
def test_lenet_variants(variant, factory):
    bn = LENET_VARIANTS[variant]
    net = LeNet(bn=bn, norm=factory)
    assert net(torch.rand(5, 1, 28, 28)).shape == (5, 10)
    norms = norm_layers(net)
    assert list(norms) == [f"{name}.bn" for name in bn]  # number and position
    for name in bn:  # BN sits between the affine layer and the sigmoid
        children = list(dict(getattr(net, name).named_children()))
        assert children == ["affine", "bn", "act"]
        assert isinstance(getattr(net, name).act, nn.Sigmoid)
        assert getattr(net, name).bn.num_features == CHANNELS[name]
        kind = BatchNorm if factory is make_batchnorm else nn.modules.batchnorm._BatchNorm
        assert isinstance(getattr(net, name).bn, kind)
    assert count_parameters(net) == 81_290 + sum(2 * CHANNELS[n] for n in bn)


def test_lenet_layer_shapes_follow_the_reference():
    net = LeNet()
    shapes = {}
    for name in ("conv1", "pool1", "conv2", "pool2", "fc1", "fc2", "fc3"):
        getattr(net, name).register_forward_hook(
            lambda m, i, o, n=name: shapes.__setitem__(n, o.shape[1:])
        )
    net(torch.rand(2, 1, 28, 28))
    assert shapes == {
        "conv1": (6, 28, 28), "pool1": (6, 14, 14), "conv2": (16, 12, 12), "pool2": (16, 6, 6),
        "fc1": (120,), "fc2": (84,), "fc3": (10,),
    }  # fmt: skip
    assert net.conv2.affine.kernel_size == (3, 3) and isinstance(net.pool1, nn.AvgPool2d)


@pytest.mark.parametrize("bn", [[], ["conv1", "conv2"], ["conv1", "conv2", "fc1"]])
def test_init_cnn(bn):
    net = InitCNN(bn=bn, norm=make_batchnorm)
    assert net(torch.rand(3, 1, 28, 28)).shape == (3, 10)
    channels = {"conv1": 32, "conv2": 64, "fc1": 1024}
    assert count_parameters(net) == 3_274_634 + sum(2 * channels[n] for n in bn)
    assert list(norm_layers(net)) == [f"{n}.bn" for n in bn]
    assert net.dropout.p == 0.5 and isinstance(net.pool1, nn.MaxPool2d)


def test_init_cnn_dropout_is_seeded_and_off_in_eval():
    net = InitCNN()
    x = torch.rand(4, 1, 28, 28)
    torch.manual_seed(0)
    a = net(x)
    torch.manual_seed(0)
    b = net(x)
    torch.manual_seed(1)
    c = net(x)
    assert torch.equal(a, b) and not torch.equal(a, c)
    net.eval()
    assert torch.equal(net(x), net(x))


@pytest.mark.parametrize("bn", [[], ["fc1", "fc2", "fc3"]])
def test_mlp(bn):
    net = MLP(bn=bn, norm=make_batchnorm)
    assert net(torch.rand(3, 1, 28, 28)).shape == (3, 10)
    assert net(torch.rand(3, 784)).shape == (3, 10)
    assert count_parameters(net) == 99_710 + 2 * 100 * len(bn)
    assert list(norm_layers(net)) == [f"{n}.bn" for n in bn]


@pytest.mark.parametrize(
    "make, message",
    [
        (lambda: LeNet(bn=["fc3"], norm=make_batchnorm), "unknown layer(s) ['fc3']"),
        (lambda: LeNet(bn=["conv1", "conv1"], norm=make_batchnorm), "lists a layer twice"),
        (
            lambda: InitCNN(bn=["conv3"], norm=make_batchnorm),
            "choose from ['conv1', 'conv2', 'fc1']",
        ),
        (lambda: MLP(bn=["fc1"]), "no norm factory was given"),
        (lambda: InitCNN(dropout=1.0), "model.dropout must be in [0, 1), got 1.0"),
    ],
)
def test_network_errors(make, message):
    with pytest.raises(ValueError) as err:
        make()
    assert message in str(err.value)


@pytest.mark.parametrize("bn", [[], ["fc1", "fc2", "fc3"]])
def test_capture_preactivations_reads_sigmoid_input(bn):
    net = MLP(bn=bn, norm=make_batchnorm)
    x = torch.rand(8, 1, 28, 28)
    with capture_preactivations(net, ["fc3"]) as pre:
        out = net(x)
    # recompute the last hidden layer's sigmoid input by hand
    h = x.flatten(1)
    for name in ("fc1", "fc2"):
        h = getattr(net, name)(h)
    expected = net.fc3.affine(h)
    if bn:
        expected = net.fc3.bn(expected)
    torch.testing.assert_close(pre["fc3"], expected)
    torch.testing.assert_close(net.out(torch.sigmoid(pre["fc3"])), out)
    net(x)  # hooks removed after the block
    assert not net.fc3.act._forward_pre_hooks
    assert block_names(net) == ["fc1", "fc2", "fc3"]
    with capture_preactivations(net, ["out"]) as pre:  # any other module: its output
        out = net(x)
    torch.testing.assert_close(pre["out"], out)
    with pytest.raises(ValueError, match="no layer 'nope'; choose from \\['fc1', 'fc2', 'fc3'\\]"):
        with capture_preactivations(net, ["nope"]):
            pass


@pytest.mark.parametrize(
    "shape,kernel",
    [((64, 6, 28, 28), 2), ((64, 16, 12, 12), 2), ((4, 3, 12, 9), 3), ((2, 5, 8, 8), (2, 2))],
)
def test_tiling_avg_pool_is_torchs_bit_for_bit(shape, kernel):
    """LeNet's pooling takes the fast path; forward and input gradient are aten's exact bits."""
    from bnsweep.nn.layers import AvgPool2d

    torch.manual_seed(0)
    x = (torch.randn(shape) * 3 + 1).requires_grad_()
    x_ref = x.detach().clone().requires_grad_()
    y, y_ref = AvgPool2d(kernel)(x), nn.functional.avg_pool2d(x_ref, kernel)
    assert y.grad_fn is not None and "TilePool" in type(y.grad_fn).__name__  # the fast path ran
    g = torch.randn_like(y_ref)
    y.backward(g)
    y_ref.backward(g)
    assert torch.equal(y, y_ref)
    assert torch.equal(x.grad, x_ref.grad)


@pytest.mark.parametrize(
    "shape,kwargs",
    [((2, 3, 7, 7), {"kernel_size": 2}), ((2, 3, 8, 8), {"kernel_size": 3, "stride": 1}),
     ((2, 3, 8, 8), {"kernel_size": 2, "padding": 1}), ((3, 8, 8), {"kernel_size": 2})],
)  # fmt: skip
def test_avg_pool_other_configurations_are_torchs(shape, kwargs):
    from bnsweep.nn.layers import AvgPool2d

    x = torch.randn(shape)
    torch.testing.assert_close(AvgPool2d(**kwargs)(x), nn.AvgPool2d(**kwargs)(x), rtol=0, atol=0)

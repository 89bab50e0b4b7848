"""Weight-initialisation schemes: distribution, truncation, biases, seeding."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from bnsweep.nn import (
    InitCNN,
    LeNet,
    glorot_uniform,
    make_batchnorm,
    normal,
    torch_default,
    truncated_normal,
)

# std of N(0, σ²) truncated at ±2σ, in units of σ: what TF's truncated_normal(stddev=σ) yields
_phi = math.exp(-2) / math.sqrt(2 * math.pi)
TRUNC_STD = math.sqrt(1 - 2 * 2 * _phi / math.erf(2 / math.sqrt(2)))


@pytest.mark.parametrize("std", [1e-4, 0.1, 1.0])
def test_truncated_normal(std):
    net = InitCNN()
    truncated_normal(net, std=std, generator=torch.Generator().manual_seed(0))
    w = net.fc1.affine.weight  # 3.2M values
    assert abs(w.std().item() - TRUNC_STD * std) < 0.05 * TRUNC_STD * std
    assert abs(w.mean().item()) < 0.01 * std
    assert w.abs().max().item() <= 2 * std
    assert w.abs().max().item() > 1.99 * std  # truncated at 2σ, not narrower
    for m in net.modules():
        if isinstance(m, (nn.Conv2d, nn.Linear)):
            assert torch.all(m.bias == std)  # bias defaults to std, as in the init study


def test_truncated_normal_explicit_bias_and_bn_untouched():
    net = LeNet(bn=["conv1", "fc1"], norm=make_batchnorm)
    truncated_normal(net, std=0.3, bias=0.0)
    assert all(
        torch.all(m.bias == 0) for m in net.modules() if isinstance(m, (nn.Conv2d, nn.Linear))
    )
    assert torch.all(net.conv1.bn.weight == 1) and torch.all(net.conv1.bn.bias == 0)


def test_normal_is_untruncated_gaussian():
    net = InitCNN()
    normal(net, std=0.05, generator=torch.Generator().manual_seed(0))
    w = net.fc1.affine.weight.flatten()  # 3.2M values
    assert abs(w.std().item() - 0.05) < 0.01 * 0.05
    assert abs(w.mean().item()) < 0.01 * 0.05
    # untruncated: about 0.27 % of N(0, σ²) lies beyond 3σ, none would after a 2σ cut
    beyond = (w.abs() > 3 * 0.05).float().mean().item()
    assert 0.002 < beyond < 0.0034
    for m in net.modules():
        if isinstance(m, (nn.Conv2d, nn.Linear)):
            assert torch.all(m.bias == 0)
    again = normal(InitCNN(), std=0.05, generator=torch.Generator().manual_seed(0))
    assert torch.equal(again.fc1.affine.weight, net.fc1.affine.weight)


def test_glorot_uniform():
    net = LeNet()
    glorot_uniform(net, generator=torch.Generator().manual_seed(0))
    w = net.fc1.affine.weight  # fan_in 576, fan_out 120
    limit = math.sqrt(6 / (576 + 120))
    assert w.abs().max().item() <= limit
    assert abs(w.std().item() - limit / math.sqrt(3)) < 0.03 * limit / math.sqrt(3)
    conv = net.conv2.affine.weight  # fan_in 6·3·3, fan_out 16·3·3
    assert conv.abs().max().item() <= math.sqrt(6 / (54 + 144))
    assert all(
        torch.all(m.bias == 0) for m in net.modules() if isinstance(m, (nn.Conv2d, nn.Linear))
    )


@pytest.mark.parametrize(
    "scheme", [lambda n, g: truncated_normal(n, 0.1, generator=g), glorot_uniform, torch_default]
)
def test_same_seed_same_weights(scheme):
    a, b, c = LeNet(), LeNet(), LeNet()
    scheme(a, torch.Generator().manual_seed(0))
    scheme(b, torch.Generator().manual_seed(0))
    scheme(c, torch.Generator().manual_seed(1))
    for (k, pa), pb in zip(a.named_parameters(), b.parameters()):
        assert torch.equal(pa, pb), k
    assert not torch.equal(a.fc1.affine.weight, c.fc1.affine.weight)


def test_torch_default_keeps_torch_bounds():
    net = LeNet()
    torch_default(net, torch.Generator().manual_seed(0))
    bound = 1 / math.sqrt(576)  # kaiming_uniform(a=√5) gives U(±1/√fan_in)
    assert net.fc1.affine.weight.abs().max().item() <= bound
    assert net.fc1.affine.weight.abs().max().item() > 0.95 * bound


@pytest.mark.parametrize("std", [0, -1, "abc"])
def test_truncated_normal_rejects_bad_std(std):
    with pytest.raises(ValueError, match=f"init.std must be a number > 0, got {std!r}"):
        truncated_normal(LeNet(), std)

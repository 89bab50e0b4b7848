"""Estimators are objects found through a registry: a fourth one, defined here, needs no change
to bnsweep's code: one class, one YAML (tests/conf/bn/toy_last_batch.yaml), and bn=<name>."""

from __future__ import annotations

import pytest
import torch
from conftest import ROOT, compose_cfg
from torch import Tensor

from bnsweep.nn import BatchNorm, Estimator, norm_layers, register
from bnsweep.nn.estimators import ESTIMATORS, unregister
from bnsweep.nn.stacked import StackedNet


class LastBatch(Estimator):
    """The last training batch's statistics times ``scale``, with a buffer of its own (how
    many batches it has seen, per channel) to show that own buffers are kept and stacked."""

    name = "toy_last_batch"
    options = ("scale",)
    own_buffers = {"toy_seen": 0}

    def __init__(self, scale: float = 1.0) -> None:
        super().__init__(scale=scale)
        self.scale = scale

    def shapes(self, num_features: int) -> dict[str, tuple[int, ...]]:
        return {"toy_seen": (num_features,)}

    def update(self, buffers, mean: Tensor, var: Tensor) -> None:
        buffers["running_mean"].copy_(mean * self.scale)
        buffers["running_var"].copy_(var * self.scale)
        buffers["toy_seen"].add_(1)


@pytest.fixture
def toy():
    register(LastBatch)
    yield LastBatch
    unregister(LastBatch.name)  # the registry as the other tests know it


def test_a_registered_estimator_trains_through_the_compose_api(toy, tmp_path):
    cfg = compose_cfg("train", [f"hydra.searchpath=[file://{ROOT / 'tests' / 'conf'}]",
                                "model=lenet_fc_bn2", "bn=toy_last_batch", "bn.scale=2.0",
                                f"run_dir={tmp_path}"])  # fmt: skip
    from bnsweep.run.training import build_net

    net = build_net(cfg)
    layers = list(norm_layers(net).values())
    assert len(layers) == len(cfg.model.bn) > 0 and all(isinstance(m, BatchNorm) for m in layers)
    assert all(m.estimator == "toy_last_batch" and m.stats.scale == 2.0 for m in layers)
    assert "estimator=toy_last_batch, scale=2.0" in repr(layers[0])
    bn = net.fc1.bn
    seen = []  # the layer's input, batch by batch
    bn.register_forward_pre_hook(lambda module, args: seen.append(args[0].detach().double()))
    net.train()
    x = torch.rand(32, 1, 28, 28)
    net(x)
    net(x[:16])
    pre = seen[-1]  # the last batch's statistics, computed here in float64 from its input
    torch.testing.assert_close(bn.running_mean.double(), 2.0 * pre.mean(0), rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(bn.running_var.double(), 2.0 * pre.var(0, unbiased=True),
                               rtol=1e-5, atol=1e-6)  # fmt: skip
    assert torch.equal(bn.toy_seen, torch.full_like(bn.toy_seen, 2))
    assert "fc1.bn.toy_seen" in net.state_dict()  # its own buffer: in checkpoints


def test_a_registered_estimator_stacks_its_own_buffers(toy):
    from functools import partial

    from bnsweep.nn import LeNet, make_batchnorm

    norm = partial(make_batchnorm, estimator="toy_last_batch", scale=0.5)
    nets = [LeNet(bn=["fc1"], norm=norm) for _ in range(2)]
    nets[1].fc1.bn.toy_seen.fill_(7)
    stacked = StackedNet(nets)
    layer = stacked.net.fc1.bn
    assert layer.estimator == "toy_last_batch" and layer.members == 2
    assert layer.toy_seen.tolist() == [0] * 120 + [7] * 120
    assert stacked.member_state_dict(1)["fc1.bn.toy_seen"].tolist() == [7] * 120


def test_an_unknown_estimator_lists_the_registered_ones(toy):
    with pytest.raises(ValueError) as err:
        BatchNorm(3, estimator="nope")
    assert str(err.value) == ("estimator must be one of momentum, window, cumulative, "
                              "toy_last_batch, got 'nope'")  # fmt: skip
    assert list(ESTIMATORS)[-1] == "toy_last_batch"


def test_a_registered_estimator_runs_a_whole_training_run(toy, tmp_path, mnist_dir):
    from bnsweep.run.checkpoints import load
    from bnsweep.run.training import run

    cfg = compose_cfg("train", [f"hydra.searchpath=[file://{ROOT / 'tests' / 'conf'}]",
                                "model=lenet_fc_bn2", "bn=toy_last_batch", f"run_dir={tmp_path}",
                                f"data.root={mnist_dir}", "data.download=false", "logger=none",
                                "data.train_size=1000", "trainer.max_epochs=null",
                                "trainer.max_steps=12", "trainer.val_check_interval=6",
                                "trainer.check_val_every_n_epoch=null",
                                "trainer.limit_val_batches=1", "trainer.limit_test_batches=1"])  # fmt: skip
    metrics = run(cfg)
    assert metrics["status"] == "finished" and metrics["steps"] == 12
    state = load(tmp_path / "ckpt" / "last.ckpt")["state_dict"]
    assert all(v.eq(12).all() for k, v in state.items() if k.endswith("bn.toy_seen"))


def test_an_estimator_whose_buffer_clashes_with_anothers_is_refused():
    class Clash(Estimator):
        name = "clash"
        own_buffers = {"window_mean": 0}  # the window's ring is stacked along dim 1

    with pytest.raises(ValueError, match=r"Clash's buffers \['window_mean'\] are Window's"):
        register(Clash)
    assert "clash" not in ESTIMATORS

"""Every option of every config group composes and instantiates into working objects."""

from __future__ import annotations

import pytest
import pytorch_lightning as pl
import torch
from conftest import CONF
from hydra.utils import instantiate
from torch import nn

from bnsweep.config.checks import ConfigError, validate
from bnsweep.data.modules import MNISTDataModule
from bnsweep.nn import BatchNorm, BatchRenorm, count_parameters, norm_layers
from bnsweep.run.training import build, layer_config, make_trainer


def options(group: str) -> list[str]:
    return sorted(p.stem for p in (CONF / group).glob("*.yaml"))


GROUPS = ["model", "bn", "init", "optimizer", "data", "trainer", "logger"]
# the data options of one's own need one's data (tests/test_own_network.py)
ALL = [
    (g, o)
    for g in GROUPS
    for o in options(g)
    if (g, o) not in (("data", "npz"), ("data", "image_folder"))
]


def test_every_group_has_the_documented_options():
    assert set(options("model")) >= {
        "lenet", "lenet_bn1", "lenet_bn2", "lenet_fc_bn1", "lenet_fc_bn2", "cnn", "cnn_bn", "mlp", "mlp_bn"
    }  # fmt: skip
    assert set(options("bn")) == {"momentum", "window", "cumulative", "torch", "population", "ghost",
                                  "renorm", "renorm_short", "group", "layer", "none"}  # fmt: skip
    assert set(options("init")) == {
        "truncated_normal",
        "normal",
        "glorot",
        "torch",
        "orthogonal",
        "own",
    }
    assert set(options("optimizer")) == {"adam", "sgd", "adagrad"}
    assert set(options("data")) == {"mnist", "fashion_mnist", "npz", "image_folder"}
    assert {"default", "tensorboard", "csv"} <= set(options("logger"))


@pytest.mark.parametrize("group, option", ALL, ids=[f"{g}={o}" for g, o in ALL])
def test_option_composes_and_instantiates(make_cfg, group, option, tmp_path):
    cfg = make_cfg(f"{group}={option}")
    if cfg.trainer.accelerator == "gpu" and not torch.cuda.is_available():
        with pytest.raises(ConfigError, match="trainer.accelerator=gpu but no CUDA GPU"):
            validate(cfg)
        return
    validate(cfg)
    module, datamodule = build(cfg)
    assert isinstance(datamodule, MNISTDataModule)
    x = torch.rand(4, 1, 28, 28)
    assert module(x).shape == (4, 10)
    optimizer = module.configure_optimizers()
    assert isinstance(optimizer, torch.optim.Optimizer)
    assert optimizer.param_groups[0]["lr"] == cfg.optimizer.lr
    trainer = make_trainer(cfg, tmp_path / "run")
    assert isinstance(trainer, pl.Trainer)
    if group == "logger":
        kinds = {type(lg).__name__ for lg in trainer.loggers}
        expected = {"default": {"TensorBoard", "CSV"}, "tensorboard": {"TensorBoard"},
                    "csv": {"CSV"}, "none": set(), "mlflow": {"MLflow"},
                    "tensorboard_mlflow": {"TensorBoard", "CSV", "MLflow"}}[option]  # fmt: skip
        assert kinds == expected
    if group == "bn":
        net = instantiate(
            make_cfg("model=lenet_fc_bn2", f"bn={option}").model,
            norm=instantiate(layer_config(cfg)),
        )
        layers = norm_layers(net)  # one norm per listed layer, as wide as that layer's output
        if option == "none":  # nothing in BN's slot: the identity
            assert not layers and isinstance(net.get_submodule("fc1.bn"), nn.Identity)
            return

        def width(m: nn.Module) -> int:
            return (
                getattr(m, "num_features", None)
                or getattr(m, "num_channels", None)
                or m.normalized_shape[0]
            )

        widths = {"conv1.bn": 6, "conv2.bn": 16, "fc1.bn": 120, "fc2.bn": 84}
        assert {k: width(m) for k, m in layers.items()} == widths
        kinds = {"torch": nn.modules.batchnorm._BatchNorm, "group": nn.GroupNorm,
                 "layer": (nn.GroupNorm, nn.LayerNorm), "renorm": BatchRenorm,
                 "renorm_short": BatchRenorm}  # fmt: skip
        assert all(isinstance(m, kinds.get(option, BatchNorm)) for m in layers.values())
        if option in ("momentum", "window", "cumulative"):
            assert all(m.estimator == option for m in layers.values())
        if option == "layer":  # LayerNorm on the fc layers, GroupNorm(1, C) on the conv maps
            assert isinstance(layers["fc1.bn"], nn.LayerNorm) and layers["conv1.bn"].num_groups == 1
        if option == "ghost":
            assert all(m.ghost_batch_size == 8 for m in layers.values())
    if group == "model" and option == "torchvision":  # resnet18 with our BN: torch's parameters,
        import torchvision  # but a first conv of 1 input channel instead of 3

        reference = count_parameters(torchvision.models.resnet18(num_classes=10))
        assert count_parameters(module.net) == reference - 2 * 64 * 7 * 7
        assert norm_layers(module.net) and all(
            isinstance(m, BatchNorm) for m in norm_layers(module.net).values()
        )
    elif group == "model":
        assert count_parameters(module.net) == PARAMETERS[option]


# trainable parameters, by hand from the architectures (REFERENCES.md §1, §3, §2): weights +
# biases of each layer, plus γ and β (2·C) per BN layer
_LENET = (1 * 6 * 25 + 6) + (6 * 16 * 9 + 16) + (576 * 120 + 120) + (120 * 84 + 84) + (84 * 10 + 10)
_CNN = (1 * 32 * 25 + 32) + (32 * 64 * 25 + 64) + (3136 * 1024 + 1024) + (1024 * 10 + 10)
_MLP = (784 * 100 + 100) + 2 * (100 * 100 + 100) + (100 * 10 + 10)
PARAMETERS = {
    "lenet": _LENET, "lenet_bn1": _LENET + 2 * 6, "lenet_bn2": _LENET + 2 * (6 + 16),
    "lenet_fc_bn1": _LENET + 2 * (6 + 16 + 120), "lenet_fc_bn2": _LENET + 2 * (6 + 16 + 120 + 84),
    "cnn": _CNN, "cnn_bn": _CNN + 2 * (32 + 64), "mlp": _MLP, "mlp_bn": _MLP + 2 * 300,
}  # fmt: skip


def test_init_std_and_bias_are_overridable_from_the_default_config(make_cfg):
    cfg = make_cfg("init.std=0.0001")
    assert cfg.init.std == 0.0001 and cfg.init.bias == 0.0001  # bias follows std
    module, _ = build(cfg)
    w = module.net.fc1.affine.weight
    assert w.abs().max() <= 2e-4 and torch.all(module.net.fc1.affine.bias == 1e-4)
    assert make_cfg("init.std=0.1", "init.bias=0").init.bias == 0


def test_seed_zero_is_a_seed(make_cfg):
    a, _ = build(make_cfg("seed=0"))
    b, _ = build(make_cfg("seed=0"))
    c, _ = build(make_cfg("seed=1"))
    assert torch.equal(a.net.fc1.affine.weight, b.net.fc1.affine.weight)
    assert not torch.equal(a.net.fc1.affine.weight, c.net.fc1.affine.weight)


@pytest.mark.parametrize(
    "overrides, message",
    [
        (["bn=window", "bn.window=0"], "bn.window must be a positive integer, got 0"),
        (["bn=window", "bn.window=abc"], "bn.window must be a positive integer, got 'abc'"),
        (
            ["bn.momentum=1.5"],
            "bn.momentum must be a number in [0, 1], or null (the cumulative average), got 1.5",
        ),
        (["bn.eps=0"], "bn.eps must be a finite number > 0, got 0"),
        (["init.std=-1"], "init.std must be a finite number > 0, got -1"),
        (
            ["data.batch_size=0"],
            "data.batch_size must be an integer >= 2 (BN needs 2 samples), got 0",
        ),
        (["optimizer.lr=-1"], "optimizer.lr must be a finite number > 0, got -1"),
        (["seed=-3"], "seed must be an integer in [0, 4294967295], got -3"),
        (
            ["data.val_size=60000"],
            "data.val_size must be an integer in [0, 59998] or a fraction in (0, 1) (0: validate on the test set; at least 2 training images must remain), got 60000",
        ),
    ],
)
def test_validate_names_key_and_value(make_cfg, overrides, message):
    with pytest.raises(ConfigError) as err:
        validate(make_cfg(*overrides))
    assert str(err.value) == message


def test_a_refused_run_leaves_no_folder_it_made(cli, tmp_path):
    """A refusal removes the run folder and the empty folders made above it for it (outputs/,
    outputs/train/); a folder that existed before stays, and so does another run's."""
    proc = cli("train.py", "optimizer.lr=-1")
    assert proc.returncode == 2 and proc.stderr.strip().endswith("got -1"), proc.stderr
    assert not (tmp_path / "outputs").exists()
    proc = cli("train.py", "optimizer.lr=-1", f"hydra.run.dir={tmp_path}/a/b/c")
    assert proc.returncode == 2 and not (tmp_path / "a").exists()
    (tmp_path / "outputs" / "train" / "other_run").mkdir(parents=True)
    proc = cli("train.py", "optimizer.lr=-1")
    assert proc.returncode == 2, proc.stderr
    assert sorted(p.name for p in (tmp_path / "outputs" / "train").iterdir()) == ["other_run"]


def test_a_mistyped_trainer_key_names_each_close_key_once(capsys):
    """max_steps is both a Trainer argument and a key conf/trainer lists: the refusal named it
    twice ('the closest: max_steps, max_steps, max_time')."""
    from bnsweep.config.cli import trainer_overrides

    with pytest.raises(SystemExit) as e:
        trainer_overrides(["trainer.max_stepz=3"])
    assert e.value.code == 2
    line = capsys.readouterr().err.strip()
    assert line == ("error: trainer.max_stepz is not an argument of pytorch_lightning.Trainer; "
                    "the closest: max_steps, max_time, min_steps"), line  # fmt: skip

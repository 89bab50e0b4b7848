"""The raw files of MNIST / Fashion-MNIST, verified and decoded, and the cache of decoded arrays.

Where the files are found or fetched: bnsweep.data.catalog. Every file is checked against its
known MD5 (of the ``.gz`` or of the uncompressed bytes); a file that matches neither is an error
naming it. Source folders are only read, never written.

The verified arrays are then cached, decoded, in one memory-mappable file (``cache_dir()``,
``$BNSWEEP_CACHE`` or ``~/.cache/bnsweep``), keyed by the source files' paths, sizes and
modification times: later runs map it instead of decompressing and hashing the sources again
(a user's .npz or image folder too: bnsweep.data.sources).
"""

from __future__ import annotations

import gzip
import hashlib
import json
import math
import os
import sys
import zlib
from collections.abc import Callable, Mapping
from pathlib import Path

import torch
from torch import Tensor

from bnsweep.data.catalog import DataError, DataFile, DatasetSpec, locate
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


CACHE_VERSION = 3  # 2: the index holds the arrays' sha256; 3: their CRC-32 (2.3× quicker to
# check at each run's start, and it catches any changed byte as surely)


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


def _cache_file(name: str, stamp: dict[str, list]) -> Path:
    key = hashlib.sha1(json.dumps([CACHE_VERSION, stamp]).encode()).hexdigest()[:16]
    return cache_dir() / f"{name}-{key}.u8"


def _read_cache(path: Path, stamp: dict[str, list]) -> dict[str, Tensor] | None:
    """The cached arrays, if the index matches the sources and the bytes their CRC-32 (taken
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
        if zlib.crc32(flat.numpy()) != info["crc32"]:
            return None
    except (OSError, ValueError, KeyError, RuntimeError):
        return None
    dtypes = info.get("dtypes", {})
    return {k: _typed(flat[o : o + size], dtypes.get(k)).view(shape)
            for k, (o, shape, size) in _layout(info).items()}  # fmt: skip


# the dtypes a cache holds besides uint8 (MNIST's), by name
DTYPES = {"float32": torch.float32, "int64": torch.int64}


def _layout(info: dict) -> dict[str, tuple[int, list[int], int]]:
    """name -> (byte offset, shape, bytes) of each cached array."""
    dtypes = info.get("dtypes", {})
    size = {k: DTYPES[d].itemsize for k, d in dtypes.items()}
    return {
        k: (o, shape, math.prod(shape) * size.get(k, 1)) for k, (o, shape) in info["arrays"].items()
    }


def _typed(raw: Tensor, dtype: str | None) -> Tensor:
    return raw.view(DTYPES[dtype]) if dtype else raw


def _write_cache(name: str, path: Path, stamp: dict[str, list], arrays: dict[str, Tensor]) -> bool:
    """Best effort (the cache only saves time): data file first, then its index, each renamed
    into place, so a reader never sees a half-written cache. Whether it was written."""
    layout, offset, parts = {}, 0, []
    for k, t in arrays.items():
        pad = -offset % 8  # each array 8-byte aligned, to be viewed as its dtype
        parts.append(b"\0" * pad + t.contiguous().numpy().tobytes())
        layout[k] = (offset + pad, list(t.shape))
        offset += pad + t.numel() * t.element_size()
    data = b"".join(parts)
    info = {"version": CACHE_VERSION, "sources": stamp, "size": offset, "arrays": layout,
            "crc32": zlib.crc32(data)}  # fmt: skip
    named = {v: k for k, v in DTYPES.items()}
    dtypes = {k: named[t.dtype] for k, t in arrays.items() if t.dtype != torch.uint8}
    if dtypes:  # uint8 unless said (MNIST's caches, written before other dtypes were kept)
        info["dtypes"] = dtypes
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write(path, data)
        atomic_write(path.with_suffix(".json"), json.dumps(info))
    except OSError:
        return False
    _remove_stale(name, path, stamp)
    return True


def _remove_stale(name: str, current: Path, stamp: dict[str, list]) -> None:
    """Delete older caches of the same source files (replaced or touched since): one per source."""
    sources = [v[0] for v in stamp.values()]
    for meta in current.parent.glob(f"{name}-*.json"):
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
    return cached(spec.key, spec.folder, paths, lambda: decode(spec, paths), cache)


def cached(name: str, shown: str, paths: Mapping[str, Path], decode: Callable[[], dict[str, Tensor]],
           cache: bool = True) -> dict[str, Tensor]:  # fmt: skip
    """``decode()``'s arrays (uint8 or float32), from the decoded cache when it matches the
    source files ``paths`` (their paths, sizes and modification times); else decoded, then
    cached under ``name``."""
    if not cache:
        return decode()
    stamp = _stamp(dict(paths))
    path = _cache_file(name, stamp)
    if (found := _read_cache(path, stamp)) is not None:
        return found
    arrays = decode()
    if _write_cache(name, path, stamp, arrays):
        print(f"data: {shown} decoded and cached in {path}", file=sys.stderr)
    return arrays

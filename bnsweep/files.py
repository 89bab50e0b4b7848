"""Files that a reader, a crash or a full disk never sees half-written, and folder locks.

Every result file is written to a temporary file in the same folder, flushed to the disk
(``fsync``) and renamed over its name: a rename within one file system is atomic, so a reader
or a ``kill -9`` finds either the old file or the new one. A failed write (a full disk)
removes its temporary file and leaves the old file as it was.
"""

from __future__ import annotations

import errno
import fcntl
import json
import os
import shutil
from pathlib import Path
from typing import Any

# errors of a full disk (or a full quota): reported in one line naming the folder
NO_SPACE = (errno.ENOSPC, errno.EDQUOT)


def is_no_space(e: BaseException) -> bool:
    return isinstance(e, OSError) and e.errno in NO_SPACE


def _fsync_dir(folder: Path) -> None:
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def atomic_write(path: Path, data: str | bytes, keep_previous: Path | None = None) -> None:
    """Write ``data`` to ``path`` through a temporary file beside it, fsync-ed, then renamed.

    ``keep_previous``: the file that ``path`` held is first renamed to this name (one earlier
    version is kept, e.g. a checkpoint to fall back on)."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    raw = data.encode() if isinstance(data, str) else data
    try:
        with open(tmp, "wb") as f:
            f.write(raw)
            f.flush()
            os.fsync(f.fileno())
        if keep_previous is not None and path.exists():
            os.replace(path, keep_previous)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    _fsync_dir(path.parent)


def write_json(path: Path, obj: Any) -> None:
    atomic_write(path, json.dumps(obj, indent=2, sort_keys=False) + "\n")


def read_json(path: Path) -> Any:
    """A JSON file's contents; a damaged file raises DamagedFile naming it."""
    try:
        return json.loads(Path(path).read_text())
    except (ValueError, UnicodeDecodeError) as e:
        raise DamagedFile(f"{path} is damaged (not valid JSON: {e})") from None


class DamagedFile(ValueError):
    """A result file that cannot be read; the message names it."""


# the nearest folder at or above a run's output folder that existed before this process (train.py)
# made any: bnsweep.config.cli.check_output_dir records it, before Hydra creates the run folder
EXISTED_BEFORE: list[Path] = []


def remove_unstarted(run_dir: Path) -> None:
    """Remove a run folder holding only what was written before the run failed to start
    (Hydra's log, the config it was claimed with); never one another process holds. The empty
    folders made above it for it (outputs/train/) go too, up to one that existed before."""
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        return
    try:
        lock = FolderLock(run_dir)
    except FolderInUse:
        return
    with lock:
        if not all(
            p.name in (".hydra", "run_config.json") or p.suffix == ".log" for p in run_dir.iterdir()
        ):
            return
        shutil.rmtree(run_dir, ignore_errors=True)
    if EXISTED_BEFORE:
        keep = EXISTED_BEFORE[-1]
        for parent in run_dir.absolute().parents:
            if parent == keep or not parent.is_relative_to(keep):
                break
            try:
                parent.rmdir()  # only an empty folder: another run's is never touched
            except OSError:
                break


class FolderInUse(RuntimeError):
    """Another process holds the folder's lock; the message names its PID."""


class FolderLock:
    """An exclusive lock on a folder (``flock`` on the folder itself, so that no file is
    created in it), held until ``release`` or the process ends (a ``kill -9`` included).

    A second process gets FolderInUse with the holder's PID (read from /proc/locks)."""

    def __init__(self, folder: Path, what: str = "folder") -> None:
        self.folder = Path(folder)
        self._fd: int | None = os.open(self.folder, os.O_RDONLY)
        try:
            fcntl.flock(self._fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(self._fd)
            self._fd = None
            pid = lock_holder(self.folder)
            holder = f"PID {pid}" if pid else "another process"
            raise FolderInUse(
                f"{what} {self.folder} is in use by {holder}; wait for it to end, or use "
                "another folder"
            ) from None

    def release(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None

    def __enter__(self) -> FolderLock:
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()


def lock_holder(folder: Path) -> int | None:
    """The PID holding a flock on ``folder``, from /proc/locks (Linux); None if unknown."""
    st = os.stat(folder)
    inode = f"{os.major(st.st_dev):02x}:{os.minor(st.st_dev):02x}:{st.st_ino}"
    try:
        lines = Path("/proc/locks").read_text().splitlines()
    except OSError:
        return None
    for line in lines:
        fields = line.split()
        if len(fields) >= 6 and fields[1] == "FLOCK" and fields[5] == inode:
            pid = int(fields[4])
            return pid if pid > 0 and pid != os.getpid() else None
    return None

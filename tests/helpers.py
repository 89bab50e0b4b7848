"""Helpers shared by the test modules: short settings, reading sweep folders, file trees."""

from __future__ import annotations

import csv
import functools
import gzip
import hashlib
import os
import subprocess
import sys
from pathlib import Path

from conftest import ROOT

# a sweep's run in ~1.5 s: 20 steps on 1,000 images, validated at 10 and 20 on 1,000 images
SHORT = [
    "data.train_size=1000",
    "trainer.max_steps=20",
    "trainer.val_check_interval=10",
    "trainer.check_val_every_n_epoch=null",
    "trainer.limit_val_batches=1",
    "trainer.limit_test_batches=1",
    "trainer.log_every_n_steps=5",
]
TEST_CONF = f"hydra.searchpath=[file://{ROOT / 'tests' / 'conf'}]"


def sweep_dir_of(tmp_path: Path) -> Path:
    (d,) = (tmp_path / "outputs" / "sweep").iterdir()
    return d


def read_summary(sweep_dir: Path) -> list[dict[str, str]]:
    with (sweep_dir / "summary.csv").open() as f:
        return list(csv.DictReader(f))


def numbers_of(sweep: Path) -> list[dict[str, str]]:
    """The summary's rows without the wall times: what must repeat exactly."""
    return [
        {k: v for k, v in r.items() if not k.startswith("wall_time")} for r in read_summary(sweep)
    ]


def scalars(run_dir: Path) -> set[str]:
    """The scalar tags of a run folder's TensorBoard events."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(run_dir))
    acc.Reload()
    return set(acc.Tags()["scalars"])


def refused_with(proc: subprocess.CompletedProcess, message: str) -> bool:
    """A refusal: exit status 2, and ``message`` the one line on stderr."""
    return proc.returncode == 2 and proc.stderr.strip() == message


def tree(folder: Path) -> dict[str, str]:
    """Every file below ``folder`` by relative path -> sha256 of its bytes (mode and contents:
    what 'left exactly as it was' means)."""
    out = {}
    for p in sorted(Path(folder).rglob("*")):
        if p.is_file():
            out[str(p.relative_to(folder))] = hashlib.sha256(p.read_bytes()).hexdigest()
    return out


@functools.cache
def _source(mnist_dir: Path, name: str) -> tuple[bytes, bytes]:
    """One MNIST file of the test session's copy as (IDX bytes, gzip bytes), read (and
    decompressed or compressed) once per test process: gzip at level 9 over the 47 MB of
    training images took seconds, in every test that wanted a copy."""
    from bnsweep.data.catalog import DATASETS, locate

    spec = DATASETS["mnist"]
    key = next(k for k, f in spec.files.items() if f.name == name)
    path = locate(spec, mnist_dir, download=False)[key]
    data = path.read_bytes()
    if path.suffix == ".gz":
        return gzip.decompress(data), data
    return data, gzip.compress(data, mtime=0)


def raw_bytes(mnist_dir: Path, name: str) -> bytes:
    """The uncompressed IDX bytes of one MNIST file, whatever form the data source gave
    (torchvision's .gz, the package index's uncompressed files, dotted names)."""
    return _source(mnist_dir, name)[0]


def write_mnist_copy(mnist_dir: Path, dest: Path, gz: bool) -> Path:
    """The four MNIST files in ``dest/MNIST/raw``, gzip-compressed (torchvision's names) or not;
    returns ``dest``."""
    from bnsweep.data.catalog import DATASETS

    raw = dest / "MNIST" / "raw"
    raw.mkdir(parents=True, exist_ok=True)
    for f in DATASETS["mnist"].files.values():
        data, compressed = _source(mnist_dir, f.name)
        if gz:
            (raw / f"{f.name}.gz").write_bytes(compressed)
        else:
            (raw / f.name).write_bytes(data)
    return dest


def report_command(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess:
    """``python -m bnsweep.report ARGS``, run in the test process (tests/inprocess.py)."""
    import inprocess

    return inprocess.run("bnsweep.report", list(args), cwd=cwd or Path.cwd(), env=dict(os.environ),
                         module=True)  # fmt: skip


def popen(script: str, *args: str, cwd: Path, mnist_dir: Path) -> subprocess.Popen:
    """A project script started in the background, in its own process group."""
    env = dict(os.environ, BNSWEEP_DATA=str(mnist_dir), CI="true")
    return subprocess.Popen([sys.executable, str(ROOT / script), *args], cwd=cwd, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            start_new_session=True)  # fmt: skip

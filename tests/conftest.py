"""Shared fixtures: configs through Hydra's compose API, the real MNIST copy, a CLI runner."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import inprocess
import pytest
import torch
from hydra import compose, initialize_config_dir
from omegaconf import DictConfig

ROOT = Path(__file__).resolve().parents[1]
CONF = ROOT / "conf"

# pytest-xdist (-n auto in pyproject.toml): the cores are shared out between the workers, in this
# process (torch) and in the scripts the tests run (OMP_NUM_THREADS is inherited), so that N
# workers do not each run N threads. Numbers compared within a test are made at one setting.
_WORKERS = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "0") or 0)
if _WORKERS > 1:
    _THREADS = max(1, (os.cpu_count() or 1) // _WORKERS)
    os.environ["OMP_NUM_THREADS"] = str(_THREADS)
    torch.set_num_threads(_THREADS)
# tests of a device-agnostic claim run on the CPU and, where torch sees one, on a GPU
# (tests/test_gpu.py has the rest of the GPU paths)
DEVICES = [
    "cpu",
    pytest.param(
        "cuda", marks=pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
    ),
]


def mnist_root() -> Path:
    """The real MNIST files: $BNSWEEP_DATA, else ./data (where a first run fetched them, in
    whatever form the source gave), else the shared dataset copy beside the project."""
    for candidate in (
        os.environ.get("BNSWEEP_DATA"),
        ROOT / "data",
        ROOT.parent / "shared" / "datasets",
    ):
        if candidate and (Path(candidate) / "MNIST" / "raw").is_dir():
            return Path(candidate)
    pytest.fail(
        "real MNIST not found: run python train.py once (it fetches them into ./data), or set "
        "BNSWEEP_DATA to a folder holding MNIST/raw/ "
        "(see docs/how-to/data.md)"
    )


@pytest.fixture(scope="session", autouse=True)
def dataset_cache(tmp_path_factory: pytest.TempPathFactory):
    """The decoded-dataset cache of the whole test session (CLI runs inherit it): tests copy the
    raw files into temporary folders, whose caches must not pile up in the user's cache folder."""
    old = os.environ.get("BNSWEEP_CACHE")
    os.environ["BNSWEEP_CACHE"] = str(tmp_path_factory.mktemp("dataset-cache"))
    yield
    if old is None:
        os.environ.pop("BNSWEEP_CACHE", None)
    else:
        os.environ["BNSWEEP_CACHE"] = old


@pytest.fixture
def exact_fp32():
    """On a GPU, float32 convolutions and matmuls in full float32 (no TF32), so that two
    summation orders differ only by float32 rounding (the CPU has no TF32)."""
    saved = torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32
    torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = False
    yield
    torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = saved


@pytest.fixture(scope="session")
def mnist_dir() -> Path:
    return mnist_root()


def compose_cfg(config: str, overrides: list[str]) -> DictConfig:
    with initialize_config_dir(version_base="1.3", config_dir=str(CONF)):
        return compose(config_name=config, overrides=overrides)


@pytest.fixture
def make_cfg(tmp_path: Path, mnist_dir: Path) -> Callable[..., DictConfig]:
    """compose("train") with the run dir in tmp_path and the data from the real MNIST copy."""

    def make(*overrides: str, config: str = "train") -> DictConfig:
        base = [f"run_dir={tmp_path / 'run'}", f"data.root={mnist_dir}", "data.download=false"]
        return compose_cfg(config, base + list(overrides))

    return make


@pytest.fixture
def cli(tmp_path: Path, mnist_dir: Path) -> Callable[..., subprocess.CompletedProcess]:
    """Run a project script (train.py, sweep.py) as a user would, from a scratch folder: in this
    process through the script's own ``__main__`` (tests/inprocess.py says what is restored
    after it), or with ``process=True`` as a subprocess, where a process is the point (signals,
    kills, several ranks, start-up, what a fresh interpreter imports)."""

    def run(script: str, *args: str, timeout: float = 600, env: dict | None = None,
            process: bool = False, cwd: Path | None = None):  # fmt: skip
        full_env = dict(os.environ, BNSWEEP_DATA=str(mnist_dir), CI="true", **(env or {}))
        where = cwd or tmp_path
        if not process:
            return inprocess.run(script, list(args), cwd=where, env=full_env, timeout=timeout)
        return subprocess.run(
            [sys.executable, str(ROOT / script), *args],
            cwd=where,
            env=full_env,
            capture_output=True,
            text=True,
            timeout=timeout,
        )

    return run

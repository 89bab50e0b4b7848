"""bnsweep: batch-normalization studies, swept with Hydra on PyTorch Lightning.

The packages, in the order data flows through a study:

- ``config``: what a user may ask for: the command line, the checks of a composed config (one
  line naming the key and the value), which keys compute, the configs' resolvers. No torch.
- ``data``: the datasets (MNIST, Fashion-MNIST, a user's .npz or image folder), verified, cached
  and batched as a LightningDataModule.
- ``nn``: the model: our BatchNorm and its estimators, the studies' networks, weight init, any
  network by ``_target_`` with the ``bn=`` choice put in. Pure PyTorch.
- ``run``: one training run: the LightningModule, dashboards, pre-flight check, run folders,
  checkpoints, loggers, the result record, signals.
- ``sweep``: points × seeds: the jobs, the Hydra callback around them, launchers, the dry-run
  plan, vectorized seeds.
- ``report``: a sweep folder's summary, statistics, comparisons, plots and TensorBoard view.

Two shared leaves import nothing of bnsweep: ``files`` (atomic writes, locks) and ``terminal``
(what is printed). ``bench`` times everything (``python -m bnsweep.bench``).

Imports go one way: a package imports the leaves and the packages listed before it in
``LAYERS`` (``tests/test_packaging.py`` checks), never one after it; so ``config`` reads what
``data`` and ``nn`` offer without importing torch (their package modules export lazily), and a
sweep writes its report through ``report``.
"""

import sys

if sys.platform != "linux":  # before anything imports fcntl: one line, no ImportError traceback
    raise SystemExit(
        f"error: bnsweep runs on Linux only (fcntl folder locks, /proc, glibc's malloc settings); "
        f"this is {sys.platform}"
    )

from bnsweep.config import resolvers as _resolvers  # noqa: E402

__version__ = "0.1.0"

# import order: each may import those before it (files and terminal: every one)
LAYERS = ("files", "terminal", "nn", "data", "config", "run", "report", "sweep", "bench")



def lazy(package: str, exports: dict[str, str]):  # noqa: ANN201 (a module __getattr__)
    """A package's ``__getattr__`` (PEP 562) that loads ``exports`` (name -> module) on first
    use: a package's names cost nothing until a caller asks for one (the config checks read
    ``bnsweep.nn.architectures`` and ``bnsweep.data.catalog`` without importing torch)."""
    import importlib

    def __getattr__(name: str):  # noqa: ANN202
        if name in exports:
            return getattr(importlib.import_module(exports[name]), name)
        raise AttributeError(f"module {package!r} has no attribute {name!r}")

    return __getattr__


_resolvers.register()  # the configs' ${min:…}, ${lr_for_batch:…} … resolve wherever bnsweep is imported

"""Process-level settings that make training steps cheaper on the CPU.

glibc's malloc hands every buffer above its mmap threshold (128 KiB to start with) to a fresh
``mmap`` and gives it back with ``munmap`` when it is freed, and it returns freed heap memory
above 128 KiB to the kernel (it raises both thresholds by itself as it sees large frees, but
only so far). A LeNet step allocates and frees a few MB of such buffers (activations,
gradients, BN temporaries), which then page-fault in again, zero-filled, on the next step.
Measured on this project's 2-core machine: a bare lenet_fc_bn2 loop in a fresh process took
650-1,200 minor faults a step with the defaults and ~15 tuned; a 400-step ``train.py`` run
took 380,000-449,000 faults in all with the defaults and 304,000-306,000 tuned (190-360 fewer
a step). Memory that torch frees is then kept by the process (its resident size stays at the
peak it reached; the peak itself is unchanged).

``BNSWEEP_MALLOC=default`` leaves malloc as it is.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import logging
import os
import sys
import threading
import warnings

M_TRIM_THRESHOLD = -1
M_MMAP_THRESHOLD = -3
MMAP_THRESHOLD = 32 << 20  # glibc's upper bound for this setting on 64-bit systems
TRIM_THRESHOLD = 1 << 30

_tuned: bool | None = None


def tune_allocator() -> bool:
    """Raise glibc malloc's mmap and trim thresholds (once per process). True when set; False
    on other C libraries and platforms, or when ``BNSWEEP_MALLOC=default``."""
    global _tuned
    if _tuned is not None:
        return _tuned
    _tuned = False
    if os.environ.get("BNSWEEP_MALLOC", "") == "default" or not sys.platform.startswith("linux"):
        return _tuned
    name = ctypes.util.find_library("c")
    try:
        libc = ctypes.CDLL(name or "libc.so.6")
        libc.gnu_get_libc_version  # noqa: B018 (glibc only: musl's mallopt ignores these)
    except (OSError, AttributeError):
        return _tuned
    _tuned = bool(libc.mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD)) and bool(
        libc.mallopt(M_TRIM_THRESHOLD, TRIM_THRESHOLD)
    )
    return _tuned


# Lightning's info lines (accelerator availability, tips for its cloud products, "max_steps
# reached") are printed for every run; a research tool prints what the run does
LIGHTNING_LOGGERS = (
    "pytorch_lightning",
    "lightning_fabric",
    "lightning.pytorch",
    "lightning.fabric",
)


def quiet_lightning(verbose: bool = False) -> None:
    """Lightning's loggers at WARNING (call after importing it: its import sets INFO), and no
    deprecation notice from torch's pytree inside it; ``hydra.verbose=true`` keeps them."""
    quiet_full_disk_in_writer_threads()
    if verbose:
        return
    for name in LIGHTNING_LOGGERS:
        logging.getLogger(name).setLevel(logging.WARNING)
    warnings.filterwarnings("ignore", message=".*LeafSpec.*is deprecated")
    # a resumed run's CSV logger appends (Lightning 2.6), whatever this warning says
    warnings.filterwarnings(
        "ignore", message="Experiment logs directory .* exists and is not empty"
    )
    # bnsweep's training step returns None on purpose when the loss turns NaN (a divergence)
    warnings.filterwarnings("ignore", message="`training_step` returned `None`")
    # on a machine with Slurm installed: bnsweep trains one run on one device, never via srun
    warnings.filterwarnings("ignore", message="The `srun` command is available on your system")
    # several devices: the epoch metrics bnsweep logs are already the global batch's (its sums
    # are all-reduced: bnsweep.run.losses), so Lightning's advice to sync them does not apply
    warnings.filterwarnings("ignore", message=".*when logging on epoch level in distributed")
    # a short run logs its epoch means whatever log_every_n_steps says
    warnings.filterwarnings(
        "ignore", message="The number of training batches .* is smaller than the logging interval"
    )


def quiet_full_disk_in_writer_threads() -> None:
    """TensorBoard writes event files from a thread of its own; on a full disk that thread
    dies printing a traceback, and the same error reaches the run at its next write, where it
    is reported in one line. The thread's traceback is left out (other threads' are not)."""
    default = threading.excepthook
    if getattr(default, "bnsweep", False):
        return

    def hook(args: threading.ExceptHookArgs) -> None:
        from bnsweep.files import is_no_space

        if not is_no_space(args.exc_value):
            default(args)

    hook.bnsweep = True  # installed once per process
    threading.excepthook = hook


def hydra_verbose() -> bool:
    """Whether the user asked for Hydra's verbose logging (``hydra.verbose=true`` or names)."""
    from hydra.core.hydra_config import HydraConfig

    return HydraConfig.initialized() and bool(HydraConfig.get().verbose)

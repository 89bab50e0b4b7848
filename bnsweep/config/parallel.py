"""The checks of a run on several devices (``trainer.devices=N``: Lightning's DDP, a process
each) and of ``bn.sync``: what they cannot do is refused in one line before training."""

from __future__ import annotations

from typing import Any

from omegaconf import DictConfig, OmegaConf

from bnsweep.config.values import MISSING, ConfigError, shown, value


def check_devices(cfg: DictConfig, accelerator: str) -> None:
    """Refuse what a run of several processes, or bn.sync, cannot do."""
    devices = value(cfg, "trainer.devices")
    if devices is not MISSING and several(devices, accelerator):
        _check_several(cfg, f"trainer.devices={shown(devices)}", accelerator)
    elif value(cfg, "bn.sync") is True:
        _check_sync(cfg, accelerator)


# what one process computes over the whole training set or the whole batch: a run of several
# processes refuses it (key, what it is)
_ONE_PROCESS = {
    "bn.precise_batches": "PreciseBN (and bn=population) recomputes the statistics in one process",
    "probes.every": "the loss-landscape probes step along one process's gradient",
    "percentiles": "the tracked unit's percentiles are over one process's validation images",
}


def _check_several(cfg: DictConfig, devices: str, accelerator: str) -> None:
    """What a run on several devices (Lightning's DDP, one process each) cannot do."""
    strategy = OmegaConf.select(cfg, "trainer.strategy", default="auto")
    if strategy not in ("auto", "ddp"):
        raise ConfigError(f"trainer.strategy={strategy} with {devices}: bnsweep runs several "
                          "devices with Lightning's ddp (trainer.strategy=auto or ddp)")  # fmt: skip
    for key, what in _ONE_PROCESS.items():
        found = value(cfg, key)
        if found is not MISSING and found is not None:
            raise ConfigError(f"{key}={shown(found)} with {devices}: {what}; use "
                              "trainer.devices=1")  # fmt: skip
    if OmegaConf.select(cfg, "trainer.compile", default=False):
        raise ConfigError(f"trainer.compile=true with {devices} is not supported; use "
                          "trainer.devices=1 or trainer.compile=false")  # fmt: skip
    if value(cfg, "bn.sync") is True or OmegaConf.select(cfg, "trainer.sync_batchnorm",
                                                          default=False):  # fmt: skip
        _check_sync(cfg, accelerator)


def _check_sync(cfg: DictConfig, accelerator: str) -> None:
    """The BN layers that cannot take the global batch's statistics."""
    target = OmegaConf.select(cfg, "bn._target_", default="") or ""
    k = value(cfg, "bn.ghost_batch_size")
    if k is not MISSING and k is not None:
        raise ConfigError(f"bn.sync=true normalises the global batch, which ghost batches split: "
                          f"got bn.ghost_batch_size={k}")  # fmt: skip
    if target.endswith("make_batch_renorm"):
        raise ConfigError("bn.sync=true: batch renormalization (bn=renorm) keeps per-device "
                          "statistics; use bn=momentum, window or cumulative")  # fmt: skip
    on_cpu = accelerator == "cpu" or not cuda_available()
    if target.endswith("make_torch_batchnorm") and on_cpu:
        raise ConfigError("bn.sync=true with bn=torch needs GPUs (torch's SyncBatchNorm); on the "
                          "CPU our layer synchronises: bn=momentum")  # fmt: skip


def several(devices: Any, accelerator: str) -> bool:
    """Whether ``trainer.devices`` asks for more than one device (auto and -1: all the GPUs
    there are; the CPU counts as one device)."""
    if isinstance(devices, (list, tuple)):
        return len(devices) > 1
    if devices in ("auto", -1):
        if accelerator == "cpu" or not cuda_available():
            return devices == -1  # Lightning on the CPU: -1 is a process per core
        import torch

        return torch.cuda.device_count() > 1
    return isinstance(devices, int) and not isinstance(devices, bool) and devices > 1


def cuda_available() -> bool:
    import torch

    return torch.cuda.is_available()

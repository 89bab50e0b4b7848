"""``run(cfg)``: one training run from a composed config; writes everything into ``cfg.run_dir``."""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytorch_lightning as pl
import torch
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

from bnsweep.config.checks import ConfigError, refusal, validate
from bnsweep.config.cli import secondary
from bnsweep.config.keys import HPARAM_KEYS, LOOP_KEYS, computes
from bnsweep.data.catalog import DataError
from bnsweep.files import (
    DamagedFile,
    FolderInUse,
    FolderLock,
)
from bnsweep.nn import BatchNorm, norm_layers
from bnsweep.nn.batchnorm import TORCH_BATCHNORMS
from bnsweep.nn.networks import NetworkError, build_network, swap_line
from bnsweep.run import checkpoints, interrupts, ranks
from bnsweep.run.checkpoints import AtomicCheckpointIO, RunCheckpoints
from bnsweep.run.dashboards import BNStatsLogger
from bnsweep.run.folders import RunRefused, claim
from bnsweep.run.lit import LitClassifier
from bnsweep.run.record import finished_record, write_record
from bnsweep.run.runtime import hydra_verbose, quiet_lightning, tune_allocator


def process_age() -> float | None:
    """Seconds since this process started (Linux /proc), None where that cannot be read."""
    try:
        fields = Path("/proc/self/stat").read_text().rsplit(")", 1)[1].split()
        started = int(fields[19]) / os.sysconf("SC_CLK_TCK")  # field 22: starttime, in ticks
        return float(Path("/proc/uptime").read_text().split()[0]) - started
    except (OSError, ValueError, IndexError):
        return None


def choices(cfg: DictConfig) -> dict[str, str]:
    """The option picked in each config group (model=lenet_fc_bn2 …), from Hydra or cfg.meta."""
    from hydra.core.hydra_config import HydraConfig

    if HydraConfig.initialized():
        return {
            k: v for k, v in HydraConfig.get().runtime.choices.items() if not k.startswith("hydra")
        }
    return dict(OmegaConf.select(cfg, "meta.choices", default={}) or {})


def overrides() -> list[str]:
    from hydra.core.hydra_config import HydraConfig

    return list(HydraConfig.get().overrides.task) if HydraConfig.initialized() else []


def hparams(cfg: DictConfig, picked: dict[str, str], net: torch.nn.Module,
            command: list[str] | None = None) -> dict[str, Any]:  # fmt: skip
    """What the HPARAMS tab shows of a run: group choices, the numbers swept most often, and
    every key its command line (``command``, else this job's overrides) set, so a sweep's swept
    keys are there. A network without a BN layer records ``bn: none`` and no bn.* key."""
    command = overrides() if command is None else command
    given = [o.split("=", 1)[0].lstrip("+~") for o in command if "=" in o]
    keys = [*HPARAM_KEYS, *(k for k in given if k not in HPARAM_KEYS)]
    has_bn = bool(norm_layers(net))
    out: dict[str, Any] = {}
    for key in keys:
        if not computes(key):
            continue  # where files go, how it runs: no hyper-parameter
        if not has_bn and (key == "bn" or key.startswith("bn.")):
            continue
        value = picked[key] if key in picked else OmegaConf.select(cfg, key, default=None)
        if value is not None:
            out[key] = value if isinstance(value, (bool, int, float, str)) else str(value)
    if not has_bn:
        out["bn"] = "none"
    return out


def build_net(cfg: DictConfig) -> torch.nn.Module:
    """The network of cfg seeded by cfg.seed: norm layer from cfg.bn, weights from cfg.init.

    Seeds every RNG first (pl.seed_everything): what the global RNG holds afterwards is what
    the run's dropout draws from.
    """
    return build_counted(cfg)[0]


def build_counted(cfg: DictConfig) -> tuple[torch.nn.Module, int]:
    """build_net's network, and how many torch BN layers of it were swapped for cfg.bn."""
    pl.seed_everything(cfg.seed, workers=True, verbose=False)
    model = OmegaConf.to_container(cfg.model, resolve=True)
    bn = OmegaConf.select(cfg, "bn._target_", default="")
    net, swapped = build_network(model, instantiate(layer_config(cfg)), bn)
    instantiate(cfg.init)(net, generator=torch.Generator().manual_seed(cfg.seed))
    return synchronised(net, cfg), swapped


def synchronised(net: torch.nn.Module, cfg: DictConfig) -> torch.nn.Module:
    """With bn.sync=true or trainer.sync_batchnorm=true, the network whose BN layers normalise
    with the global batch's statistics under data parallelism: ours by their ``sync``, torch's
    as torch.nn.SyncBatchNorm (which torch runs on GPUs only: refused on the CPU here, in one
    line, rather than at the first step)."""
    if not (OmegaConf.select(cfg, "bn.sync", default=False)
            or OmegaConf.select(cfg, "trainer.sync_batchnorm", default=False)):  # fmt: skip
        return net
    theirs = [name for name, layer in norm_layers(net).items()
              if isinstance(layer, TORCH_BATCHNORMS)]  # fmt: skip
    if theirs and training_device(cfg).type == "cpu" and several_devices(cfg):
        raise ConfigError(f"bn.sync=true: layer {theirs[0]} is torch's BatchNorm, whose "
                          "SyncBatchNorm runs on GPUs only; on the CPU let bnsweep swap it "
                          "for its own (without model.convert_bn=false)")  # fmt: skip
    for layer in norm_layers(net).values():
        if isinstance(layer, BatchNorm):
            layer.sync = True
    return torch.nn.SyncBatchNorm.convert_sync_batchnorm(net) if theirs else net


def several_devices(cfg: DictConfig) -> bool:
    """Whether cfg trains one run on several devices (processes)."""
    from bnsweep.config.parallel import several

    accelerator = OmegaConf.select(cfg, "trainer.accelerator", default="auto")
    return several(OmegaConf.select(cfg, "trainer.devices", default=1), accelerator)


def layer_config(cfg: DictConfig) -> dict:
    """cfg.bn without the keys the training loop reads (PreciseBN's, sync): the norm factory's."""
    bn = OmegaConf.to_container(cfg.bn, resolve=True)
    return {k: v for k, v in bn.items() if k not in LOOP_KEYS}


def precise_config(cfg: DictConfig) -> dict | None:
    """PreciseBN's settings ({batches, evaluate}), None when off."""
    batches = OmegaConf.select(cfg, "bn.precise_batches", default=None)
    if batches is None:
        return None
    return {"batches": batches, "evaluate": OmegaConf.select(cfg, "bn.evaluate", default="running")}


def probes_config(cfg: DictConfig) -> dict | None:
    """The loss-landscape probes' settings ({every, steps}), None when off."""
    every = OmegaConf.select(cfg, "probes.every", default=None)
    if every is None:
        return None
    return {"every": every, "steps": list(OmegaConf.select(cfg, "probes.steps"))}


def percentile_config(cfg: DictConfig) -> dict | None:
    track = cfg.get("percentiles")
    return OmegaConf.to_container(track, resolve=True) if track is not None else None


def build(cfg: DictConfig, datamodule: pl.LightningDataModule | None = None
          ) -> tuple[LitClassifier, pl.LightningDataModule]:  # fmt: skip
    """Network, LightningModule, DataModule (``datamodule`` where one is made already). How
    many torch BN layers of the network were swapped: ``module.swapped``."""
    net, swapped = build_counted(cfg)
    module = LitClassifier(
        net,
        optimizer=instantiate(cfg.optimizer),
        num_classes=int(OmegaConf.select(cfg, "data.num_classes", default=10)),
        percentiles=percentile_config(cfg),
        compile=bool(OmegaConf.select(cfg, "trainer.compile", default=False)),
        precise=precise_config(cfg),
        probes=probes_config(cfg),
    )
    module.swapped = swapped
    return module, datamodule if datamodule is not None else instantiate(cfg.data)


def prepare(cfg: DictConfig) -> tuple[LitClassifier, pl.LightningDataModule]:
    """``build``, the data found and verified, then the pre-flight check (bnsweep.run.preflight): a
    network or data that cannot train is refused in one line here, before the run claims its
    folder."""
    from bnsweep.run import preflight

    try:
        datamodule = instantiate(cfg.data)
        datamodule.prepare_data()  # missing or corrupt data fails here, before any file is written
        module, datamodule = build(cfg, datamodule)
        precision = OmegaConf.select(cfg, "trainer.precision", default="32-true")
        preflight.check(module, datamodule, training_device(cfg), precision)
    except Exception as e:
        if (refused := refusal(e)) is not None:  # a constructor refused a config value
            raise refused from e
        raise
    if module.swapped and not secondary():  # said once, by rank 0
        print(swap_line(module.swapped, choices(cfg).get("bn", "")), file=sys.stderr)
    return module, datamodule


def training_device(cfg: DictConfig) -> torch.device:
    """The device the Trainer will train on: a CUDA GPU where asked for or (auto) present."""
    accelerator = OmegaConf.select(cfg, "trainer.accelerator", default="auto")
    gpu = accelerator in ("gpu", "cuda") or (accelerator == "auto" and torch.cuda.is_available())
    return torch.device("cuda" if gpu else "cpu")


def _interactive() -> bool:
    return sys.stderr.isatty() and not os.environ.get("CI")


def make_loggers(cfg: DictConfig) -> list:
    return [instantiate(c) for c in (cfg.logger or {}).values() if c is not None]


def make_trainer(
    cfg: DictConfig,
    run_dir: Path,
    loggers: list | None = None,
    callbacks: list | None = None,
    plugins: list | None = None,
) -> pl.Trainer:
    """The Trainer of cfg.trainer; by default with cfg's loggers, best/last checkpoints after
    each validation and the BN dashboards. Given ``callbacks`` replace those; checkpoints are
    written through ``plugins`` (default: in place, atomically)."""
    extra = {}
    if loggers is None:  # rank 0 alone writes the run's logs
        loggers = [] if secondary() else make_loggers(cfg)
    if callbacks is None:
        # last.ckpt after every validation, best.ckpt when val/acc improved; the BN dashboards
        callbacks = [RunCheckpoints(run_dir / "ckpt"), BNStatsLogger()]
    t = cfg.trainer
    accelerator = t.get("accelerator", "auto")
    on_cpu = accelerator == "cpu" or (accelerator == "auto" and not torch.cuda.is_available())
    if t.get("enable_progress_bar") is None:
        extra["enable_progress_bar"] = _interactive()
    if t.get("deterministic") is None:
        # deterministic kernels on the CPU. On a GPU only when asked (trainer.deterministic=true:
        # seeded runs then repeat exactly, tested on an H100), as they cost there (about 1.5× an
        # epoch's time: docs/reference/benchmarks.md)
        extra["deterministic"] = on_cpu
    t = {k: v for k, v in t.items() if k != "compile"}  # ours (LitClassifier), not Lightning's
    return instantiate(
        t,
        logger=loggers,
        callbacks=callbacks,
        default_root_dir=str(run_dir),
        plugins=plugins or [AtomicCheckpointIO()],  # checkpoints in place: bnsweep.run.checkpoints
        **extra,
    )


def run(cfg: DictConfig, process: ProcessStart | None = None) -> dict[str, Any]:
    """Train, validate and test one configuration; returns the record written to metrics.json.

    The run folder is locked while the run lasts. With ``resume=true`` a finished run in
    ``run_dir`` is returned as it is, and an interrupted one continues from its newest readable
    checkpoint (``ckpt/last.ckpt``, else ``ckpt/prev.ckpt``), saved at every validation.
    ``process``: given by an entry point whose process exists for this run (train.py), which
    then records its start-up (process start to the first training step) and import time.
    """
    run_dir = Path(cfg.run_dir)
    if secondary():  # a rank of a run of several: rank 0 has claimed the folder
        validate(cfg)
        quiet_lightning(hydra_verbose())
        ranks.watch(run_dir)
        return _train(cfg, run_dir, process, prepare(cfg), time.time())
    trains = False
    try:  # whatever ends it before training, a Slurm job's other tasks hear of it (bnsweep.run.ranks)
        validate(cfg)
        tune_allocator()
        start = time.time()
        quiet_lightning(hydra_verbose())
        # the pre-flight check before the folder is claimed; not for a finished run a resume skips
        done = cfg.get("resume", False) and (run_dir / "metrics.json").exists()
        built = None if done else prepare(cfg)
        run_dir.mkdir(parents=True, exist_ok=True)
        with FolderLock(run_dir, "run folder"):
            if (finished := claim(run_dir, cfg)) is not None:
                return finished
            trains = True
            ranks.announce(run_dir, True)  # … they join it
            if several_devices(cfg):  # a rank that ends badly ends the run, in one line
                ranks.watch(run_dir)
            return _train(cfg, run_dir, process, built or prepare(cfg), start)
    finally:
        if not trains:
            ranks.announce(run_dir, False)  # … or they end


def _train(cfg: DictConfig, run_dir: Path, process: ProcessStart | None,
           built: tuple[LitClassifier, pl.LightningDataModule], start: float) -> dict[str, Any]:  # fmt: skip
    module, datamodule = built
    try:
        trainer = make_trainer(cfg, run_dir)
    except Exception as e:
        if (refused := refusal(e)) is not None:  # a constructor refused a config value
            raise refused from e
        raise
    last = run_dir / "ckpt" / checkpoints.LAST
    resumed = checkpoints.readable(last.parent) if cfg.get("resume", False) else None
    fit_start = time.time()
    if resumed is not None and resumed[1].get("bnsweep", {}).get("fit_done"):
        # training had ended (killed before metrics.json was written): its final state
        module.restore(resumed[1])
        steps, epochs = resumed[1]["global_step"], resumed[1]["epoch"]
    else:
        ckpt_path = resumed[0] if resumed is not None else None
        with interruptible(trainer, run_dir):
            trainer.fit(module, datamodule=datamodule, ckpt_path=ckpt_path, weights_only=True)
        if not module.history["val_step"] or module.history["val_step"][-1] != trainer.global_step:
            # stopped between validations (max_steps mid-epoch): validate the final weights too
            with interruptible(trainer, run_dir):
                trainer.validate(module, datamodule=datamodule, verbose=False)
            if checkpoints.improved(module.history["val/acc"]):
                trainer.save_checkpoint(run_dir / "ckpt" / "best.ckpt", weights_only=False)
        module.fit_done = True  # the final state: a resume from here on only tests
        trainer.save_checkpoint(last, weights_only=False)
        steps, epochs = trainer.global_step, trainer.current_epoch
    fit_time = time.time() - fit_start
    weights = cfg.get("test_weights", "last")
    if weights == "best":  # the best validation's weights, BN statistics included
        module.load_state_dict(checkpoints.load(run_dir / "ckpt" / "best.ckpt")["state_dict"])
    tested: dict[str, float] = {}
    if weights != "none":  # none: the test set is never evaluated (sweep.tune's inner runs)
        with interruptible(trainer, run_dir, testing=True):
            trainer.test(module, datamodule=datamodule, verbose=False)
        tested = {k: float(v) for k, v in trainer.callback_metrics.items()}
    picked = choices(cfg)
    record = finished_record(
        seed=cfg.seed,
        history=module.history,
        test=(tested.get("test/acc"), tested.get("test/loss")),
        other={k: v for k, v in tested.items() if k.startswith("test/acc_")},
        test_weights=weights,
        steps=steps,
        epochs=epochs,
        diverged_step=module.diverged_step,
        choices=picked,
        overrides=overrides(),
        times={
            "wall_time_s": round(time.time() - start, 3),  # of this process (a resume: since it)
            "fit_time_s": round(fit_time, 3),  # trainer.fit: training and its validations
            **startup_times(process, module.first_step_at),
        },
        resumed_from_step=module.resumed_from_step,
        device=str(trainer.strategy.root_device)
        + (f" ×{trainer.world_size}" if trainer.world_size > 1 else ""),
        hparams=hparams(cfg, picked, module.net),
    )
    if secondary():
        return record  # rank 0 writes it
    log_final(trainer.loggers, record["hparams"], record)
    write_record(run_dir, record)
    return record


@contextmanager
def interruptible(trainer: pl.Trainer, run_dir: Path, testing: bool = False) -> Iterator[None]:
    """A SIGINT or SIGTERM inside (Lightning answers it with exit status 1) becomes
    Interrupted: the step reached, of how many, and the last checkpoint's step."""
    try:
        yield
    except (KeyboardInterrupt, SystemExit):
        if interrupts.received() is None or isinstance(sys.exc_info()[1], interrupts.Interrupted):
            raise
        saved = checkpoints.readable(run_dir / "ckpt")
        total = None
        with suppress(Exception):  # what the Trainer knows of its length, after a stop
            total = (
                trainer.max_steps
                if trainer.max_steps > 0
                else int(trainer.max_epochs * trainer.num_training_batches)
            )
        raise interrupts.Interrupted(trainer.global_step, total, saved[1]["global_step"] if saved else None,
                                     testing) from None  # fmt: skip


def log_final(loggers: list, hp: dict[str, Any], record: dict[str, Any] | None = None) -> None:
    """The run's hyper-parameters (TensorBoard's HPARAMS tab reads the run's final metrics from
    its own val/ and test/ scalars, never a placeholder), its record to a logger that takes one
    (MLflow's finals and status); then every logger flushed and closed."""
    for logger in loggers:
        logger.log_hyperparams(hp)
        if record is not None and hasattr(logger, "log_record"):
            logger.log_record(record)
        logger.save()
        if hasattr(logger, "close"):
            logger.close()


@dataclass(frozen=True)
class ProcessStart:
    """When the process of a run started (time.time()) and how long it took to import torch
    and Lightning: train.py's, whose process exists for its one run."""

    at: float
    import_s: float | None = None

    @classmethod
    def now(cls, import_s: float | None = None) -> ProcessStart | None:
        age = process_age()
        return cls(time.time() - age, import_s) if age is not None else None


def startup_times(process: ProcessStart | None, first_step_at: float | None) -> dict[str, Any]:
    """startup_s (process start to the first training step) and import_s (of it, importing
    torch, Lightning and the rest), for a run that opened its process; None otherwise (a
    sweep's jobs share their worker processes)."""
    if process is None or first_step_at is None:
        return {"startup_s": None, "import_s": None}
    imported = round(process.import_s, 3) if process.import_s is not None else None
    return {"startup_s": round(first_step_at - process.at, 3), "import_s": imported}


# errors that are the user's input, not a bug: reported in one line, exit status 2
USER_ERRORS: tuple[type[Exception], ...] = (
    ConfigError, DataError, NetworkError, RunRefused, FolderInUse, DamagedFile,
)  # fmt: skip


def no_space_message(e: OSError, folder: Path) -> str:
    where = e.filename or folder
    return (
        f"no space left on the device of {folder} (writing {where}); what was written before "
        "is intact: free space, then resume=true continues from the last checkpoint"
    )

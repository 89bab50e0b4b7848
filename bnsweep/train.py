"""``run(cfg)``: one training run from a composed config; writes everything into ``cfg.run_dir``."""

from __future__ import annotations

import json
import os
import sys
import time
import warnings
from pathlib import Path
from typing import Any

import pytorch_lightning as pl
import torch
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf
from pytorch_lightning.callbacks import ModelCheckpoint
from pytorch_lightning.loggers import TensorBoardLogger

from bnsweep.config import ConfigError, validate
from bnsweep.data import DataError
from bnsweep.files import remove_unstarted, write_json
from bnsweep.lit import BNStatsLogger, LitClassifier
from bnsweep.runtime import tune_allocator

HPARAM_KEYS = (
    "model", "bn", "bn.momentum", "bn.window", "bn.eps", "init", "init.std", "optimizer",
    "optimizer.lr", "data", "data.batch_size", "seed",
)  # fmt: skip


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


def hparams(cfg: DictConfig, picked: dict[str, str]) -> dict[str, Any]:
    """What the HPARAMS tab shows: group choices and the numbers swept most often."""
    out: dict[str, Any] = {}
    for key in HPARAM_KEYS:
        value = picked[key] if key in picked else OmegaConf.select(cfg, key, default=None)
        if value is not None:
            out[key] = value
    return out


def build_net(cfg: DictConfig) -> torch.nn.Module:
    """The network of cfg seeded by cfg.seed: norm layer from cfg.bn, weights from cfg.init.

    Seeds every RNG first (pl.seed_everything): what the global RNG holds afterwards is what
    the run's dropout draws from.
    """
    pl.seed_everything(cfg.seed, workers=True, verbose=False)
    net = instantiate(cfg.model, norm=instantiate(cfg.bn))
    instantiate(cfg.init)(net, generator=torch.Generator().manual_seed(cfg.seed))
    return net


def percentile_config(cfg: DictConfig) -> dict | None:
    track = cfg.get("percentiles")
    return OmegaConf.to_container(track, resolve=True) if track is not None else None


def build(cfg: DictConfig) -> tuple[LitClassifier, pl.LightningDataModule]:
    """Network, LightningModule, DataModule."""
    module = LitClassifier(
        build_net(cfg),
        optimizer=instantiate(cfg.optimizer),
        percentiles=percentile_config(cfg),
        compile=bool(OmegaConf.select(cfg, "trainer.compile", default=False)),
    )
    return module, instantiate(cfg.data)


def _interactive() -> bool:
    return sys.stderr.isatty() and not os.environ.get("CI")


def make_loggers(cfg: DictConfig) -> list:
    return [instantiate(c) for c in (cfg.logger or {}).values() if c is not None]


def make_trainer(
    cfg: DictConfig, run_dir: Path, loggers: list | None = None, callbacks: list | None = None
) -> pl.Trainer:
    """The Trainer of cfg.trainer; by default with cfg's loggers, best/last checkpoints after
    each validation and the BN dashboards. Given ``callbacks`` replace those (and Lightning's
    own checkpointing)."""
    extra = {}
    if loggers is None:
        loggers = make_loggers(cfg)
    if callbacks is not None:
        extra["enable_checkpointing"] = False
    else:
        callbacks = [
            # best.ckpt, written after a validation that improves val/acc
            ModelCheckpoint(
                dirpath=run_dir / "ckpt",
                filename="best",
                monitor="val/acc",
                mode="max",
                save_on_train_epoch_end=False,
                enable_version_counter=False,
            ),
            # last.ckpt after every validation (ModelCheckpoint's save_last writes it only when
            # a top-k checkpoint was written at the same step, i.e. not when val/acc fell)
            ModelCheckpoint(
                dirpath=run_dir / "ckpt",
                filename="last",
                monitor=None,
                save_top_k=1,
                save_on_train_epoch_end=False,
                enable_version_counter=False,
            ),
            BNStatsLogger(),
        ]
    t = cfg.trainer
    accelerator = t.get("accelerator", "auto")
    on_cpu = accelerator == "cpu" or (accelerator == "auto" and not torch.cuda.is_available())
    if t.get("enable_progress_bar") is None:
        extra["enable_progress_bar"] = _interactive()
    if t.get("deterministic") is None:
        # deterministic kernels on the CPU. On a GPU only when asked (trainer.deterministic=true:
        # seeded runs then repeat exactly, tested on an H100), as they cost there: one epoch of
        # lenet_fc_bn2 took 8.5 s against 5.6 s
        extra["deterministic"] = on_cpu
    t = {k: v for k, v in t.items() if k != "compile"}  # ours (LitClassifier), not Lightning's
    return instantiate(
        t, logger=loggers, callbacks=callbacks, default_root_dir=str(run_dir), **extra
    )


# keys that do not change what a run computes: left out when a resumed run's config is compared
# (a run trained alone or as a member of a vectorized job computes the same, sweep.vectorize)
NOT_COMPARED = ("run_dir", "resume", "threads", "sweep")


def config_snapshot(cfg: DictConfig) -> dict[str, Any]:
    snapshot = OmegaConf.to_container(cfg, resolve=True)
    return {k: v for k, v in snapshot.items() if k not in NOT_COMPARED and k != "hydra"}


def _claim(run_dir: Path, cfg: DictConfig) -> dict[str, Any] | None:
    """Check run_dir before a run: returns its finished metrics when a resume can skip it.

    A finished run is never overwritten; a run folder of another config is never reused.
    """
    resume = bool(cfg.get("resume", False))
    snapshot = config_snapshot(cfg)
    saved = run_dir / "run_config.json"
    if saved.exists() and json.loads(saved.read_text()) != json.loads(json.dumps(snapshot)):
        raise FileExistsError(
            f"{run_dir} holds a run of another config; resume with the same command and overrides"
        )
    metrics_file = run_dir / "metrics.json"
    if metrics_file.exists():
        metrics = json.loads(metrics_file.read_text())
        if not resume:
            raise FileExistsError(f"{run_dir} already holds a run; refusing to overwrite it")
        if metrics.get("status") == "finished":
            return metrics
    run_dir.mkdir(parents=True, exist_ok=True)
    write_json(saved, snapshot)
    return None


def run(cfg: DictConfig) -> dict[str, Any]:
    """Train, validate and test one configuration; returns the metrics written to metrics.json.

    With ``resume=true`` a finished run in ``run_dir`` is returned as it is, and an interrupted
    one continues from ``ckpt/last.ckpt`` (saved at every validation).
    """
    warnings.filterwarnings("ignore", message=".*LeafSpec.*is deprecated")  # inside Lightning
    validate(cfg)
    tune_allocator()
    run_dir = Path(cfg.run_dir)
    if (finished := _claim(run_dir, cfg)) is not None:
        return finished
    start = time.time()
    started_after = process_age() if _first_run_of_process() else None
    try:
        module, datamodule = build(cfg)
    except ValueError as e:  # a constructor refused a config value (model.bn, data.normalize…)
        raise ConfigError(str(e)) from e
    datamodule.prepare_data()  # missing or corrupt data fails here, before any file is written
    trainer = make_trainer(cfg, run_dir)
    last = run_dir / "ckpt" / "last.ckpt"
    resume_from = last if cfg.get("resume", False) and last.exists() else None
    fit_start = time.time()
    trainer.fit(module, datamodule=datamodule, ckpt_path=resume_from, weights_only=True)
    fit_time = time.time() - fit_start
    # each stage resets callback_metrics: keep the training ones before validate / test
    fit_metrics = {k: float(v) for k, v in trainer.callback_metrics.items()}
    if not module.history["val_step"] or module.history["val_step"][-1] != trainer.global_step:
        # stopped between validations (max_steps mid-epoch): validate the final weights too
        trainer.validate(module, datamodule=datamodule, verbose=False)
        trainer.save_checkpoint(run_dir / "ckpt" / "last.ckpt", weights_only=False)
        if module.history["val/acc"][-1] >= max(module.history["val/acc"]):
            trainer.save_checkpoint(run_dir / "ckpt" / "best.ckpt", weights_only=False)
    trainer.test(module, datamodule=datamodule, verbose=False)
    metrics = {**fit_metrics, **{k: float(v) for k, v in trainer.callback_metrics.items()}}
    picked = choices(cfg)
    result = {
        "status": "finished",
        "diverged": module.diverged_step is not None,
        "diverged_step": module.diverged_step,
        "seed": cfg.seed,
        "choices": picked,
        "overrides": overrides(),
        "val/acc": module.history["val/acc"][-1] if module.history["val/acc"] else None,
        "val/acc_best": max(module.history["val/acc"], default=None),
        "val/loss": module.history["val/loss"][-1] if module.history["val/loss"] else None,
        # the last full epoch's training metrics, else the last step's
        "train/acc": metrics.get("train/acc_epoch", metrics.get("train/acc_step")),
        "train/loss": metrics.get("train/loss_epoch", metrics.get("train/loss_step")),
        "test/acc": metrics.get("test/acc"),
        "test/loss": metrics.get("test/loss"),
        "steps": trainer.global_step,
        "epochs": trainer.current_epoch,
        "wall_time_s": round(time.time() - start, 3),  # of this process (a resume: since it)
        "fit_time_s": round(fit_time, 3),  # trainer.fit: training and its validations
        # process start (imports, config, data) to the first training step: one run per process
        "startup_s": round(module.first_step_at - start + started_after, 3)
        if module.first_step_at is not None and started_after is not None
        else None,
        "resumed_from_step": module.resumed_from_step,
        "device": str(trainer.strategy.root_device),
        "history": module.history,
    }
    log_final(trainer.loggers, hparams(cfg, picked), result)
    write_json(run_dir / "metrics.json", result)
    return result


def log_final(loggers: list, hp: dict[str, Any], result: dict[str, Any]) -> None:
    """The hyper-parameters, and to TensorBoard's HPARAMS tab the real final metrics against
    them (never Lightning's placeholder -1); then flush every logger."""
    hp_metrics = {
        f"hp/{k.replace('/', '_')}": result[k]
        for k in ("val/acc", "val/acc_best", "test/acc", "test/loss")
        if result[k] is not None
    }
    for logger in loggers:
        if isinstance(logger, TensorBoardLogger):
            logger.log_hyperparams(hp, metrics=hp_metrics)
        else:
            logger.log_hyperparams(hp)
        logger.save()


_started_a_run = False


def _first_run_of_process() -> bool:
    """True once per process: later runs (a sweep's basic launcher) reuse its imports."""
    global _started_a_run
    first, _started_a_run = not _started_a_run, True
    return first


# errors that are the user's input, not a bug: reported in one line, exit status 2
USER_ERRORS: tuple[type[Exception], ...] = (ConfigError, DataError, FileExistsError)


def main(cfg: DictConfig) -> float | None:
    """Entry point of train.py: run, and turn input errors into one line and exit status 2."""
    try:
        return run(cfg)["val/acc_best"]
    except USER_ERRORS as e:
        remove_unstarted(Path(cfg.run_dir))
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)

"""``sweep.vectorize=true``: every seed of a sweep point trained together, as one job.

The job builds each seed's network exactly as an independent run does (``build_net``: same
seeding, same init), stacks them (``bnsweep.nn.StackedNet``), feeds each member its own data
order, split and validation set (one ``MNISTDataModule`` per seed, batches zipped), and trains
them with one optimizer step. Each member then writes what an independent run writes, into
the run folder an independent sweep would give it (``<job>,seed=<s>`` beside the job's
folder): metrics.json, run_config.json, TensorBoard events, csv/, ckpt/last.ckpt and
best.ckpt. The member checkpoints are plain runs' checkpoints, so ``resume=`` continues a
vectorized point (stacking them again) or a run alone.
"""

from __future__ import annotations

import copy
import io
import time
from pathlib import Path
from typing import Any

import pytorch_lightning as pl
import torch
from hydra.utils import instantiate
from omegaconf import DictConfig, open_dict

from bnsweep.config import ConfigError, check_vectorize, validate
from bnsweep.files import atomic_write, remove_unstarted, write_json
from bnsweep.lit import LitMembers
from bnsweep.nn.stacked import StackedNet, member_state, member_view, stack_inputs, stack_states
from bnsweep.runtime import tune_allocator
from bnsweep.train import (
    USER_ERRORS,
    _claim,
    _first_run_of_process,
    build_net,
    choices,
    hparams,
    log_final,
    make_loggers,
    make_trainer,
    overrides,
    percentile_config,
    process_age,
)


def member_dir(job_dir: Path, seed: int) -> Path:
    """The folder an independent sweep gives this seed: ``3_model=lenet`` -> ``3_model=lenet,seed=0``."""
    name = job_dir.name
    return job_dir.parent / f"{name}{'' if name.endswith('_') else ','}seed={seed}"


def member_config(cfg: DictConfig, seed: int, run_dir: Path) -> DictConfig:
    """The config of one member: the point's config with its seed and its own run folder."""
    c = copy.deepcopy(cfg)
    with open_dict(c):
        c.seed = seed
        c.run_dir = str(run_dir)
    return c


class MemberBatches:
    """The members' loaders zipped: batches (N, S·C, …) of each member's own images, y (N, S)."""

    batch_sampler = None

    def __init__(self, loaders: list) -> None:
        self.loaders = loaders
        if len({len(lo) for lo in loaders}) != 1:
            raise ValueError("the members' loaders have different lengths")

    @property
    def sampler(self) -> MemberBatches:
        return self

    def set_epoch(self, epoch: int) -> None:
        for lo in self.loaders:
            lo.set_epoch(epoch)

    def __len__(self) -> int:
        return len(self.loaders[0])

    def state_dict(self) -> dict[str, int]:
        return self.loaders[0].state_dict()  # the members advance in step

    def load_state_dict(self, state: dict[str, int]) -> None:
        for lo in self.loaders:
            lo.load_state_dict(state)

    def __iter__(self):
        for parts in zip(*self.loaders):
            xs, ys = zip(*parts)
            yield stack_inputs(xs), torch.stack(ys, 1)


class MemberData(pl.LightningDataModule):
    """One DataModule per member (its seed's split and data order), served as one."""

    def __init__(self, members: list[pl.LightningDataModule]) -> None:
        super().__init__()
        self.members = members

    def prepare_data(self) -> None:
        for d in self.members:
            d.prepare_data()

    def setup(self, stage: str | None = None) -> None:
        for d in self.members:
            d.trainer = self.trainer  # the training device
            d.setup(stage)

    def train_dataloader(self) -> MemberBatches:
        return MemberBatches([d.train_dataloader() for d in self.members])

    def val_dataloader(self) -> MemberBatches:
        return MemberBatches([d.val_dataloader() for d in self.members])

    def test_dataloader(self) -> MemberBatches:
        return MemberBatches([d.test_dataloader() for d in self.members])


# ---------------------------------------------------------------------------------------------
# checkpoints: one plain run's checkpoint per member, and back

_OWN = ("state_dict", "optimizer_states", "bnsweep", "callbacks")


def _param_keys(net: StackedNet) -> list[str]:
    return [k for k, _ in net.net.named_parameters()]  # the optimizer's parameter order


def member_checkpoint(ckpt: dict, net: StackedNet, m: int) -> dict:
    """Member m's checkpoint in an independent run's format (LitClassifier, ``net.`` keys)."""
    s, shapes = net.members, net.member_shapes
    stacked = {k.removeprefix("net.net."): v for k, v in ckpt["state_dict"].items()}
    state = {"net." + k: v for k, v in member_state(stacked, shapes, m, s).items()}
    keys = _param_keys(net)
    optimizers = []
    for opt in ckpt["optimizer_states"]:
        per_param = {
            i: {
                name: member_view(v, keys[i], m, s).reshape(shapes[keys[i]]).clone()
                if torch.is_tensor(v) and v.dim() > 0
                else v
                for name, v in st.items()
            }
            for i, st in opt["state"].items()
        }
        optimizers.append({"state": per_param, "param_groups": copy.deepcopy(opt["param_groups"])})
    saved = ckpt["bnsweep"]
    sums = saved["epoch_sums"]
    own = {
        "history": saved["history"][m],
        "rng": saved["rng"][m],
        "epoch_sums": sums[m].clone() if sums is not None else None,
        "epoch_n": saved["epoch_n"],
        "diverged_step": saved["diverged_step"][m],
    }
    rest = {k: v for k, v in ckpt.items() if k not in _OWN}
    return {**rest, "state_dict": state, "optimizer_states": optimizers, "callbacks": {},
            "bnsweep": own}  # fmt: skip


def stack_checkpoints(ckpts: list[dict], net: StackedNet) -> dict:
    """The inverse of ``member_checkpoint``: S member checkpoints -> one checkpoint of the job."""
    shapes = {k: tuple(v.shape) for k, v in net.net.state_dict().items()}
    states = [{k.removeprefix("net."): v for k, v in c["state_dict"].items()} for c in ckpts]
    state = {"net.net." + k: v for k, v in stack_states(states, shapes).items()}
    keys = _param_keys(net)
    optimizers = []
    for parts in zip(*(c["optimizer_states"] for c in ckpts)):
        per_param = {}
        for i, st in parts[0]["state"].items():
            per_param[i] = {
                name: torch.stack([p["state"][i][name] for p in parts]).reshape(shapes[keys[i]])
                if torch.is_tensor(v) and v.dim() > 0
                else v
                for name, v in st.items()
            }
        optimizers.append({"state": per_param, "param_groups": parts[0]["param_groups"]})
    own = [c["bnsweep"] for c in ckpts]
    sums = [o["epoch_sums"] for o in own]
    diverged = [o.get("diverged_step") for o in own]
    # a member that had diverged stays frozen at the weights and statistics it stopped with
    frozen = {m: {k: v for k, v in s.items() if v.dim() > 0} for m, (d, s) in
              enumerate(zip(diverged, states)) if d is not None}  # fmt: skip
    saved = {
        "history": [o["history"] for o in own],
        "rng": [o["rng"] for o in own],
        "epoch_sums": torch.stack(sums) if all(x is not None for x in sums) else None,
        "epoch_n": own[0]["epoch_n"],
        "diverged_step": diverged,
        "frozen": frozen,
    }
    rest = {k: v for k, v in ckpts[0].items() if k not in _OWN}
    return {**rest, "state_dict": state, "optimizer_states": optimizers, "callbacks": {},
            "bnsweep": saved}  # fmt: skip


class MemberCheckpoints(pl.Callback):
    """After each validation, every member validated then gets ckpt/last.ckpt, and best.ckpt
    when that validation is its best so far (an independent run's ModelCheckpoint)."""

    def __init__(self, dirs: list[Path]) -> None:
        self.dirs = dirs

    def on_validation_end(self, trainer: pl.Trainer, module: LitMembers) -> None:
        if trainer.sanity_checking or not module.validated_now:
            return
        ckpt = trainer._checkpoint_connector.dump_checkpoint(weights_only=False)
        for m in module.validated_now:
            folder = self.dirs[m] / "ckpt"
            folder.mkdir(parents=True, exist_ok=True)
            own = member_checkpoint(ckpt, module.net, m)
            _save(own, folder / "last.ckpt")
            accs = module.history[m]["val/acc"]
            if accs[-1] >= max(accs):
                _save(own, folder / "best.ckpt")


def _save(obj: dict, path: Path) -> None:
    buffer = io.BytesIO()
    torch.save(obj, buffer)
    atomic_write(path, buffer.getvalue())


# ---------------------------------------------------------------------------------------------
# the job


def run_point(cfg: DictConfig) -> dict[str, Any]:
    """A sweep job with sweep.vectorize: every seed of the point; for search sweepers such as
    Optuna, the point's val/acc_best is the mean over its seeds."""
    best = [r["val/acc_best"] for r in run_members(cfg)]
    return {"val/acc_best": sum(best) / len(best) if None not in best else None}


def run_members(cfg: DictConfig) -> list[dict[str, Any]]:
    """Train every seed in ``cfg.seeds`` of this point together; returns each member's metrics
    (those a resume finds finished are returned as they are)."""
    validate(cfg)
    seeds = check_vectorize(cfg)
    job_dir = Path(cfg.run_dir)
    cfgs = {s: member_config(cfg, s, member_dir(job_dir, s)) for s in seeds}
    results = {}
    for s, c in cfgs.items():
        if (done := _claim(Path(c.run_dir), c)) is not None:
            results[s] = done
    todo = [s for s in seeds if s not in results]
    if todo:
        try:
            results.update(zip(todo, train_members([cfgs[s] for s in todo], job_dir)))
        except USER_ERRORS:  # refused before training: no member folder is left half-made
            for s in todo:
                remove_unstarted(Path(cfgs[s].run_dir))
            raise
    job_dir.mkdir(parents=True, exist_ok=True)
    write_json(job_dir / "members.json", {"seeds": seeds,
               "runs": [Path(cfgs[s].run_dir).name for s in seeds]})  # fmt: skip
    return [results[s] for s in seeds]


def _resume_checkpoint(cfgs: list[DictConfig], net: StackedNet, job_dir: Path) -> Path | None:
    """With resume=true and a last.ckpt of the same step in every member's folder, one job
    checkpoint stacked from them; else None (the members start afresh)."""
    if not cfgs[0].get("resume", False):
        return None
    paths = [Path(c.run_dir) / "ckpt" / "last.ckpt" for c in cfgs]
    if not all(p.exists() for p in paths):
        return None
    ckpts = [torch.load(p, map_location="cpu", weights_only=True) for p in paths]
    if len({c["global_step"] for c in ckpts}) != 1:
        return None
    path = job_dir / "resume.ckpt"
    job_dir.mkdir(parents=True, exist_ok=True)
    _save(stack_checkpoints(ckpts, net), path)
    return path


def train_members(cfgs: list[DictConfig], job_dir: Path) -> list[dict[str, Any]]:
    tune_allocator()
    start = time.time()
    started_after = process_age() if _first_run_of_process() else None
    seeds = [int(c.seed) for c in cfgs]
    nets, generators = [], []
    try:
        for c in cfgs:
            nets.append(build_net(c))
            # the global RNG as the independent run's dropout finds it after building
            generators.append(torch.Generator().set_state(torch.get_rng_state()))
        net = StackedNet(nets, generators)
        data = MemberData([instantiate(c.data) for c in cfgs])
        module = LitMembers(
            net,
            optimizer=instantiate(cfgs[0].optimizer),
            seeds=seeds,
            loggers=[make_loggers(c) for c in cfgs],
            percentiles=percentile_config(cfgs[0]),
            template=nets[0],
        )
    except ValueError as e:  # a constructor refused a config value, or a layer cannot stack
        raise ConfigError(str(e)) from e
    data.prepare_data()
    dirs = [Path(c.run_dir) for c in cfgs]
    trainer = make_trainer(cfgs[0], job_dir, loggers=[], callbacks=[MemberCheckpoints(dirs)])
    resume_from = _resume_checkpoint(cfgs, net, job_dir)
    fit_start = time.time()
    trainer.fit(module, datamodule=data, ckpt_path=resume_from, weights_only=True)
    fit_time = time.time() - fit_start
    if resume_from is not None:
        resume_from.unlink(missing_ok=True)
    module.final_validation = True  # members stopped between validations, or diverged
    if any(not h["val_step"] or h["val_step"][-1] != module.end_step(m)
           for m, h in enumerate(module.history)):  # fmt: skip
        trainer.validate(module, datamodule=data, verbose=False)
    trainer.test(module, datamodule=data, verbose=False)
    wall = time.time() - start
    results = []
    for m, c in enumerate(cfgs):
        h, diverged = module.history[m], module.diverged_step[m]
        test_acc, test_loss = module.test_metrics[m]
        picked = choices(c)
        result = {
            "status": "finished",
            "diverged": diverged is not None,
            "diverged_step": diverged,
            "seed": c.seed,
            "choices": picked,
            "overrides": [*overrides(), f"seed={c.seed}"],
            "val/acc": h["val/acc"][-1] if h["val/acc"] else None,
            "val/acc_best": max(h["val/acc"], default=None),
            "val/loss": h["val/loss"][-1] if h["val/loss"] else None,
            "train/acc": h["train/acc"][-1] if h["train/acc"] else None,
            "train/loss": h["train/loss"][-1] if h["train/loss"] else None,
            "test/acc": test_acc,
            "test/loss": test_loss,
            "steps": module.end_step(m),
            "epochs": trainer.current_epoch,
            # this member's share of the job (the job's own times beside it)
            "wall_time_s": round(wall / len(cfgs), 3),
            "fit_time_s": round(fit_time / len(cfgs), 3),
            "job_wall_time_s": round(wall, 3),
            "vectorized_seeds": seeds,
            "startup_s": round(module.first_step_at - start + started_after, 3)
            if module.first_step_at is not None and started_after is not None
            else None,
            "resumed_from_step": module.resumed_from_step,
            "device": str(trainer.strategy.root_device),
            "history": h,
        }
        log_final(module.member_loggers[m], hparams(c, picked), result)
        for logger in module.member_loggers[m]:
            logger.finalize("success")
        write_json(Path(c.run_dir) / "metrics.json", result)
        results.append(result)
    return results

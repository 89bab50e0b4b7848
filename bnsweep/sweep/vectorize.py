"""``sweep.vectorize=true``: every seed of a sweep point trained together, as one job (and,
where the sweep stacked points that differ only in their init or BN estimator, every seed of
each of them: ``bnsweep.sweep.points``; each point's config is composed again here, as its own job's).

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
import time
from contextlib import ExitStack
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

import pytorch_lightning as pl
import torch
from hydra.utils import instantiate
from omegaconf import DictConfig, open_dict

from bnsweep.config.checks import check_vectorize, refusal, validate
from bnsweep.files import FolderLock, remove_unstarted, write_json
from bnsweep.nn.stacked import StackedNet, member_lrs, stack_inputs
from bnsweep.run import checkpoints
from bnsweep.run.folders import claim, config_snapshot, find_run, member_dir
from bnsweep.run.record import finished_record, write_record
from bnsweep.run.runtime import hydra_verbose, quiet_lightning, tune_allocator
from bnsweep.run.training import (
    USER_ERRORS,
    build_net,
    choices,
    hparams,
    log_final,
    make_loggers,
    make_trainer,
    overrides,
    percentile_config,
    startup_times,
)
from bnsweep.sweep.member_checkpoints import (
    MemberCheckpointIO,
    MemberCheckpoints,
    stack_checkpoints,
)
from bnsweep.sweep.members import LitMembers
from bnsweep.sweep.points import compose_point, member_suffix, stacked_points


@dataclass
class Member:
    """One member of a vectorized job: its run's config, and the command-line overrides and
    option choices its independent run would record."""

    cfg: DictConfig
    overrides: list[str]
    choices: dict[str, str]


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
# the job


def run_point(cfg: DictConfig) -> dict[str, Any]:
    """A sweep job with sweep.vectorize: every seed of the point; for search sweepers such as
    Optuna, the point's val/acc_best is the mean over its seeds."""
    members, trained = _run_members(cfg)
    best = [r["val/acc_best"] for r in members]
    return {"val/acc_best": sum(best) / len(best) if None not in best else None,
            "members": members, "skipped": not trained}  # fmt: skip


def run_members(cfg: DictConfig) -> list[dict[str, Any]]:
    """Train every seed in ``cfg.seeds`` of this point together; returns each member's metrics
    (those a resume finds finished are returned as they are). Every member's folder is locked
    and claimed as an independent run's is."""
    return _run_members(cfg)[0]


def _run_members(cfg: DictConfig) -> tuple[list[dict[str, Any]], list[int]]:
    """run_members' metrics, and the seeds it trained (not found finished)."""
    validate(cfg)
    seeds = check_vectorize(cfg)
    job_dir = Path(cfg.run_dir)
    members = []  # per point (sweep.stack: several), per seed
    for point in stacked_points(cfg):
        if point:
            pcfg, given, picked = compose_point(point)
            validate(pcfg)
        else:
            pcfg, given, picked = cfg, overrides(), choices(cfg)
        for s in seeds:
            c = member_config(pcfg, s, member_dir(job_dir, s, member_suffix(point)))
            found = find_run(job_dir.parent, config_snapshot(c)) if cfg.get("resume") else None
            c = member_config(pcfg, s, found) if found is not None else c
            members.append(Member(c, given, picked))
    results: dict[int, dict[str, Any]] = {}
    with ExitStack() as locks:
        for m in members:
            Path(m.cfg.run_dir).mkdir(parents=True, exist_ok=True)
            locks.enter_context(FolderLock(Path(m.cfg.run_dir), "run folder"))
        todo = []
        try:
            for i, m in enumerate(members):
                if (done := claim(Path(m.cfg.run_dir), m.cfg)) is not None:
                    results[i] = done
                else:
                    todo.append(i)
            if todo:
                results.update(zip(todo, train_members([members[i] for i in todo], job_dir)))
        except USER_ERRORS:  # refused before training: no member folder is left half-made
            locks.close()
            for m in members:
                remove_unstarted(Path(m.cfg.run_dir))
            raise
    job_dir.mkdir(parents=True, exist_ok=True)
    write_json(job_dir / "members.json", {"seeds": seeds,
               "runs": [Path(m.cfg.run_dir).name for m in members]})  # fmt: skip
    return [results[i] for i in range(len(members))], todo


def _resume_checkpoint(cfgs: list[DictConfig], net: StackedNet, job_dir: Path) -> Path | None:
    """With resume=true, one job checkpoint stacked from the members' checkpoints of the newest
    step every member can read (last.ckpt, else prev.ckpt); None when there is none (the
    members start afresh)."""
    if not cfgs[0].get("resume", False):
        return None
    folders = [Path(c.run_dir) / "ckpt" for c in cfgs]
    newest = [checkpoints.readable(f) for f in folders]
    if all(n is None for n in newest):
        return None
    if any(n is None for n in newest):
        checkpoints.warn(
            f"not every member of {job_dir.name} has a checkpoint; the point starts over"
        )
        return None
    step = min(c["global_step"] for _, c in newest)
    chosen = [c if c["global_step"] == step else checkpoints.at_step(f, step)
              for f, (_, c) in zip(folders, newest)]  # fmt: skip
    if any(c is None for c in chosen):
        checkpoints.warn(f"the members of {job_dir.name} have no checkpoint of one step in common; "
                         "the point starts over")  # fmt: skip
        return None
    path = job_dir / "resume.ckpt"
    checkpoints.save(stack_checkpoints(chosen, net), path)
    return path


def _at_member_lrs(make: Any, lrs: list[float], params: Any) -> torch.optim.Optimizer:
    return member_lrs(make(params, lr=1.0), lrs)


def train_members(members: list[Member], job_dir: Path) -> list[dict[str, Any]]:
    cfgs = [m.cfg for m in members]
    tune_allocator()
    start = time.time()
    quiet_lightning(hydra_verbose())
    seeds = [int(c.seed) for c in cfgs]
    nets, generators = [], []
    dirs = [Path(c.run_dir) for c in cfgs]
    try:
        for c in cfgs:
            nets.append(build_net(c))
            # the global RNG as the independent run's dropout finds it after building
            generators.append(torch.Generator().set_state(torch.get_rng_state()))
        net = StackedNet(nets, generators)
        data = MemberData([instantiate(c.data) for c in cfgs])
        optimizer = instantiate(cfgs[0].optimizer)
        lrs = [float(c.optimizer.lr) for c in cfgs]
        if len(set(lrs)) > 1:  # points told apart by optimizer.lr (lr_stacks): one lr each
            net.lrs = lrs
            optimizer = partial(_at_member_lrs, optimizer, lrs)
        module = LitMembers(
            net,
            optimizer=optimizer,
            seeds=seeds,
            loggers=[make_loggers(c) for c in cfgs],
            percentiles=percentile_config(cfgs[0]),
            template=nets[0],
        )
        data.prepare_data()
        saver = MemberCheckpoints(job_dir)
        trainer = make_trainer(cfgs[0], job_dir, loggers=[], callbacks=[saver],
                               plugins=[MemberCheckpointIO(net, dirs)])  # fmt: skip
    except Exception as e:
        if (refused := refusal(e)) is not None:  # a constructor refused a value, or a layer
            raise refused from e  # cannot stack
        raise
    resume_from = _resume_checkpoint(cfgs, net, job_dir)
    fit_start = time.time()
    if resume_from is not None and checkpoints.load(resume_from)["bnsweep"]["fit_done"]:
        # training had ended (killed before the metrics were written): the final state
        module.restore(checkpoints.load(resume_from))
        epochs = checkpoints.load(resume_from)["epoch"]
    else:
        trainer.fit(module, datamodule=data, ckpt_path=resume_from, weights_only=True)
        module.final_validation = True  # members stopped between validations, or diverged
        if any(not h["val_step"] or h["val_step"][-1] != module.end_step(m)
               for m, h in enumerate(module.history)):  # fmt: skip
            trainer.validate(module, datamodule=data, verbose=False)
        module.fit_done = True  # the final state: a resume from here on only tests
        every = range(len(cfgs))  # last.ckpt: the final state; best.ckpt: if the final validation
        saver.write(trainer, list(every),  # (in fit or after it) is a member's best
                    [m for m in every if checkpoints.improved(module.history[m]["val/acc"])])  # fmt: skip
        epochs = trainer.current_epoch
    fit_time = time.time() - fit_start
    if resume_from is not None:
        resume_from.unlink(missing_ok=True)
    weights = cfgs[0].get("test_weights", "last")
    if weights == "best":  # each member's best validation weights, BN statistics included
        best = [checkpoints.load(d / "ckpt" / "best.ckpt")["state_dict"] for d in dirs]
        net.load_member_state_dicts(
            [{k.removeprefix("net."): v for k, v in b.items()} for b in best]
        )
    if weights != "none":  # none: the test set is never evaluated (sweep.tune's tuning runs)
        trainer.test(module, datamodule=data, verbose=False)
    wall = time.time() - start
    results = []
    for m, (c, member) in enumerate(zip(cfgs, members)):
        picked = member.choices
        record = finished_record(
            seed=c.seed,
            history=module.history[m],
            test=module.test_metrics[m] if module.test_metrics else (None, None),
            test_weights=weights,
            steps=module.end_step(m),
            epochs=epochs,
            diverged_step=module.diverged_step[m],
            choices=picked,
            overrides=[*member.overrides, f"seed={c.seed}"],
            times={
                # this member's share of the job (the job's own times beside it)
                "wall_time_s": round(wall / len(cfgs), 3),
                "fit_time_s": round(fit_time / len(cfgs), 3),
                "job_wall_time_s": round(wall, 3),
                "vectorized_seeds": seeds,
                **startup_times(None, module.first_step_at),  # a sweep's job: none recorded
            },
            resumed_from_step=module.resumed_from_step,
            device=str(trainer.strategy.root_device),
            hparams=hparams(c, picked, nets[m], member.overrides),
        )
        log_final(module.member_loggers[m], record["hparams"], record)
        write_record(Path(c.run_dir), record)
        results.append(record)
    return results

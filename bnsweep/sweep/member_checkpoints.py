"""Checkpoints of a vectorized job: written as each member's own, an independent run's
checkpoint in its run folder (``member_checkpoint``), and stacked back into one job checkpoint
for a resume (``stack_checkpoints``)."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import pytorch_lightning as pl
import torch

from bnsweep.nn.stacked import StackedNet, member_state, member_view, stack_states
from bnsweep.run import checkpoints
from bnsweep.run.checkpoints import AtomicCheckpointIO, ValidationCheckpoints
from bnsweep.sweep.members import LitMembers

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
        groups = copy.deepcopy(opt["param_groups"])
        if net.lrs is not None:  # each member's own lr (the job's optimizer steps at lr 1)
            for g in groups:
                g["lr"] = net.lrs[m]
        optimizers.append({"state": per_param, "param_groups": groups})
    saved = ckpt["bnsweep"]
    sums = saved["epoch_sums"]
    own = {
        "history": saved["history"][m],
        "rng": saved["rng"][m],
        "epoch_sums": sums[m].clone() if sums is not None else None,
        "epoch_n": saved["epoch_n"],
        "diverged_step": saved["diverged_step"][m],
        "fit_done": saved.get("fit_done", False),
    }
    if m in saved.get("stopped_at_eval", []):  # diverged in an evaluation: stopped after its step
        own["stopped_at_eval"] = True
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
        groups = copy.deepcopy(parts[0]["param_groups"])
        if net.lrs is not None:  # the members' lrs apart: the job's optimizer steps at lr 1
            for g in groups:
                g["lr"] = 1.0
        optimizers.append({"state": per_param, "param_groups": groups})
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
        "stopped_at_eval": [m for m, o in enumerate(own) if o.get("stopped_at_eval")],
        "fit_done": all(o.get("fit_done", False) for o in own),
    }
    rest = {k: v for k, v in ckpts[0].items() if k not in _OWN}
    return {**rest, "state_dict": state, "optimizer_states": optimizers, "callbacks": {},
            "bnsweep": saved}  # fmt: skip


class MemberCheckpointIO(AtomicCheckpointIO):
    """Lightning's checkpoint writer for a vectorized job: the job's checkpoint is written as
    each member's own (``member_checkpoint``), into the members' run folders: the members whose
    last.ckpt and whose best.ckpt to write come in ``storage_options``."""

    def __init__(self, net: StackedNet, dirs: list[Path]) -> None:
        super().__init__()
        self.net, self.dirs = net, dirs

    def save_checkpoint(self, checkpoint: dict, path: Any, storage_options: Any = None) -> None:
        if not storage_options:  # the job's own checkpoint (none is written by bnsweep)
            return super().save_checkpoint(checkpoint, path)
        last, best = storage_options["last"], storage_options["best"]
        for m in dict.fromkeys([*last, *best]):
            own = member_checkpoint(checkpoint, self.net, m)
            folder = self.dirs[m] / "ckpt"
            if m in last:
                checkpoints.save(own, folder / checkpoints.LAST)
            if m in best:
                checkpoints.save(own, folder / "best.ckpt")


class MemberCheckpoints(ValidationCheckpoints):
    """What RunCheckpoints writes for an independent run, for every member that the validation
    covered: its best.ckpt where that validation is its best so far, and its last.ckpt."""

    def __init__(self, job_dir: Path) -> None:
        super().__init__()
        self.job_dir = job_dir

    def validated(self, pl_module: LitMembers) -> list[int]:
        return list(pl_module.validated_now)

    def save_best(self, trainer: pl.Trainer, pl_module: LitMembers, what: list[int]) -> None:
        best = [m for m in what if checkpoints.improved(pl_module.history[m]["val/acc"])]
        self.write(trainer, [], best)

    def save_last(self, trainer: pl.Trainer, pl_module: LitMembers, what: list[int]) -> None:
        self.write(trainer, what, [])

    def write(self, trainer: pl.Trainer, last: list[int], best: list[int]) -> None:
        if last or best:
            trainer.save_checkpoint(self.job_dir / checkpoints.LAST,
                                    storage_options={"last": list(last), "best": list(best)})  # fmt: skip

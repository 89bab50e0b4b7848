"""The interpolations bnsweep's configs may use, registered with OmegaConf on ``import bnsweep``.

- ``${bn_name:${oc.select:model.bn,null},${hydra:runtime.choices.bn}}``: run folder names: the
  bn choice for a network with BN layers, ``nobn`` for a built-in one without (lenet, cnn, mlp:
  ``model.bn`` empty); a network without ``model.bn`` (one's own, torchvision's): the bn choice.
- ``${min:A,B}``: the smaller number (``bn.ghost_batch_size: ${min:8,${data.batch_size}}``).
- ``${lr_for_batch:LR,BATCH,REFERENCE,RULE}``: a learning rate scaled with the batch size from
  the one that suits the REFERENCE batch: LR·B/REFERENCE (RULE ``linear``, Goyal et al. 2017),
  LR·√(B/REFERENCE) (``sqrt``) or LR (``none``).
- ``${data_fact:KEY}``, inside a data config: a fact of its source read from the data itself
  (``num_classes``, ``channels``, ``image_size``; ``bnsweep.data.sources.facts``), for data=npz and
  data=image_folder, whose model configs read them as ``${data.num_classes}``.
- ``${folder_name:${hydra.job.override_dirname}}``: a sweep job's folder, less the ``+`` / ``++``
  of keys a command line adds.
- ``${steps_for_samples:SAMPLES,BATCH}``: the training steps that see SAMPLES samples in batches
  of BATCH, ⌈SAMPLES/BATCH⌉ (a fixed budget of samples whatever the batch size).
"""

from __future__ import annotations

import math
import re
from typing import Any

from omegaconf import OmegaConf

LR_RULES = ("linear", "sqrt", "none")


def lr_for_batch(lr: float, batch: int, reference: int, rule: str = "linear") -> float:
    if rule not in LR_RULES:
        raise ValueError(f"lr_for_batch's rule must be one of {list(LR_RULES)}, got {rule!r}")
    ratio = batch / reference
    return float(lr) * {"linear": ratio, "sqrt": math.sqrt(ratio), "none": 1.0}[rule]


def steps_for_samples(samples: int, batch: int) -> int:
    return -(-int(samples) // int(batch))


def data_fact(key: str, *, _parent_: Any) -> Any:  # noqa: ANN401 (a number or a list)
    from bnsweep.data.sources import facts

    return facts(_parent_)[key]


def folder_name(override_dirname: str) -> str:
    """A sweep job's folder name from Hydra's override_dirname, without the ``+``/``++``/``~``
    that add a key (``++trainer.precision=bf16-mixed`` names ``trainer.precision=bf16-mixed``)."""
    return re.sub(r"(^|,)[+~]+", r"\1", override_dirname)


RESOLVERS = {
    "folder_name": folder_name,
    "data_fact": data_fact,
    "bn_name": lambda layers, choice: choice if layers or layers is None else "nobn",
    "min": lambda a, b: min(a, b),
    "lr_for_batch": lr_for_batch,
    "steps_for_samples": steps_for_samples,
}


def register() -> None:
    for name, fn in RESOLVERS.items():
        if not OmegaConf.has_resolver(name):
            OmegaConf.register_new_resolver(name, fn)

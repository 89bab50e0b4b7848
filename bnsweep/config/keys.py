"""The config keys that are not hyper-parameters of what a run computes, in one place.

Every list that treats keys specially derives from these: which settings two runs are compared
on (``bnsweep.run.folders``), which never name a run folder (sweep.py's ``exclude_keys``), which never
define a sweep point (the report), and which the HPARAMS tab shows. Light (no imports): the
sweep process and the report use it.
"""

from __future__ import annotations

SEED = "seed"
# top-level keys saying how a run is launched, logged and reported, not what it computes
LAUNCH = ("seeds", "study", "threads", "run_dir", "resume", "sweep", "hydra", "logger", "report")
# facts of the data (read from it, or fixed by the dataset), which model configs interpolate:
# the data's identity already says them
DATA_FACTS = ("data.num_classes", "data.channels", "data.image_size")
# keys saying where the data and files live, how the data is checked, or how progress is
# displayed (data.root of an image folder too: a moved folder still resumes, like MNIST's)
LOCATION = ("data.root", "data.download", "data.cache", "data.md5", "trainer.enable_progress_bar",
            *DATA_FACTS)  # fmt: skip
# what the HPARAMS tab records of every run, besides the keys its command line set
HPARAM_KEYS = (
    "model", "bn", "bn.momentum", "bn.window", "bn.eps", "init", "init.std", "optimizer",
    "optimizer.lr", "data", "data.batch_size", SEED,
)  # fmt: skip
# ticked in the sweep's HPARAMS experiment after the swept keys and the seed (TensorBoard
# ticks the first five hyper-parameters by default)
HPARAMS_SHOWN = ("model", "bn", "init.std", "optimizer.lr")


# keys added after runs were first recorded, each with the value at which a config computes what
# one without the key computed: a run config leaves them out at that value, so a sweep folder
# made before the key existed still resumes (``bnsweep.run.folders.comparable``). So is model.activation
# at the network's own nonlinearity (bnsweep.nn.architectures.OWN_ACTIVATION).
NEUTRAL = {
    "model.bn_position": "pre", "bn.precise_batches": None,
    "bn.evaluate": "running", "init.layers": None, "optimizer.initial_accumulator_value": 0.0,
    "data.drop_last": False, "probes.every": None, "model.num_classes": 10,
    "probes.steps": [0.05, 0.1, 0.15, 0.2, 0.25, 0.3, 0.35, 0.4],
}  # fmt: skip


# ``_target_``s that moved when bnsweep was arranged into packages, old -> new: a run recorded
# under the old name compares equal to the same run now (``bnsweep.run.folders.comparable``)
MOVED = {"bnsweep.networks.torchvision_model": "bnsweep.nn.networks.torchvision_model"}


# bn keys the training loop reads, not the norm layer: PreciseBN's, and sync (set on the layers
# once they are built)
PRECISE_KEYS = ("precise_batches", "evaluate")
LOOP_KEYS = (*PRECISE_KEYS, "sync")


def computes(key: str) -> bool:
    """Whether a (dotted) key can change what a run computes: False for LAUNCH and LOCATION
    keys (and those below them), True for the seed and every other key."""
    key = key.lstrip("+~")
    return key.split(".")[0].split("/")[0] not in LAUNCH and key not in LOCATION


def defines_a_point(key: str) -> bool:
    """Whether a key's value tells sweep points apart (the seed does not: it repeats a point)."""
    return key != SEED and computes(key)


# keys that never name a run folder (sweep.py adds the overrides fixed for the whole sweep): the
# launch keys a command line sets and the location keys
FOLDER_NAME_EXCLUDED = ("seeds", "study", "threads", "run_dir", "resume", "sweep.vectorize",
                        "sweep.stack", *LOCATION)  # fmt: skip


# the sweepers that expand the swept lists into a grid (every combination): Hydra's basic sweeper
# and bnsweep's subclass of it (hydra/sweeper=bnsweep); a search sweeper (Optuna) proposes points
GRID_SWEEPERS = ("BasicSweeper", "BnsweepSweeper")


def grid_sweeper(target: object) -> bool:
    """Whether a ``hydra.sweeper._target_`` sweeps a grid (GRID_SWEEPERS)."""
    return str(target).rsplit(".", 1)[-1] in GRID_SWEEPERS


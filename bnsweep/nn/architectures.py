"""The named layers of each network (where BN can sit, whose pre-activations can be tracked),
without torch: the config checks read them before any job (model.bn, percentiles.layer), and
the networks in bnsweep.nn are built from them, so the two never disagree.

A network not listed here is checked by its constructor alone.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

LENET = ("conv1", "conv2", "fc1", "fc2")
INIT_CNN = ("conv1", "conv2", "fc1")


def mlp_layers(hidden: Sequence[int]) -> tuple[str, ...]:
    """fc1 … fcN, one per hidden layer."""
    return tuple(f"fc{i + 1}" for i in range(len(hidden)))


# the model config's _target_ -> its layer names, from the model config
LAYERS: dict[str, Callable[[Mapping[str, Any]], tuple[str, ...]]] = {
    "bnsweep.nn.LeNet": lambda model: LENET,
    "bnsweep.nn.InitCNN": lambda model: INIT_CNN,
    "bnsweep.nn.MLP": lambda model: mlp_layers(model.get("hidden", (100, 100, 100))),
}


# the model config's _target_ -> the nonlinearity its network has unless model.activation says
OWN_ACTIVATION = {
    "bnsweep.nn.LeNet": "sigmoid",
    "bnsweep.nn.InitCNN": "relu",
    "bnsweep.nn.MLP": "sigmoid",
}


def layers_of(model: Mapping[str, Any]) -> tuple[str, ...] | None:
    """The layer names of the network a model config builds; None for one not listed."""
    names = LAYERS.get(model.get("_target_", ""))
    return names(model) if names is not None else None


# Rough cost of a training sample (forward, backward, step) and of an evaluated one, in ms, on
# this project's 2-core CPU (docs/reference/benchmarks.md: a lenet_fc_bn2 epoch, the init-study CNN, the
# paper's MLP); the dry run's time estimate. A GPU is far faster.
COST_MS = {
    "bnsweep.nn.LeNet": (0.16, 0.05),
    "bnsweep.nn.InitCNN": (1.4, 0.45),
    "bnsweep.nn.MLP": (0.08, 0.02),
}

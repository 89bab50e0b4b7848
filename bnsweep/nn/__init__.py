"""Pure PyTorch core: our BatchNorm layer, the networks of the studies, weight init."""

from bnsweep.nn.batchnorm import (
    BatchNorm,
    BatchNorm1d,
    BatchNorm2d,
    BatchNorm3d,
    BatchRenorm,
    TorchBatchNorm,
    batch_norms,
    make_batch_renorm,
    make_batchnorm,
    make_group_norm,
    make_layer_norm,
    make_no_norm,
    make_torch_batchnorm,
    norm_layers,
    recompute_population_stats,
)
from bnsweep.nn.cnn import InitCNN
from bnsweep.nn.estimators import ESTIMATORS, Estimator, register
from bnsweep.nn.init import glorot_uniform, normal, orthogonal, torch_default, truncated_normal
from bnsweep.nn.layers import (
    Block,
    NormFactory,
    block_names,
    capture_preactivations,
    count_parameters,
)
from bnsweep.nn.lenet import LeNet
from bnsweep.nn.mlp import MLP
from bnsweep.nn.swap import swap_batchnorms, torch_batchnorms

__all__ = [
    "ESTIMATORS",
    "MLP",
    "Estimator",
    "BatchNorm",
    "BatchNorm1d",
    "BatchNorm2d",
    "BatchNorm3d",
    "TorchBatchNorm",
    "BatchRenorm",
    "batch_norms",
    "make_batch_renorm",
    "make_group_norm",
    "make_no_norm",
    "make_layer_norm",
    "orthogonal",
    "Block",
    "InitCNN",
    "LeNet",
    "NormFactory",
    "make_batchnorm",
    "block_names",
    "capture_preactivations",
    "count_parameters",
    "glorot_uniform",
    "normal",
    "norm_layers",
    "recompute_population_stats",
    "register",
    "make_torch_batchnorm",
    "torch_default",
    "truncated_normal",
    "swap_batchnorms",
    "torch_batchnorms",
]

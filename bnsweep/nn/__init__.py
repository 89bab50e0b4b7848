"""The model: our BatchNorm layer and its inference-statistics estimators, the studies' networks,
weight init, and any network by ``_target_`` with the ``bn=`` choice put in (``networks``).

Pure PyTorch, plus ``architectures`` (the studies' layer names, without torch, which the config
checks read). Imports only the shared leaves (``bnsweep.files``); nothing of data, config, run,
sweep or report. Names below load on first use, so ``bnsweep.nn.architectures`` costs no torch.
"""

from __future__ import annotations

from bnsweep import lazy

_EXPORTS = {
    "BatchNorm": "bnsweep.nn.batchnorm",
    "BatchNorm1d": "bnsweep.nn.batchnorm",
    "BatchNorm2d": "bnsweep.nn.batchnorm",
    "BatchNorm3d": "bnsweep.nn.batchnorm",
    "BatchRenorm": "bnsweep.nn.renorm",
    "TorchBatchNorm": "bnsweep.nn.norms",
    "batch_norms": "bnsweep.nn.norms",
    "make_batch_renorm": "bnsweep.nn.norms",
    "make_batchnorm": "bnsweep.nn.norms",
    "make_group_norm": "bnsweep.nn.norms",
    "make_layer_norm": "bnsweep.nn.norms",
    "make_no_norm": "bnsweep.nn.norms",
    "make_torch_batchnorm": "bnsweep.nn.norms",
    "norm_layers": "bnsweep.nn.norms",
    "recompute_population_stats": "bnsweep.nn.norms",
    "InitCNN": "bnsweep.nn.cnn",
    "ESTIMATORS": "bnsweep.nn.estimators",
    "Estimator": "bnsweep.nn.estimators",
    "register": "bnsweep.nn.estimators",
    "glorot_uniform": "bnsweep.nn.init",
    "normal": "bnsweep.nn.init",
    "orthogonal": "bnsweep.nn.init",
    "torch_default": "bnsweep.nn.init",
    "truncated_normal": "bnsweep.nn.init",
    "Block": "bnsweep.nn.layers",
    "NormFactory": "bnsweep.nn.layers",
    "block_names": "bnsweep.nn.layers",
    "capture_preactivations": "bnsweep.nn.layers",
    "count_parameters": "bnsweep.nn.layers",
    "LeNet": "bnsweep.nn.lenet",
    "MLP": "bnsweep.nn.mlp",
    "swap_batchnorms": "bnsweep.nn.swap",
    "torch_batchnorms": "bnsweep.nn.swap",
    "torchvision_model": "bnsweep.nn.networks",
    "RaiseAtStep": "bnsweep.nn.faults",
}
__all__ = sorted(_EXPORTS)

__getattr__ = lazy(__name__, _EXPORTS)

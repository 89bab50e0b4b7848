"""bnsweep: batch-normalization studies on MNIST, swept with Hydra on PyTorch Lightning."""

__version__ = "0.1.0"

from bnsweep import resolvers as _resolvers

_resolvers.register()  # the configs' ${min:…}, ${lr_for_batch:…} … resolve wherever bnsweep is imported

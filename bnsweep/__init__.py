"""bnsweep: batch-normalization studies on MNIST, swept with Hydra on PyTorch Lightning."""

__version__ = "0.1.0"

"""python -m bnsweep.bench [--only SECTION ...]: side-by-side timings, one table of ratios.

The benchmarks: the sections below, each in its module (timing, steps, processes, vectorized, devices),
printed as one table by ``__main__``. Imports any package of bnsweep; nothing imports it.

Sections (rows), each measured against the best alternative in the same run:
- bn: our BN layer vs torch.nn.BatchNorm, forward + backward in training mode and forward in eval
  mode, at the LeNet shapes and a large one (alternating, several rounds, medians);
- step: one epoch of lenet_fc_bn2 through bnsweep's full path (Hydra config, LightningModule,
  DataModule, loggers, checkpoints) vs a plain PyTorch loop with the same model, optimizer, data
  and batch order, and bnsweep with trainer.compile=true (alternating rounds, medians);
- data: one epoch of training batches from bnsweep's DataModule vs torchvision's MNIST with
  ToTensor + Normalize through a default DataLoader;
- startup: process start to the first training step of ``python train.py``, with the decoded
  dataset cache vs without it, and against a process that only imports pytorch_lightning;
- memory: peak resident memory of one training process, bnsweep vs the plain loop;
- sweep: N short runs one after another (basic launcher) vs hydra/launcher=joblib with 2 workers,
  and one job's own time in each (which bounds what the two workers can gain);
- vectorize: S seeds of lenet_fc_bn2 trained as one stacked network (sweep.vectorize=true) vs
  S runs one after another: one training step (the arithmetic alone, per-member and fused
  kernels, on the CPU and, when there is one, the GPU), the same for members of the init-scale
  study's CNN (init scales stacked with seeds), and one epoch through ``python sweep.py``
  (everything a user waits for);
- devices: a lenet_fc_bn2 step of a global batch of 64 in two gloo processes (DDP, 32 each) vs
  one process of 64 on the same cores, and the same two processes with bn.sync=true.
Needs the MNIST files (docs/how-to/data.md).
"""

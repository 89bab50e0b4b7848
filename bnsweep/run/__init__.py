"""One training run: the LightningModule every network trains in (``lit``, its loss sums in
``losses``), the BN dashboards (``dashboards``), the pre-flight check (``preflight``), the run
folder and whether it may start, continue or skip (``folders``), checkpoints, loggers and
TensorBoard event files, the result record (``record``, metrics.json), process settings
(``runtime``), Ctrl-C and SIGTERM (``interrupts``), several devices (``ranks``: which rank,
the sums and agreements across ranks, the watch that ends every rank when one fails), and
``training.run(cfg)`` that ties them (train.py's outcome: ``entry``).

Imports the shared leaves, config, data and nn; never sweep or report.
"""

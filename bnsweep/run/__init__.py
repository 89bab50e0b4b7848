"""One training run: the LightningModule every network trains in (``lit``, its loss sums in
``losses``), the BN dashboards (``dashboards``), the pre-flight check (``preflight``), the run
folder and whether it may start, continue or skip (``folders``), checkpoints, loggers and
TensorBoard event files, the result record (``record``, metrics.json), process settings
(``runtime``), Ctrl-C and SIGTERM (``interrupts``), and ``training.run(cfg)`` that ties them.

Imports the shared leaves, config, data and nn; never sweep or report.
"""

"""``hydra/sweeper=bnsweep``: Hydra's basic sweeper, with vectorized points grouped into jobs."""

from __future__ import annotations

from collections.abc import Sequence

# Hydra's basic sweeper lives in a private module; hydra-core is pinned to the range this
# subclass was tested with (pyproject.toml, tests/test_packaging.py)
from hydra._internal.core_plugins.basic_sweeper import BasicSweeper
from omegaconf import OmegaConf


class BnsweepSweeper(BasicSweeper):
    """The basic sweeper (the same arguments, batches, validation and launch); with
    ``sweep.vectorize=true`` each batch's jobs are grouped first: the points that differ only in
    what stacks (init, BN estimator) become one job training them all (``sweep.stack``)."""

    def get_job_batch(self) -> Sequence[Sequence[str]]:
        batch = super().get_job_batch()
        if not OmegaConf.select(self.config, "sweep.vectorize", default=False):
            return batch
        from bnsweep.sweep.points import group_jobs

        return group_jobs(self.config, batch, self.hydra_context.config_loader)

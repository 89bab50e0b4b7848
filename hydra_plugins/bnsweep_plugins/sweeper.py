"""``hydra/sweeper=bnsweep``: Hydra's basic sweeper, with vectorized points grouped into jobs."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

# Hydra's basic sweeper lives in a private module; hydra-core is pinned to the range this
# subclass was tested with (pyproject.toml, tests/test_packaging.py)
from hydra._internal.core_plugins.basic_sweeper import BasicSweeper
from omegaconf import OmegaConf


class BnsweepSweeper(BasicSweeper):
    """The basic sweeper (the same arguments, batches, validation and launch); with
    ``sweep.vectorize=true`` each batch's jobs are grouped first: the points that differ only in
    what stacks (init, BN estimator) become one job training them all (``sweep.stack``)."""

    def sweep(self, arguments: list[str]) -> Any:
        """The basic sweeper's sweep; with ``sweep.tune`` each point tuned first
        (bnsweep.sweep.tune)."""
        from bnsweep.sweep import tune

        settings = tune.settings(self.config)
        if settings is None:
            return super().sweep(arguments)
        from hydra.core.override_parser.overrides_parser import OverridesParser

        parser = OverridesParser.create(config_loader=self.hydra_context.config_loader)
        parsed = parser.parse_overrides([*self._parse_config(), *arguments])
        jobs = [j for batch in self.split_arguments(parsed, None) for j in batch]
        sweep_dir = Path(self.config.hydra.sweep.dir)
        sweep_dir.mkdir(parents=True, exist_ok=True)
        OmegaConf.save(self.config, sweep_dir / "multirun.yaml")
        return tune.Tuner(self, settings).sweep(jobs)

    def get_job_batch(self) -> Sequence[Sequence[str]]:
        batch = super().get_job_batch()
        if not OmegaConf.select(self.config, "sweep.vectorize", default=False):
            return batch
        from bnsweep.sweep.points import group_jobs

        return group_jobs(self.config, batch, self.hydra_context.config_loader)

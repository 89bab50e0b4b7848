"""``hydra/launcher=slurm`` and ``slurm_local``: Hydra's Slurm launcher, subclassed (where
hydra-submitit-launcher is installed: the ``[slurm]`` extra). ``submitit_local`` stays Hydra's own
(local processes: no job is lost to a scheduler, no point needs tasks)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

try:
    from hydra_plugins.hydra_submitit_launcher.submitit_launcher import SlurmLauncher
except ImportError:  # without the [slurm] extra there is nothing to subclass
    SlurmLauncher = None


def _launch(self: Any, job_overrides: Sequence[Sequence[str]], initial_job_idx: int) -> Any:
    from bnsweep.sweep.launchers import launch

    return launch(self, job_overrides, initial_job_idx)


if SlurmLauncher is not None:

    class BnsweepSlurmLauncher(SlurmLauncher):
        """Slurm jobs, each result collected on its own; a point on N devices: N tasks."""

        launch = _launch

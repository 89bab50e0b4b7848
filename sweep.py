"""python sweep.py [-m] [study=NAME] [key=v1,v2 ...] [seeds=[0,1,2]] — a study: points × seeds.

Every point runs once per seed; when the sweep ends its folder gets summary.csv / summary.md,
plots and TensorBoard aggregate runs (see README). Exits non-zero if any run failed.
"""

import sys

import hydra
from omegaconf import DictConfig


@hydra.main(version_base="1.3", config_path="conf", config_name="sweep")
def main(cfg: DictConfig) -> float:
    from bnsweep.sweep import run_job

    return run_job(cfg)


if __name__ == "__main__":
    from bnsweep.cli import sweep_argv

    sys.argv = [sys.argv[0], *sweep_argv(sys.argv[1:])]
    main()
    from bnsweep.sweep import SweepCallback

    if SweepCallback.failed:
        print(
            f"error: {len(SweepCallback.failed)} run(s) failed: {' '.join(SweepCallback.failed)}",
            file=sys.stderr,
        )
        sys.exit(1)

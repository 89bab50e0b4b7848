"""python sweep.py [-m] [study=NAME] [key=v1,v2 ...] [seeds=[0,1,2]] — a study: points × seeds.

Every point runs once per seed; when the sweep ends its folder gets summary.csv / summary.md,
plots and TensorBoard aggregate runs (see README). Exits non-zero if any run failed.
"""

import hydra
from omegaconf import DictConfig


@hydra.main(version_base="1.3", config_path="conf", config_name="sweep")
def main(cfg: DictConfig) -> float:
    from bnsweep.sweep import run_job

    return run_job(cfg)


if __name__ == "__main__":
    import json
    import os
    import sys

    from bnsweep.cli import skip_mode_probe, sweep_argv

    os.environ["BNSWEEP_TYPED"] = json.dumps(sys.argv[1:])  # command.txt: what was typed
    sys.argv = [sys.argv[0], *sweep_argv(sys.argv[1:])]
    skip_mode_probe()
    try:
        main()
    except BaseException as e:
        from bnsweep.sweep import SweepStopped, stopped

        if not isinstance(e, SweepStopped):
            raise
        sys.exit(stopped(e))

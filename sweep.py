"""python sweep.py [-m] [study=NAME] [key=v1,v2 ...] [seeds=[0,1,2]] — a study: points × seeds.

Every point runs once per seed; when the sweep ends its folder gets summary.csv / summary.md,
plots and TensorBoard aggregate runs (see docs/reference/report.md). Exits non-zero if any run failed.
"""

import hydra
from omegaconf import DictConfig


@hydra.main(version_base="1.3", config_path="conf", config_name="sweep")
def main(cfg: DictConfig) -> float:
    from bnsweep.sweep.jobs import run_job

    return run_job(cfg)


if __name__ == "__main__":
    import json
    import os
    import sys

    from bnsweep.config.cli import skip_mode_probe, sweep_argv

    if {"--help", "-h"} & set(sys.argv[1:]):  # described from conf/ (Hydra's: --hydra-help)
        from bnsweep.config.help import help_text

        sys.exit(print(help_text("sweep", sys.argv[1:])))
    if "--dry-run" in sys.argv:  # the jobs it would run, their folders and a rough time
        from bnsweep.sweep.plan import dry_run

        sys.exit(dry_run(sweep_argv([a for a in sys.argv[1:] if a != "--dry-run"])))
    os.environ["BNSWEEP_TYPED"] = json.dumps(sys.argv[1:])  # command.txt: what was typed
    sys.argv = [sys.argv[0], *sweep_argv(sys.argv[1:])]
    skip_mode_probe()
    from bnsweep.run import interrupts

    interrupts.install()  # Ctrl-C, SIGTERM: one line, where it stopped and how to go on
    try:
        main()
    except BaseException as e:
        from bnsweep.sweep.jobs import SweepStopped, interrupted_line, stopped

        if interrupts.received() is not None and isinstance(e, (KeyboardInterrupt, SystemExit)):
            print(interrupted_line(), file=sys.stderr)
            sys.exit(interrupts.exit_status())
        if not isinstance(e, SweepStopped):
            raise
        sys.exit(stopped(e))

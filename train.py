"""python train.py [group=option ...] [key=value ...] — one training run (see docs/tutorials/first-run.md)."""

import hydra
from omegaconf import DictConfig


@hydra.main(version_base="1.3", config_path="conf", config_name="train")
def main(cfg: DictConfig) -> float | None:
    from bnsweep.config.checks import exit_if_invalid

    exit_if_invalid(cfg)  # a bad value: one line, before the heavy imports
    import time

    before = time.perf_counter()
    from bnsweep.run.entry import main as run_main  # heavy imports after --help / --cfg

    return run_main(cfg, import_s=time.perf_counter() - before)


if __name__ == "__main__":
    import sys

    from bnsweep.config.cli import (
        check_output_dir,
        quote_paths,
        rank_overrides,
        register_resolvers,
        skip_mode_probe,
        trainer_overrides,
    )

    if {"--help", "-h"} & set(sys.argv[1:]):  # described from conf/ (Hydra's: --hydra-help)
        from bnsweep.config.help import help_text

        sys.exit(print(help_text("train", sys.argv[1:])))
    import json
    import os

    from bnsweep.run.interrupts import install

    install()  # Ctrl-C, SIGTERM: one line, where it stopped and how to go on (exit 130, 143)
    os.environ["BNSWEEP_TYPED"] = json.dumps(sys.argv[1:])  # the resume command: as typed
    sys.argv = [sys.argv[0], *trainer_overrides(quote_paths(sys.argv[1:]))]
    sys.argv[1:] = rank_overrides(sys.argv[1:])
    check_output_dir(sys.argv[1:])
    register_resolvers()
    skip_mode_probe()
    main()

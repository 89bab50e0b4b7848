"""train.py's entry: one run, and its outcome as the terminal shows it: the run's block, or one
line and an exit status (2: the user's input; 1: a full disk, or a rank of several that failed;
130 / 143: interrupted)."""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path

from omegaconf import DictConfig

from bnsweep.config.cli import secondary
from bnsweep.files import is_no_space, remove_unstarted
from bnsweep.run import interrupts, ranks
from bnsweep.run.training import USER_ERRORS, ProcessStart, no_space_message, run


def main(cfg: DictConfig, import_s: float | None = None) -> float | None:
    """Entry point of train.py: run, and turn input errors into one line and exit status 2,
    a full disk into one line and exit status 1."""
    from bnsweep.terminal import finished_block, run_block

    run_dir = Path(cfg.run_dir)
    started = time.time()
    if secondary():
        return secondary_main(cfg, import_s)
    try:
        metrics = run(cfg, ProcessStart.now(import_s))
        skipped = (run_dir / "metrics.json").stat().st_mtime < started
        print((finished_block if skipped else run_block)(run_dir, metrics))
        return metrics["val/acc_best"]
    except KeyboardInterrupt as e:
        claimed = (run_dir / "run_config.json").exists()
        if not claimed:
            remove_unstarted(run_dir)
        typed = json.loads(os.environ.get("BNSWEEP_TYPED", "[]"))
        again = interrupts.go_on("train.py", typed, [f"hydra.run.dir={run_dir}", "resume=true"])
        where = (
            e.where()
            if isinstance(e, interrupts.Interrupted)
            else (
                "before training began" if claimed else "before the run began; nothing was written"
            )
        )
        print(f"interrupted {where}; go on with: {again}" if claimed else f"interrupted {where}",
              file=sys.stderr)  # fmt: skip
        sys.exit(interrupts.exit_status())
    except USER_ERRORS as e:
        remove_unstarted(run_dir)
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)
    except OSError as e:
        if not is_no_space(e):
            ranks.fail(e)  # several ranks: one line of which ended, exit 1
            raise
        print(f"error: {no_space_message(e, run_dir)}", file=sys.stderr)
        sys.exit(1)
    except Exception as e:
        ranks.fail(e)
        raise


def secondary_main(cfg: DictConfig, import_s: float | None) -> None:
    """A rank other than 0: train its shard; on an error one line naming the rank, exit 1 (rank
    0's watch then ends the run). It never removes or writes the run's files."""
    try:
        run(cfg, ProcessStart.now(import_s))
    except KeyboardInterrupt:
        sys.exit(interrupts.exit_status())  # rank 0 says where the run stopped
    except Exception as e:
        ranks.fail_secondary(e)

"""Golden numbers: lenet_fc_bn2 after 200 CPU steps, each estimator alone and the vectorized
path, give metrics.json numbers bit-identical to those of the code the fixture was computed by.

A restructuring must not change what a run computes. The fixture
(tests/golden/metrics_200_steps.json) names the commit and the command that made it;
``python tests/test_golden.py`` rewrites it (only do that for a change meant to alter numbers,
and say so in its commit).
"""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
from pathlib import Path

from conftest import ROOT, compose_cfg, mnist_root

FIXTURE = ROOT / "tests" / "golden" / "metrics_200_steps.json"
ESTIMATORS = ("momentum", "window", "cumulative")
# 200 steps, validated at 100 and 200 on 3,000 images, tested on 3,000
STEPS = ["model=lenet_fc_bn2", "trainer.max_epochs=null", "trainer.max_steps=200",
         "trainer.val_check_interval=100", "trainer.check_val_every_n_epoch=null", "logger=csv",
         "trainer.limit_val_batches=3", "trainer.limit_test_batches=3",
         "trainer.accelerator=cpu"]  # fmt: skip
# what a run computed; times, paths and the config echo are left out
NOT_NUMBERS = {"wall_time_s", "fit_time_s", "job_wall_time_s", "startup_s", "import_s",
               "overrides", "choices", "hparams", "device", "resumed_from_step", "schema"}  # fmt: skip


def numbers(metrics: dict) -> dict:
    return {k: v for k, v in metrics.items() if k not in NOT_NUMBERS}


def compute(workdir: Path) -> dict[str, dict]:
    """The numbers of the four golden runs, computed by the code as it stands."""
    from bnsweep.train import run
    from bnsweep.vectorize import run_members

    def cfg(name: str, *overrides: str):
        base = [f"run_dir={workdir / name}", f"data.root={mnist_root()}", "data.download=false"]
        return compose_cfg("sweep", base + STEPS + list(overrides))

    out = {}
    for bn in ESTIMATORS:
        run(cfg(f"plain_{bn}", f"bn={bn}", "seed=0"))
        out[f"plain/{bn}"] = numbers(json.loads((workdir / f"plain_{bn}" / "metrics.json").read_text()))
    for seed, m in zip((0, 1), run_members(cfg("job", "bn=window", "seeds=[0,1]"))):
        out[f"vectorized/window/seed={seed}"] = numbers(m)
    return out


def test_200_steps_give_the_golden_numbers(tmp_path):
    golden = json.loads(FIXTURE.read_text())
    ours = json.loads(json.dumps(compute(tmp_path)))  # through JSON, as metrics.json holds them
    assert ours.keys() == golden["runs"].keys()
    for name, expected in golden["runs"].items():
        assert ours[name] == expected, name  # every float to the bit, every list entry


if __name__ == "__main__":
    commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=ROOT, capture_output=True,
                            text=True, check=True).stdout.strip()  # fmt: skip
    dirty = subprocess.run(["git", "status", "--porcelain", "bnsweep"], cwd=ROOT,
                           capture_output=True, text=True, check=True).stdout.strip()  # fmt: skip
    if dirty:
        sys.exit("error: bnsweep/ has uncommitted changes; the fixture must name the code's commit")
    with tempfile.TemporaryDirectory() as d:
        runs = compute(Path(d))
    FIXTURE.parent.mkdir(exist_ok=True)
    FIXTURE.write_text(json.dumps({"commit": commit, "command": "python tests/test_golden.py",
                                   "runs": runs}, indent=1) + "\n")  # fmt: skip
    print(f"wrote {FIXTURE} from {commit}")

"""Golden numbers: lenet_fc_bn2 after 200 CPU steps (the slow tier; 40 in the fast tier, with a
fixture of its own), each estimator alone and the vectorized path, give metrics.json numbers
bit-identical to those of the code the fixture was computed by.

A restructuring must not change what a run computes. The fixture
(tests/golden/metrics_200_steps.json) names the commit and the command that made it, per CPU,
and the runs use THREADS torch threads: the summation order of a CPU's kernels depends on both.
What that order changes: the bias of an affine layer before BN gets only rounding noise as its
gradient (BN subtracts the batch mean), which Adam scales to steps of size lr, so that bias, and
the running mean that follows it with a lag, wander differently for another order. The training
numbers stay the same bits (the bias cancels in training), the evaluation with running
statistics moves, by up to 1.6 % here (seen between two CPUs, and between 1 and 2 threads on
one). So training numbers are compared to the bit everywhere, evaluation numbers to the bit only
where the fixture holds an entry of the same *kernels* (``kernels()``: the bits of a fixed
forward, backward and Adam steps of the golden network's layers at THREADS threads; a CPU's name
and flags do not fix its kernels' summation order, cache sizes and library dispatch do too) and
to a tolerance elsewhere. Another torch release (the oldest one pyproject.toml allows, in
scripts/oldest-deps.sh) draws other random streams and runs other kernels: its 200 steps are
another trajectory of the same training, compared to a statistical tolerance (``TORCH_TOLERANCE``:
training accuracy within 0.03 and losses within 10 %, evaluations within 0.10 and 50 %), and a
broken training fails that too.
``python tests/test_golden.py [--steps 200|40]`` adds this machine's entry (only from
a clean bnsweep/ at a commit whose numbers are the golden ones) or, with ``--rewrite``, starts
over (only for a change meant to alter numbers; say so in its commit).
"""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest
from conftest import ROOT, compose_cfg, mnist_root

ESTIMATORS = ("momentum", "window", "cumulative")
# the slow tier's 200 steps and the fast tier's 40 (the same claim, bits that must not move,
# over a fifth of the trajectory), each with its own fixture
LENGTHS = (200, 40)


def fixture_of(steps: int) -> Path:
    return ROOT / "tests" / "golden" / f"metrics_{steps}_steps.json"


FIXTURE = fixture_of(200)


def steps_of(steps: int) -> list[str]:
    """``steps`` steps, validated halfway and at the end on 3,000 images, tested on 3,000."""
    return ["model=lenet_fc_bn2", "trainer.max_epochs=null", f"trainer.max_steps={steps}",
            f"trainer.val_check_interval={steps // 2}", "trainer.check_val_every_n_epoch=null",
            "logger=csv", "trainer.limit_val_batches=3", "trainer.limit_test_batches=3",
            "trainer.accelerator=cpu"]  # fmt: skip
# what a run computed; times, paths and the config echo are left out
NOT_NUMBERS = {"wall_time_s", "fit_time_s", "job_wall_time_s", "startup_s", "import_s",
               "overrides", "choices", "hparams", "device", "resumed_from_step", "schema"}  # fmt: skip


def numbers(metrics: dict) -> dict:
    return {k: v for k, v in metrics.items() if k not in NOT_NUMBERS}


THREADS = 2


def compute(workdir: Path, steps: int = 200) -> dict[str, dict]:
    """The numbers of the four golden runs of ``steps`` steps, computed by the code as it
    stands, with THREADS torch threads."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(THREADS)
    try:
        return _compute(workdir, steps)
    finally:
        torch.set_num_threads(threads)


def _compute(workdir: Path, steps: int) -> dict[str, dict]:
    from bnsweep.run.training import run
    from bnsweep.sweep.vectorize import run_members

    def cfg(name: str, *overrides: str):
        base = [f"run_dir={workdir / name}", f"data.root={mnist_root()}", "data.download=false"]
        return compose_cfg("sweep", base + steps_of(steps) + list(overrides))

    out = {}
    for bn in ESTIMATORS:
        run(cfg(f"plain_{bn}", f"bn={bn}", "seed=0"))
        out[f"plain/{bn}"] = numbers(
            json.loads((workdir / f"plain_{bn}" / "metrics.json").read_text())
        )
    for seed, m in zip((0, 1), run_members(cfg("job", "bn=window", "seeds=[0,1]"))):
        out[f"vectorized/window/seed={seed}"] = numbers(m)
    return out


def cpu() -> str:
    """The CPU as far as its float kernels go: model name and the vector instruction sets."""
    info = Path("/proc/cpuinfo").read_text() if Path("/proc/cpuinfo").exists() else ""
    model = next(
        (ln.split(":", 1)[1].strip() for ln in info.splitlines() if ln.startswith("model name")),
        "?",
    )
    flags = next(
        (ln.split(":", 1)[1].split() for ln in info.splitlines() if ln.startswith("flags")), []
    )
    isa = [
        f
        for f in ("fma", "avx2", "avx512f", "avx512_vnni", "avx512_bf16", "amx_tile")
        if f in flags
    ]
    return f"{model} ({' '.join(isa)})"


def kernels() -> str:
    """A fingerprint of this machine's float kernels as the golden runs meet them, at THREADS
    torch threads: sha256 of the bits of three training steps (forward, backward, Adam) and an
    eval forward of lenet_fc_bn2 with our BN on fixed inputs. Equal fingerprints: the same
    summation orders, so the same bits for the golden runs."""
    import hashlib

    import torch
    import torch.nn.functional as F

    from bnsweep.nn import LeNet, make_batchnorm

    threads = torch.get_num_threads()
    torch.set_num_threads(THREADS)
    try:
        torch.manual_seed(0)
        net = LeNet(bn=["conv1", "conv2", "fc1", "fc2"], norm=make_batchnorm)
        g = torch.Generator().manual_seed(0)
        x, y = torch.rand(64, 1, 28, 28, generator=g), torch.randint(10, (64,), generator=g)
        opt = torch.optim.Adam(net.parameters(), 1e-3)
        digest = hashlib.sha256()
        for _ in range(3):
            opt.zero_grad()
            F.cross_entropy(net(x), y).backward()
            for p in net.parameters():
                digest.update(p.grad.numpy().tobytes())
            opt.step()
        with torch.no_grad():
            digest.update(net.eval()(torch.rand(1000, 1, 28, 28, generator=g)).numpy().tobytes())
        return digest.hexdigest()[:16]
    finally:
        torch.set_num_threads(threads)


def reference(golden: dict, fingerprint: str) -> tuple[dict, bool]:
    """The fixture's entry to compare with, and whether to the bit: the entry of the same
    kernels, else the first entry, to the tolerance."""
    for entry in golden["cpus"].values():
        if entry.get("kernels") == fingerprint:
            return entry, True
    return next(iter(golden["cpus"].values())), False


def compare(ours: dict, expected_runs: dict, exact: bool) -> None:
    """Training numbers to the bit; evaluation numbers to the bit where ``exact``, else to
    within a few images and 2 % of the loss."""
    assert ours.keys() == expected_runs.keys()
    for name, expected in expected_runs.items():
        if exact:
            assert ours[name] == expected, name  # every float to the bit, every list entry
            continue
        mine, theirs = dict(ours[name]), dict(expected)
        h, g = mine.pop("history"), theirs.pop("history")
        assert {k: v for k, v in mine.items() if not _evaluation(k)} == {
            k: v for k, v in theirs.items() if not _evaluation(k)}, name  # fmt: skip
        assert {k: v for k, v in h.items() if not _evaluation(k)} == {
            k: v for k, v in g.items() if not _evaluation(k)}, name  # fmt: skip
        for key in [k for k in theirs if _evaluation(k)] + [
            f"history {k}" for k in g if _evaluation(k)
        ]:
            a = h[key[8:]] if key.startswith("history") else [mine[key]]
            b = g[key[8:]] if key.startswith("history") else [theirs[key]]
            for x, y in zip(a, b, strict=True):
                assert abs(x - y) <= (0.02 if "acc" in key else 0.02 * abs(y)), (name, key, a, b)


# another torch release: the same training, another trajectory. Measured, torch 2.3.0 against
# 2.14.1 (scripts/oldest-deps.sh): training numbers within 0.010 (accuracy) and 3.0 % (loss); the
# evaluations with running statistics, which carry the whole trajectory of the statistics, within
# 0.068 and 30 % (the cumulative estimator's, whose early estimate averages every batch since
# step 0). A broken training or evaluation (chance accuracy, NaN) is far outside either.
TORCH_TOLERANCE = {"acc": 0.03, "loss": 0.10, "eval acc": 0.10, "eval loss": 0.50}
FIXTURE_TORCH = "2.14.1"  # the release the entries without a "torch" key were made with


def release(version: str) -> str:
    return version.split("+")[0]


def compare_across_torch(ours: dict, expected_runs: dict) -> None:
    """Every accuracy and loss within TORCH_TOLERANCE (losses relatively; evaluation numbers
    to their own, wider tolerance), step and epoch counts and divergence equal."""
    assert ours.keys() == expected_runs.keys()
    for name, expected in expected_runs.items():
        mine, theirs = dict(ours[name]), dict(expected)
        h, g = mine.pop("history"), theirs.pop("history")
        pairs = [(k, [mine[k]], [v]) for k, v in theirs.items()]
        pairs += [(f"history {k}", h[k], v) for k, v in g.items()]
        for key, a, b in pairs:
            assert len(a) == len(b), (name, key)
            for x, y in zip(a, b):
                evaluation = "eval " if _evaluation(key.removeprefix("history ")) else ""
                if "acc" in key and isinstance(y, float):
                    assert abs(x - y) <= TORCH_TOLERANCE[evaluation + "acc"], (name, key, a, b)
                elif "loss" in key and isinstance(y, float):
                    assert abs(x - y) <= TORCH_TOLERANCE[evaluation + "loss"] * abs(y), (name, key, a, b)
                else:
                    assert x == y, (name, key, a, b)


def _evaluation(key: str) -> bool:
    return key.startswith(("val/", "test/"))


@pytest.mark.parametrize("steps", [pytest.param(200, marks=pytest.mark.slow), 40])
def test_the_golden_runs_give_the_golden_numbers(tmp_path, steps):
    golden = json.loads(fixture_of(steps).read_text())
    # through JSON, as metrics.json holds them
    ours = json.loads(json.dumps(compute(tmp_path, steps)))
    entry, exact = reference(golden, kernels())
    import torch

    if release(torch.__version__) != release(entry.get("torch", FIXTURE_TORCH)):
        compare_across_torch(ours, entry["runs"])
    else:
        compare(ours, entry["runs"], exact)


def test_another_torch_release_is_compared_to_the_statistical_tolerance():
    """Another torch release's trajectory (as torch 2.3.0 gives) passes; numbers off by more
    than the tolerance, or another step count, fail."""
    golden = json.loads(FIXTURE.read_text())
    runs = next(iter(golden["cpus"].values()))["runs"]
    name = next(iter(runs))
    other = json.loads(json.dumps(runs))
    other[name]["history"]["train/loss"][0] *= 1.017  # torch 2.3.0's 1.060 against 1.078
    other[name]["history"]["train/acc"][0] += 0.0098
    compare_across_torch(other, runs)
    other[name]["history"]["val/acc"][0] -= 0.068  # the cumulative estimator's, on torch 2.3.0
    compare_across_torch(other, runs)
    for key, change in (("train/acc", 0.05), ("train/loss", 0.2), ("val/acc", 0.2)):
        broken = json.loads(json.dumps(runs))
        broken[name]["history"][key][0] += change
        try:
            compare_across_torch(broken, runs)
        except AssertionError:
            continue
        raise AssertionError(f"{key} off by {change} passed as another torch's trajectory")


def test_other_kernels_compare_evaluation_to_the_tolerance(monkeypatch):
    """A machine whose kernels differ from every entry's (faked: another fingerprint) compares
    evaluation numbers to the tolerance, training numbers still to the bit; the same kernels
    compare everything to the bit."""
    golden = json.loads(FIXTURE.read_text())
    first = next(iter(golden["cpus"].values()))
    entry, exact = reference(golden, "not-a-fingerprint")
    assert entry is first and not exact
    name = next(iter(first["runs"]))
    moved = json.loads(json.dumps(first["runs"]))
    moved[name]["test/loss"] *= 1 + 1e-7  # an evaluation number off in its last bits
    compare(moved, first["runs"], exact=False)  # the tolerance path takes it
    try:
        compare(moved, first["runs"], exact=True)
    except AssertionError:
        pass
    else:
        raise AssertionError("the exact path let an evaluation number off by 1e-7 through")
    trained = json.loads(json.dumps(first["runs"]))
    trained[name]["history"]["train/loss"][0] *= 1 + 1e-7  # a training number: never tolerated
    try:
        compare(trained, first["runs"], exact=False)
    except AssertionError:
        return
    raise AssertionError("the tolerance path let a training number off by 1e-7 through")


if __name__ == "__main__":
    commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=ROOT, capture_output=True,
                            text=True, check=True).stdout.strip()  # fmt: skip
    dirty = subprocess.run(["git", "status", "--porcelain", "bnsweep"], cwd=ROOT,
                           capture_output=True, text=True, check=True).stdout.strip()  # fmt: skip
    if dirty:
        sys.exit("error: bnsweep/ has uncommitted changes; the fixture must name the code's commit")
    steps = int(sys.argv[sys.argv.index("--steps") + 1]) if "--steps" in sys.argv else 200
    if steps not in LENGTHS:
        sys.exit(f"error: --steps={steps}: the golden runs are {' or '.join(map(str, LENGTHS))} steps")
    FIXTURE = fixture_of(steps)
    with tempfile.TemporaryDirectory() as d:
        runs = compute(Path(d), steps)
    rewrite = "--rewrite" in sys.argv[1:] or not FIXTURE.exists()
    fixture = {"command": f"python tests/test_golden.py --steps {steps}", "cpus": {}}
    if not rewrite:
        fixture = json.loads(FIXTURE.read_text())
    import torch

    fixture["cpus"][cpu()] = {"commit": commit, "kernels": kernels(), "torch": torch.__version__,
                              "runs": runs}  # fmt: skip
    FIXTURE.parent.mkdir(exist_ok=True)
    FIXTURE.write_text(json.dumps(fixture, indent=1) + "\n")
    print(f"wrote {FIXTURE}: {cpu()} (kernels {fixture['cpus'][cpu()]['kernels']}) from {commit}")

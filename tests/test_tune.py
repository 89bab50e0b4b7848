"""sweep.tune: every point at its own best value of one key, chosen on the validation split alone,
then the point's seeds at that value; resumable, refusing what it cannot do in one line."""

from __future__ import annotations

import json
import os
import signal
import time
from pathlib import Path

import pytest
from helpers import SHORT, popen, read_summary

from bnsweep.sweep.tune import Scored, choose

TUNED = ["sweep.tune.key=optimizer.lr"]


def tuning_of(sweep: Path) -> dict:
    return json.loads((sweep / "tune" / "tuning.json").read_text())


def recorded_scores(sweep: Path) -> dict[tuple[str, float], list[dict]]:
    """(model, lr) -> the tuning runs' metrics.json, read straight from tune/."""
    out: dict[tuple[str, float], list[dict]] = {}
    for f in sorted((sweep / "tune").glob("*/metrics.json")):
        m = json.loads(f.read_text())
        o = dict(x.split("=", 1) for x in m["overrides"] if "=" in x)
        out.setdefault((o.get("model", ""), float(o["optimizer.lr"])), []).append(m)
    return out


def test_choose_takes_the_best_score_and_breaks_ties_by_the_smaller_value():
    def s(value, *scores, status="finished"):
        return Scored(
            value, [{"seed": i, "score": x, "status": status} for i, x in enumerate(scores)]
        )

    assert choose([s(0.1, 0.5), s(0.01, 0.9), s(0.001, 0.8)]).value == 0.01
    assert choose([s(0.1, 0.9), s(0.01, 0.9), s(1.0, 0.9)]).value == 0.01  # a tie: the smaller
    assert choose([s(0.1, 0.6, 0.8), s(0.01, 0.75, 0.7)]).value == 0.01  # means: 0.7 < 0.725
    # a diverged value scores the worst, whatever its finite seeds scored
    assert choose([s(0.1, 0.99, None, status="diverged"), s(0.01, 0.2)]).value == 0.01
    assert choose([s(0.1, None, status="failed")]) is None
    assert choose([s("adam", 0.9), s("sgd", 0.9)]).value == "adam"  # options: the first listed


def test_a_tuned_sweep_runs_each_point_at_the_argmax_of_its_validation_scores(cli, tmp_path):
    proc = cli("sweep.py", "model=lenet,lenet_fc_bn2", *SHORT, "seeds=[0,1]", *TUNED,
               "sweep.tune.values=[0.0003,0.003,0.03,3.0]", "optimizer=sgd", "hydra.sweep.dir=sw")  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    sweep = tmp_path / "sw"
    tuning = tuning_of(sweep)
    runs = recorded_scores(sweep)
    assert len(runs) == 8 and all(len(v) == 1 for v in runs.values())
    for point in tuning["points"]:
        model = point["overrides"][0].split("=")[1]
        scores = {}
        for lr in (0.0003, 0.003, 0.03, 3.0):
            (m,) = runs[(model, lr)]
            assert m["seed"] == 10000 and m["test/acc"] is None and m["test_weights"] == "none"
            scores[lr] = m["val/acc_best"] if not m["diverged"] else float("-inf")
        best = max(scores.values())
        assert point["chosen"] == min(lr for lr, v in scores.items() if v == best)
        assert point["chosen_score"] == pytest.approx(best)
    # the compared runs: the point's seeds at the chosen value, tested
    rows = {r["model"]: r for r in read_summary(sweep)}
    chosen = {p["overrides"][0].split("=")[1]: p["chosen"] for p in tuning["points"]}
    assert set(rows) == set(chosen)  # the tuned key tells no point apart
    for model, row in rows.items():
        assert float(row["optimizer.lr (tuned)"]) == chosen[model]
        assert row["n_finished"] == "2" and row["seeds"] == "0 1"
    compared = [json.loads(f.read_text()) for f in sweep.glob("[0-9]*/metrics.json")]
    assert len(compared) == 4 and all(m["test/acc"] is not None for m in compared)
    summary = (sweep / "summary.md").read_text()
    assert "## Tuning: optimizer.lr" in summary and (sweep / "tuning.png").stat().st_size > 10_000
    assert "| optimizer.lr (tuned) |" in summary.splitlines()[2]


def test_a_value_that_diverges_is_scored_the_worst_and_shown(cli, tmp_path):
    proc = cli("sweep.py", "model=lenet_bn1", *SHORT, "seeds=[0]", *TUNED, "optimizer=sgd",
               "sweep.tune.values=[0.01,1e30]", "hydra.sweep.dir=sw")  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    (point,) = tuning_of(tmp_path / "sw")["points"]
    by_value = {e["value"]: e for e in point["values"]}
    assert by_value[1e30]["status"] == "diverged" and by_value[1e30]["score"] is None
    assert point["chosen"] == 0.01
    assert "1e+30: diverged" in (tmp_path / "sw" / "summary.md").read_text()


WATCHED_DATA = '''
import os
from pathlib import Path

from bnsweep.data import MNISTDataModule


class Watched(MNISTDataModule):
    """MNIST that notes every time the test split is set up or served, with the run's seed."""

    def _note(self, what):
        with Path(os.environ["TEST_READS"]).open("a") as f:
            f.write(f"{self.seed} {what}\\n")

    def setup(self, stage=None):
        if stage in ("test", None):
            self._note(f"setup:{stage}")
        return super().setup(stage)

    def test_dataloader(self):
        self._note("test_dataloader")
        return super().test_dataloader()
'''


def test_tuning_never_reads_the_test_set(tmp_path, cli):
    """A user's own data module that notes each use of its test split: the tuning runs
    (seeds 10000…) never set it up nor serve it; the compared runs (seeds 0, 1) do."""
    study = tmp_path / "mystudy"
    (study / "conf" / "data").mkdir(parents=True)
    (study / "mydata.py").write_text(WATCHED_DATA)
    (study / "conf" / "data" / "watched.yaml").write_text(
        "defaults:\n  - mnist\n  - _self_\n_target_: mydata.Watched\n")  # fmt: skip
    reads = tmp_path / "reads.txt"
    proc = cli("sweep.py", "--config-dir", str(study / "conf"), "data=watched", "model=lenet",
               *SHORT, "seeds=[0,1]", *TUNED, "sweep.tune.values=[0.001,0.01]",
               "sweep.tune.seeds=2", "hydra.sweep.dir=sw", cwd=study,
               env={"TEST_READS": str(reads), "PYTHONPATH": str(study)})  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    assert len(list((study / "sw" / "tune").glob("*/metrics.json"))) == 4
    seeds = [int(line.split()[0]) for line in reads.read_text().splitlines()]
    assert sorted(set(seeds)) == [0, 1]  # only the compared runs touched the test split


def test_a_tuning_killed_midway_resumes_to_the_same_choice(tmp_path, mnist_dir, cli):
    """A range search (Optuna's TPE) killed after its first tuning runs: resume= trains only
    what is missing and replays the sampler, so the values tried and the choice are those of
    the same sweep run uninterrupted."""
    args = ["model=lenet", *SHORT, "seeds=[0]", *TUNED, "optimizer=sgd",
            "sweep.tune.range=[0.001,1.0]", "sweep.tune.budget=5"]  # fmt: skip
    whole = cli("sweep.py", *args, "hydra.sweep.dir=whole")
    assert whole.returncode == 0, whole.stderr
    proc = popen("sweep.py", *args, "hydra.sweep.dir=cut", cwd=tmp_path, mnist_dir=mnist_dir)
    deadline = time.time() + 300
    while len(list((tmp_path / "cut" / "tune").glob("*/metrics.json"))) < 2:
        assert proc.poll() is None and time.time() < deadline, proc.communicate()
        time.sleep(0.05)
    os.killpg(proc.pid, signal.SIGKILL)  # no time to say anything
    proc.communicate(timeout=60)
    assert not (tmp_path / "cut" / "tune" / "tuning.json").exists()
    before = {p.name: (p / "metrics.json").read_bytes()
              for p in (tmp_path / "cut" / "tune").iterdir() if (p / "metrics.json").exists()}  # fmt: skip
    again = cli("sweep.py", *args, f"resume={tmp_path / 'cut'}")
    assert again.returncode == 0, again.stderr
    for name, data in before.items():  # the finished tuning runs: kept, not trained again
        assert (tmp_path / "cut" / "tune" / name / "metrics.json").read_bytes() == data
    a, b = tuning_of(tmp_path / "whole"), tuning_of(tmp_path / "cut")
    assert [e["value"] for e in a["points"][0]["values"]] == [
        e["value"] for e in b["points"][0]["values"]
    ]
    assert a["points"][0]["chosen"] == b["points"][0]["chosen"]
    assert [e["score"] for e in a["points"][0]["values"]] == [
        e["score"] for e in b["points"][0]["values"]
    ]
    assert len(list((tmp_path / "cut" / "tune").glob("*/metrics.json"))) == 5


@pytest.mark.parametrize(
    "args, message",
    [
        (
            ["sweep.tune.key=optimizer.lr"],
            "error: sweep.tune.key=optimizer.lr needs sweep.tune.values=[…]",
        ),
        ([*TUNED, "sweep.tune.values=[0.1]", "sweep.tune.range=[0.01,1]"], "one of them"),
        (
            [*TUNED, "sweep.tune.range=[0.01,1]"],
            "error: sweep.tune.budget must be an integer >= 1 (values tried per point), got None",
        ),
        (
            [*TUNED, "sweep.tune.range=[0,1]", "sweep.tune.budget=3"],
            "error: sweep.tune.range must be [low, high] with 0 < low < high (a log scale), got [0, 1]",
        ),
        (
            [*TUNED, "sweep.tune.values=[0.1,0.1]"],
            "error: sweep.tune.values must be a list of distinct values, got [0.1, 0.1]",
        ),
        (
            [*TUNED, "sweep.tune.values=[0.1]", "optimizer.lr=0.5"],
            "error: sweep.tune.key=optimizer.lr is tuned per point, so it cannot be set too (optimizer.lr=0.5)",
        ),
        (
            [*TUNED, "sweep.tune.values=[0.1]", "optimizer.lr=0.1,0.5"],
            "so it cannot be set too (optimizer.lr=0.1,0.5)",
        ),
        (
            ["sweep.tune.key=optimizer.nope", "sweep.tune.values=[0.1]"],
            "error: sweep.tune.key=optimizer.nope is no key of the run's config",
        ),
        (
            [*TUNED, "sweep.tune.values=[0.1]", "data.val_size=0"],
            "error: sweep.tune scores on the validation split, and data.val_size=0",
        ),
        (
            [*TUNED, "sweep.tune.values=[0.1]", "sweep.tune.seeds=0"],
            "error: sweep.tune.seeds must be a count >= 1 or a list of seeds, got 0",
        ),
        (
            [*TUNED, "sweep.tune.values=[0.1]", "sweep.tune.score=test_acc"],
            "error: sweep.tune.score must be one of val_acc_best, val_acc, got test_acc",
        ),
    ],
)
def test_a_tuning_it_cannot_do_is_refused_in_one_line(cli, tmp_path, args, message):
    proc = cli("sweep.py", "model=lenet", *SHORT, *args, "hydra.sweep.dir=sw")
    assert proc.returncode == 2, proc.stderr
    (line,) = proc.stderr.strip().splitlines()
    assert line.startswith("error: ") and message in line, line
    assert not (tmp_path / "sw").exists()


def test_the_dry_run_counts_tuning_and_compared_jobs(cli):
    proc = cli("sweep.py", "model=lenet,lenet_bn1", *SHORT, "seeds=[0,1,2]", *TUNED,
               "sweep.tune.values=[0.001,0.01,0.1]", "sweep.tune.seeds=2", "--dry-run")  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    out = proc.stdout
    assert (
        "2 points × 3 values × 2 tuning seeds = 12 tuning runs (validation only), then 2 × 3 = 6 compared runs"
        in out
    )
    assert "tune/0_model=lenet,optimizer.lr=0.001,seed=10000" in out


# ---------------------------------------------------------------------------------------------
# vectorized: a point's values as one job, each member at its own learning rate


def _stacked_steps(opt_cls, lrs, steps=5, **kw):
    """Three LeNets trained alone at their lrs, and stacked at the same lrs (member_lrs): the
    weights of each after ``steps`` steps on the same batches."""
    import torch

    from bnsweep.nn import LeNet
    from bnsweep.nn.stacked import StackedNet, member_lrs, stack_inputs

    torch.manual_seed(0)
    nets = [LeNet() for _ in lrs]
    alone = [__import__("copy").deepcopy(n) for n in nets]
    stacked = StackedNet(nets)
    opt = member_lrs(opt_cls(stacked.parameters(), lr=1.0, **kw), lrs)
    opts = [opt_cls(n.parameters(), lr=lr, **kw) for n, lr in zip(alone, lrs)]
    g = torch.Generator().manual_seed(1)
    for _ in range(steps):
        x, y = torch.rand(8, 1, 28, 28, generator=g), torch.randint(10, (8,), generator=g)

        def closure(x=x, y=y):
            opt.zero_grad()
            out = stacked(stack_inputs([x] * len(lrs)))
            loss = sum(torch.nn.functional.cross_entropy(o, y) for o in out.unbind(1))  # (N, S, K)
            loss.backward()
            return loss

        opt.step(closure)
        for n, o in zip(alone, opts):
            o.zero_grad()
            torch.nn.functional.cross_entropy(n(x), y).backward()
            o.step()
    return stacked, alone


def test_member_lrs_step_each_member_as_alone_at_its_own_lr():
    import torch

    lrs = [0.01, 0.1, 0.3]
    stacked, alone = _stacked_steps(torch.optim.SGD, lrs, momentum=0.9)
    for m, net in enumerate(alone):  # SGD: the same arithmetic, to the bit
        for key, value in net.state_dict().items():
            assert torch.equal(stacked.member_state_dict(m)[key], value), (m, key)
    stacked, alone = _stacked_steps(torch.optim.Adam, [1e-4, 1e-3, 1e-2])
    for m, net in enumerate(alone):  # Adam: its step size rounded once more
        for key, value in net.state_dict().items():
            torch.testing.assert_close(
                stacked.member_state_dict(m)[key], value, rtol=1e-5, atol=1e-7
            )
    moved = [
        (stacked.member_state_dict(m)["conv1.affine.weight"] - alone[0].state_dict()["conv1.affine.weight"])
        .abs()
        .max()
        for m in (1, 2)
    ]
    assert all(d > 1e-4 for d in moved)  # the members did step at different lrs


def test_lr_stacks_only_where_the_step_is_linear_in_the_lr():
    from bnsweep.sweep.points import lr_stacks

    assert lr_stacks(
        {"_target_": "torch.optim.SGD", "lr": 0.1, "momentum": 0.9, "weight_decay": 0.0}
    )
    assert lr_stacks({"_target_": "torch.optim.Adam", "lr": 0.1})
    assert not lr_stacks({"_target_": "torch.optim.Adam", "lr": 0.1, "weight_decay": 1e-4})
    assert not lr_stacks({"_target_": "torch.optim.AdamW", "lr": 0.1})  # its default decay
    assert not lr_stacks({"_target_": "torch.optim.LBFGS", "lr": 0.1})


def test_a_vectorized_tuning_trains_a_points_values_as_one_job_to_the_same_choice(cli, tmp_path):
    args = ["model=lenet_bn1", *SHORT, "seeds=[0]", *TUNED, "optimizer=sgd",
            "sweep.tune.values=[0.01,0.1,1.0]"]  # fmt: skip
    apart = cli("sweep.py", *args, "hydra.sweep.dir=apart")
    together = cli("sweep.py", *args, "sweep.vectorize=true", "hydra.sweep.dir=together")
    assert apart.returncode == 0 and together.returncode == 0, apart.stderr + together.stderr
    jobs = [
        json.loads(line) for line in (tmp_path / "together" / "jobs.jsonl").read_text().splitlines()
    ]
    runs = [j["run"] for j in jobs if "run" in j]
    assert len(runs) == 2 and runs[0] == "tune/0_" and runs[1].startswith("1_")  # model: fixed
    assert jobs[0]["jobs"] == 2  # one tuning job, one compared job
    a, b = tuning_of(tmp_path / "apart"), tuning_of(tmp_path / "together")
    assert a["points"][0]["chosen"] == b["points"][0]["chosen"]
    assert [e["score"] for e in a["points"][0]["values"]] == [
        e["score"] for e in b["points"][0]["values"]
    ]
    for f in (tmp_path / "together" / "tune").glob("*/ckpt/last.ckpt"):  # a member's own lr
        import torch

        lr = float(f.parent.parent.name.split("optimizer.lr=")[1].split(",")[0])
        ckpt = torch.load(f, weights_only=False)
        assert ckpt["optimizer_states"][0]["param_groups"][0]["lr"] == lr


def test_points_none_of_whose_values_score_are_named_and_not_compared(cli, tmp_path):
    proc = cli("sweep.py", "model=lenet_bn1", *SHORT, "seeds=[0]", *TUNED, "optimizer=sgd",
               "sweep.tune.values=[1e30]", "hydra.sweep.dir=sw")  # fmt: skip
    # lenet_bn1 diverges at 1e30 (tests/test_divergence.py): no value scored
    assert proc.returncode == 1
    assert proc.stderr.strip().splitlines()[-1] == (
        "error: sweep.tune: no value of optimizer.lr scored for the sweep's one point (every one diverged or "
        "failed): its compared runs were not run; scores in sw/tune/tuning.json")  # fmt: skip
    assert not list((tmp_path / "sw").glob("[0-9]*"))


def test_a_range_search_without_optuna_is_refused_in_one_line(cli, tmp_path):
    fake = tmp_path / "no_optuna" / "optuna"
    fake.mkdir(parents=True)
    (fake / "__init__.py").write_text("raise ImportError('No module named optuna')\n")
    proc = cli("sweep.py", "model=lenet", *SHORT, *TUNED, "sweep.tune.range=[0.001,0.1]",
               "sweep.tune.budget=2", "hydra.sweep.dir=sw",
               env={"PYTHONPATH": str(fake.parent)}, process=True)  # fmt: skip
    assert proc.returncode == 2
    assert proc.stderr.strip() == ('error: sweep.tune.range searches with Optuna, which is not '
                                   'installed: pip install -e ".[optuna]"')  # fmt: skip
    assert not (tmp_path / "sw").exists()


def test_a_resume_cannot_change_how_the_points_were_tuned(cli, tmp_path):
    """Another list of values on a resume could choose another lr for a point whose compared
    runs ran at the first choice: refused, the folder as it was."""
    args = ["model=lenet", *SHORT, "seeds=[0]", *TUNED]
    proc = cli("sweep.py", *args, "sweep.tune.values=[0.001,0.01]", "hydra.sweep.dir=sw")
    assert proc.returncode == 0, proc.stderr[-2000:]
    before = (tmp_path / "sw" / "tune" / "tuning.json").read_bytes()
    again = cli("sweep.py", *args, "sweep.tune.values=[0.001,0.01,0.1]", f"resume={tmp_path / 'sw'}")
    assert again.returncode == 2
    (line,) = again.stderr.strip().splitlines()
    assert line.startswith(f"error: resume={tmp_path / 'sw'} would change the sweep it holds (sweep.tune: ")
    assert (tmp_path / "sw" / "tune" / "tuning.json").read_bytes() == before


def test_a_group_is_tuned_by_its_options(cli, tmp_path):
    proc = cli("sweep.py", "model=lenet_bn1,lenet_fc_bn2", *SHORT, "seeds=[0]",
               "sweep.tune.key=optimizer", "sweep.tune.values=[sgd,adam]", "hydra.sweep.dir=sw")  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-2000:]
    tuning = tuning_of(tmp_path / "sw")
    rows = {r["model"]: r for r in read_summary(tmp_path / "sw")}
    assert set(rows) == {"lenet_bn1", "lenet_fc_bn2"}  # the optimizer's leaves tell no point apart
    for p in tuning["points"]:
        scores = {e["value"]: e["score"] for e in p["values"]}
        best = max(scores.values())
        assert p["chosen"] == next(v for v in ("sgd", "adam") if scores[v] == best)
        assert rows[p["overrides"][0].split("=")[1]]["optimizer (tuned)"] == p["chosen"]

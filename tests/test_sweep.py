"""sweep.py: seeds fan-out, aggregation against the runs' own metrics, plots, TensorBoard runs."""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
from pathlib import Path

import inprocess
import matplotlib.image
import pytest
from conftest import CONF, compose_cfg
from helpers import SHORT, read_summary, report_command, scalars, sweep_dir_of
from hydra import compose, initialize_config_dir
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from bnsweep.config.cli import default_seeds, parse_seeds, sweep_argv
from bnsweep.report import report


def test_two_points_two_seeds(cli, tmp_path):
    proc = cli("sweep.py", "-m", "model=lenet_bn1,lenet_fc_bn2", "seeds=[0,1]", *SHORT)
    assert proc.returncode == 0, proc.stderr[-3000:]
    sweep = sweep_dir_of(tmp_path)
    runs = sorted(p.parent for p in sweep.glob("*/metrics.json"))
    assert [p.name for p in runs] == [
        "0_model=lenet_bn1,seed=0",
        "1_model=lenet_bn1,seed=1",
        "2_model=lenet_fc_bn2,seed=0",
        "3_model=lenet_fc_bn2,seed=1",
    ]
    assert (
        (sweep / "command.txt").read_text().startswith("sweep.py -m model=lenet_bn1,lenet_fc_bn2")
    )
    rows = read_summary(sweep)
    assert [r["model"] for r in rows] == ["lenet_bn1", "lenet_fc_bn2"]
    for row in rows:
        metrics = [json.loads((p / "metrics.json").read_text()) for p in runs]
        mine = [m for m in metrics if m["choices"]["model"] == row["model"]]
        assert sorted(m["seed"] for m in mine) == [0, 1] and row["n_finished"] == "2"
        for col, key in (
            ("val_acc", "val/acc"),
            ("test_acc", "test/acc"),
            ("val_acc_best", "val/acc_best"),
        ):
            values = [m[key] for m in mine]
            assert float(row[f"{col}_mean"]) == pytest.approx(statistics.fmean(values), abs=1e-12)
            assert float(row[f"{col}_std"]) == pytest.approx(statistics.stdev(values), abs=1e-12)
    assert "| lenet_fc_bn2 |" in (sweep / "summary.md").read_text()
    assert "lenet_fc_bn2" in proc.stdout  # the table printed to the terminal too
    # progress: a line as each job starts (with an ETA once one job has run) and as it ends
    lines = proc.stdout.splitlines()
    assert "job 1/4 · 0_model=lenet_bn1,seed=0 · ETA after the first job" in lines
    assert any(line.startswith("job 3/4 · 2_model=lenet_fc_bn2,seed=0 · ETA ") for line in lines)
    ends = [line for line in lines if line.startswith("job 4/4 finished in ")]
    last = json.loads((sweep / "3_model=lenet_fc_bn2,seed=1" / "metrics.json").read_text())
    assert len(ends) == 1 and f"test acc {last['test/acc']:.4f}" in ends[0]
    assert lines[-1] == f"sweep folder  {sweep.relative_to(tmp_path)}"  # as the user named it
    # HPARAMS: one experiment for the sweep, every key with its domain over the runs
    experiment = hparams_experiment(sweep / "aggregate")
    infos = {i.name: i for i in experiment.hparam_infos}
    assert list(infos) == ["model", "seed", "bn", "init.std", "optimizer.lr"]  # five: all ticked
    assert infos["model"].differs and infos["seed"].differs and not infos["optimizer.lr"].differs
    assert sorted(v.string_value for v in infos["model"].domain_discrete.values) == [
        "lenet_bn1",
        "lenet_fc_bn2",
    ]
    assert (infos["seed"].domain_interval.min_value, infos["seed"].domain_interval.max_value) == (
        0,
        1,
    )
    assert [m.name.tag for m in experiment.metric_infos] == [
        "val/acc",
        "val/acc_best",
        "test/acc",
        "test/loss",
    ]
    assert not any(hparams_experiment(run, required=False) for run in runs)  # runs: sessions only
    for png in ("val_acc.png", "train_acc.png"):
        image = matplotlib.image.imread(sweep / png)
        assert image.shape[0] > 100 and image.shape[1] > 100
    for run in runs:
        assert "val/acc" in scalars(run)
    aggregates = [p for p in (sweep / "aggregate").iterdir() if p.is_dir()]
    assert sorted(p.name for p in aggregates) == ["model=lenet_bn1", "model=lenet_fc_bn2"]
    for agg in aggregates:  # in a category of their own, apart from the runs' scalars
        assert {"points/val_acc_mean", "points/val_acc_lower", "points/val_acc_upper",
                "points/train_acc_mean"} <= scalars(agg)  # fmt: skip
    # mean curve of the aggregate run = mean over the two seeds at each validation step
    acc = EventAccumulator(str(sweep / "aggregate" / "model=lenet_fc_bn2"))
    acc.Reload()
    mine = [json.loads((p / "metrics.json").read_text()) for p in runs]
    mine = [m for m in mine if m["choices"]["model"] == "lenet_fc_bn2"]
    for event in acc.Scalars("points/val_acc_mean"):
        i = mine[0]["history"]["val_step"].index(event.step)
        assert event.value == pytest.approx(
            statistics.fmean(m["history"]["val/acc"][i] for m in mine), abs=1e-6
        )
    # on demand: the same report again
    before = (sweep / "summary.csv").read_text()
    again = report_command(str(sweep))
    assert again.returncode == 0 and (sweep / "summary.csv").read_text() == before
    # the report never imports torch: a joblib sweep's parent process would pay that alone
    check = "import sys, bnsweep.sweep.jobs as s; s.report(sys.argv[1], quiet=True); print(sorted(m for m in sys.modules if m.split('.')[0] == 'torch'))"
    imported = subprocess.run(
        [sys.executable, "-c", check, str(sweep)], capture_output=True, text=True
    )
    assert imported.returncode == 0, imported.stderr[-2000:]
    assert imported.stdout.strip() == "[]"


def test_event_writer_writes_what_torchs_summary_writer_writes(tmp_path):
    """The report's TensorBoard writer (tensorboard's own, without torch) against torch's
    SummaryWriter: the same scalars read back, the same custom-scalars layout proto."""
    from torch.utils.tensorboard import SummaryWriter
    from torch.utils.tensorboard.summary import custom_scalars

    from bnsweep.report.aggregate import AGGREGATE_LAYOUT
    from bnsweep.run.tensorboard import EventWriter, custom_scalars_summary

    as_torch = {
        c: {t: [k, tags] for t, (k, tags) in charts.items()}
        for c, charts in AGGREGATE_LAYOUT.items()
    }
    ours = custom_scalars_summary(AGGREGATE_LAYOUT)
    assert ours.SerializeToString() == custom_scalars(as_torch).SerializeToString()
    values = [(3, 0.25), (10, 0.5), (20, 1e-7), (21, -3.75)]
    with EventWriter(tmp_path / "ours") as w:
        for step, v in values:
            w.add_scalar("points/val_acc_mean", v, step)
        w.add_custom_scalars(AGGREGATE_LAYOUT)
    with SummaryWriter(str(tmp_path / "torch")) as w:
        for step, v in values:
            w.add_scalar("points/val_acc_mean", v, step)
        w.add_custom_scalars(as_torch)
    read = {}
    for name in ("ours", "torch"):
        acc = EventAccumulator(str(tmp_path / name))
        acc.Reload()
        scalars_read = [(e.step, e.value) for e in acc.Scalars("points/val_acc_mean")]
        (layout,) = acc.Tensors("custom_scalars__config__")
        read[name] = scalars_read, layout.tensor_proto.SerializeToString()
    assert read["ours"] == read["torch"]
    assert [s for s, _ in read["ours"][0]] == [3, 10, 20, 21]
    assert [v for _, v in read["ours"][0]] == pytest.approx([v for _, v in values], rel=1e-7)


def hparams_experiment(logdir: Path, required: bool = True):
    """The HPARAMS experiment proto in a run's event files (None if there is none)."""
    from tensorboard.backend.event_processing.event_file_loader import EventFileLoader
    from tensorboard.plugins.hparams import plugin_data_pb2

    for f in sorted(logdir.glob("events.out.tfevents.*")):
        for ev in EventFileLoader(str(f)).Load():
            for v in ev.summary.value:
                if v.tag == "_hparams_/experiment":
                    data = plugin_data_pb2.HParamsPluginData.FromString(
                        v.metadata.plugin_data.content
                    )
                    return data.experiment
    assert not required, f"no HPARAMS experiment in {logdir}"
    return None


def test_init_std_sweep_verbatim(cli, tmp_path):
    proc = cli("sweep.py", "-m", "init.std=0.0001,0.1", *SHORT)
    assert proc.returncode == 0, proc.stderr[-3000:]
    sweep = sweep_dir_of(tmp_path)
    rows = read_summary(sweep)
    assert [r["init.std"] for r in rows] == ["0.0001", "0.1"]
    # the swept number as an interval in HPARAMS; lenet has no BN layer: bn is 'none'
    infos = {i.name: i for i in hparams_experiment(sweep / "aggregate").hparam_infos}
    interval = infos["init.std"].domain_interval
    assert (interval.min_value, interval.max_value) == (0.0001, 0.1) and infos["init.std"].differs
    assert [v.string_value for v in infos["bn"].domain_discrete.values] == ["none"]
    assert all(r["n_finished"] == "3" and r["seeds"] == "0 1 2" for r in rows)  # default seeds
    assert matplotlib.image.imread(sweep / "final_acc_vs_init_std.png").shape[0] > 100


def test_seeds_argument():
    assert {"seeds=[0,1,2]", "seed=0,1,2"} <= set(sweep_argv(["model=lenet"]))
    assert "seed=0,1,2,3,4" in sweep_argv(["seeds=[0,1,2,3,4]"])
    args = sweep_argv(["seeds=3,4"])
    assert "seed=3,4" in args and "seeds=[3,4]" in args and not any(a == "seeds=3,4" for a in args)
    (excluded,) = [a for a in sweep_argv(
        ["model=a,b", "bn.window=3", "init.std=range(1,3)", "model.bn=[conv1,fc1]"]
    ) if a.startswith("hydra.job.config.override_dirname.exclude_keys=")]  # fmt: skip
    assert excluded.startswith("hydra.job.config.override_dirname.exclude_keys=[seeds,study,")
    assert (
        ",bn.window,model.bn]" in excluded
        and "model," not in excluded
        and "init.std" not in excluded
    )
    assert "seed=0,1,2" not in sweep_argv(["seed=7"])
    assert sweep_argv(["--help"]) == ["--help"]
    assert parse_seeds("[0]") == [0]
    with pytest.raises(SystemExit, match="seeds must be a list of integers >= 0, got 'a,b'"):
        parse_seeds("a,b")


def _fake_run(sweep: Path, name: str, seed: int, acc: list[float], overrides: list[str], **extra):
    d = sweep / name
    d.mkdir(parents=True)
    metrics = {
        "status": "finished", "seed": seed, "overrides": [*overrides, f"seed={seed}"],
        "val/acc": acc[-1], "val/acc_best": max(acc), "test/acc": acc[-1] - 0.01, "train/loss": 0.1,
        "val/loss": 0.2, "wall_time_s": 10.0 + seed,
        "history": {"val_step": [100 * (i + 1) for i in range(len(acc))],
                    "val_epoch": [i + 1.0 for i in range(len(acc))], "val/acc": acc, "val/loss": [0.2] * len(acc),
                    "train_epoch": [i + 1.0 for i in range(len(acc))], "train/acc": acc, "train/loss": [0.1] * len(acc)},
        **extra,
    }  # fmt: skip
    (d / "metrics.json").write_text(json.dumps(metrics))


def test_aggregation_rules(tmp_path):
    """Steps to 97 %/98 %, diverged and failed runs counted but left out of the means."""
    _fake_run(tmp_path, "0", 0, [0.95, 0.975, 0.985], ["bn=window"])
    _fake_run(tmp_path, "1", 1, [0.96, 0.971, 0.979], ["bn=window"])
    _fake_run(tmp_path, "2", 2, [0.5, 0.1, 0.1], ["bn=window"], diverged=True)
    _fake_run(tmp_path, "3", 0, [0.98, 0.99, 0.99], ["bn=momentum"])
    (tmp_path / "4").mkdir()
    (tmp_path / "4" / "metrics.json").write_text(
        json.dumps({"status": "failed", "seed": 1, "overrides": ["bn=momentum", "seed=1"]})
    )
    rows = {r["bn"]: r for r in report(tmp_path, quiet=True)}
    w, m = rows["window"], rows["momentum"]
    assert (w["n_finished"], w["n_diverged"], w["n_failed"]) == (2, 1, 0)
    assert (m["n_finished"], m["n_diverged"], m["n_failed"]) == (1, 0, 1)
    assert w["val_acc_mean"] == pytest.approx((0.985 + 0.979) / 2)
    assert w["val_acc_std"] == pytest.approx(statistics.stdev([0.985, 0.979]))
    assert w["steps_to_97_mean"] == 200 and w["steps_to_97_n"] == 2
    assert w["steps_to_98_mean"] == 300 and w["steps_to_98_n"] == 1  # seed 1 never reached 98 %
    assert m["steps_to_98_mean"] == 100 and m["val_acc_std"] == 0.0
    assert w["wall_time_s_mean"] == 10.5
    md = (tmp_path / "summary.md").read_text()
    assert "2 / 1 / 0" in md and "300 (1/2)" in md and "left out of the means" in md
    assert "| 0.9900 (n = 1) |" in md  # one seed: no spread to show


def test_report_on_an_empty_folder_says_so(tmp_path):
    proc = report_command(str(tmp_path))
    assert (
        proc.returncode == 2
        and proc.stderr.strip() == f"error: no runs (*/metrics.json) in {tmp_path}"
    )


STUDIES = sorted(p.stem for p in (CONF / "study").glob("*.yaml"))


@pytest.mark.parametrize("study", STUDIES)
def test_study_presets_compose(study, tmp_path):
    cfg = compose_cfg("sweep", [f"study={study}", f"run_dir={tmp_path}"])
    seeds = [0, 1, 2, 3, 4] if study.endswith("_full") else [0, 1, 2]
    assert default_seeds([f"study={study}"]) == seeds
    text = (CONF / "study" / f"{study}.yaml").read_text()
    assert text.startswith("# @package _global_\n#")  # documented at the top
    expected = {
        "bn_placement": ("glorot", "window", 10),
        "bn_estimators": ("glorot", "momentum", 10),
        "init_scale": ("truncated_normal", "momentum", None),
        "init_scale_quick": ("truncated_normal", "momentum", None),
    }.get(study)
    if expected:
        assert (
            cfg.init._target_.rsplit(".", 1)[1],
            cfg.bn.get("estimator", "torch"),
            cfg.trainer.max_epochs,
        ) == ({"glorot": "glorot_uniform"}.get(expected[0], expected[0]), expected[1], expected[2])
    if study.startswith("init_scale"):
        assert cfg.model._target_ == "bnsweep.nn.InitCNN" and cfg.optimizer.lr == 1e-4
        assert cfg.data.batch_size == 50 and cfg.trainer.val_check_interval == 100
        assert cfg.trainer.max_steps == (10000 if study == "init_scale" else 600)
    if study == "bn_placement":
        assert cfg.bn.eps == 1e-8 and cfg.bn.window == 5
    if study == "sync_bn":  # two gloo processes a run; per-device batch × sync swept
        assert cfg.trainer.devices == 2 and cfg.trainer.accelerator == "cpu"
        assert "      data.batch_size: 2,4,8,16,32\n      bn.sync: false,true\n" in text


# init_scale_quick is init_scale with fewer steps: under fast_dev_run the same runs (its own
# settings are checked where the presets compose)
@pytest.mark.slow
@pytest.mark.parametrize("study", [s for s in STUDIES if s not in ("custom", "optuna_lr_momentum",
                                   "init_scale_quick") and not s.endswith("_full")])  # fmt: skip
def test_study_presets_run_with_fast_dev_run(cli, tmp_path, study):
    # fewer points where they differ only in a value swept: 10 of batch_size's 35 points, 4 of
    # sync_bn's 10 (each a run of two processes)
    fewer = {"batch_size": ["data.batch_size=2,64"], "sync_bn": ["data.batch_size=2,32"]}.get(study, [])
    proc = cli(
        "sweep.py",
        f"study={study}",
        "seeds=[0]",
        "++trainer.fast_dev_run=true",
        *fewer,
        timeout=900,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    sweep = sweep_dir_of(tmp_path)
    rows = read_summary(sweep)
    points = {"bn_placement": 5, "bn_estimators": 4, "init_scale": 9, "init_scale_quick": 9,
              "paper_fig1": 2, "batch_size": 10, "bn_position": 12, "precise_bn": 4,
              "santurkar": 4, "sync_bn": 4, "bn_placement_tuned": 5, "bn_estimators_tuned": 4,
              }[study]  # fmt: skip
    assert len(rows) == points and all(r["n_finished"] == "1" for r in rows)


# one torch thread in every job: float sums then run in the same order whatever the launcher;
# on the CPU (deterministic kernels) also where the machine has a GPU
# (two jobs: each launcher's job is a process of its own, and what is compared is that a job
# computes the same wherever it is launched; the seeds' fan-out is the sweeper's, tested above)
LAUNCHER_SWEEP = ["-m", "model=lenet_bn1,lenet_fc_bn2", "seeds=[0]", "threads=1",
                  "trainer.accelerator=cpu", *SHORT]  # fmt: skip


def numbers_of(sweep: Path) -> list[dict[str, str]]:
    return [
        {k: v for k, v in r.items() if not k.startswith("wall_time")} for r in read_summary(sweep)
    ]


@pytest.mark.parametrize(
    "launcher",
    [["hydra/launcher=joblib", "hydra.launcher.n_jobs=2"], ["hydra/launcher=submitit_local"]],
    ids=["joblib", "submitit_local"],
)
def test_launchers_give_the_basic_launchers_numbers(cli, tmp_path, basic_launchers_sweep, launcher):
    other = cli("sweep.py", *LAUNCHER_SWEEP, *launcher)
    assert other.returncode == 0, other.stderr[-3000:]
    (other_dir,) = (tmp_path / "outputs" / "sweep").iterdir()
    assert len(list(other_dir.glob("*/metrics.json"))) == 2
    # same seeds, same numbers on CPU
    assert numbers_of(other_dir) == numbers_of(basic_launchers_sweep)


@pytest.fixture(scope="module")
def basic_launchers_sweep(tmp_path_factory, mnist_dir) -> Path:
    """LAUNCHER_SWEEP through Hydra's basic launcher, once for the launcher tests."""
    where = tmp_path_factory.mktemp("basic")
    env = dict(os.environ, BNSWEEP_DATA=str(mnist_dir), CI="true")
    basic = inprocess.run("sweep.py", [*LAUNCHER_SWEEP, f"hydra.sweep.dir={where / 'sw'}"],
                          cwd=where, env=env)  # fmt: skip
    assert basic.returncode == 0, basic.stderr[-3000:]
    return where / "sw"


def test_slurm_launcher_preset_composes(tmp_path):
    with initialize_config_dir(version_base="1.3", config_dir=str(CONF)):
        cfg = compose(
            "sweep",
            ["hydra/launcher=slurm", "hydra.launcher.partition=gpu"],
            return_hydra_config=True,
        )
    launcher = cfg.hydra.launcher
    assert (
        launcher._target_ == "hydra_plugins.bnsweep_plugins.launchers.BnsweepSlurmLauncher"
    )
    assert (
        launcher.partition == "gpu" and launcher.gpus_per_task == 1 and launcher.timeout_min == 60
    )


def test_optuna_study_tunes_the_lr_of_each_momentum(cli, tmp_path):
    proc = cli("sweep.py", "study=optuna_lr_momentum", "sweep.tune.budget=2", "seeds=[0]",
               "bn.momentum=0.1,0.5", *SHORT)  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    rows = read_summary(sweep_dir_of(tmp_path))
    assert [r["bn.momentum"] for r in rows] == ["0.1", "0.5"]
    assert all(1e-4 <= float(r["optimizer.lr (tuned)"]) <= 1e-1 and r["n_finished"] == "1"
               for r in rows)  # fmt: skip
    tuning = json.loads((sweep_dir_of(tmp_path) / "tune" / "tuning.json").read_text())
    assert [len(p["values"]) for p in tuning["points"]] == [2, 2]


def test_ray_local_launcher_gives_the_basic_launchers_numbers(cli, tmp_path):
    # needs the [ray] extra, which CI does not install (ray's dependency tree); run it where it is
    pytest.importorskip("hydra_plugins.hydra_ray_launcher", reason='needs pip install -e ".[ray]"')
    basic = cli("sweep.py", *LAUNCHER_SWEEP)
    assert basic.returncode == 0, basic.stderr[-3000:]
    (basic_dir,) = (tmp_path / "outputs" / "sweep").iterdir()
    ray = cli(
        "sweep.py",
        *LAUNCHER_SWEEP,
        "hydra/launcher=ray_local",
        env={"RAY_DISABLE_USAGE_STATS": "1"},
    )
    assert ray.returncode == 0, ray.stderr[-3000:]
    (ray_dir,) = set((tmp_path / "outputs" / "sweep").iterdir()) - {basic_dir}
    assert numbers_of(ray_dir) == numbers_of(basic_dir)


@pytest.mark.parametrize(
    "override, sweeps",
    [
        ("a=1,2", True),
        ("a=range(1,3)", True),
        ("a=choice(1,2)", True),
        ("a=interval(0,1)", True),
        ("a=glob(*)", True),
        ("init.std=range(0.01,0.51,0.01)", True),
        ("a=tag(x,choice(1,2))", True),
        ("a=1", False),
        ("a=sort([3,1])", False),
        ("a=shuffle([1,2,3])", False),
        ("a=x\\,y", False),
        ("a='x,y'", False),
        ('a="x,y"', False),
        ("a=[1,2]", False),
        ("model.bn=[conv1,fc1]", False),
        ("a={b:1,c:2}", False),
        ("a=", False),
    ],
)
def test_a_sweep_is_what_hydras_parser_calls_one(override, sweeps):
    """One override parser, Hydra's: bnsweep's sweep test agrees with OverridesParser on every
    form (the character scan it replaced called sort([…]), shuffle([…]) and x\\,y sweeps)."""
    from hydra.core.override_parser.overrides_parser import OverridesParser

    from bnsweep.config.cli import folder_name_excludes, is_sweep

    assert is_sweep(override) is sweeps
    assert OverridesParser.create().parse_override(override).is_sweep_override() is sweeps
    key = override.split("=", 1)[0]
    assert (key in folder_name_excludes([override])) is not sweeps  # a fixed key names no folder


@pytest.mark.parametrize(
    "override, values",
    [
        ("a=1,2", ["1", "2"]),
        ("optimizer.lr=1e-6,1e-3", ["1e-6", "1e-3"]),  # as typed
        ("a=choice(1e-3,x)", ["0.001", "x"]),
        ("a=choice(x,y)", ["x", "y"]),
        ("a=range(0,3)", ["0", "1", "2"]),
        ("a=x\\,y,z", ["x,y", "z"]),  # an escaped comma is part of a value, not a separator
        ("a='x,y',z", ["x,y", "z"]),
        ("a=sort(3,1)", ["1", "3"]),  # sort of a sweep: the sweep, sorted
        ("a=interval(0,1)", []),  # drawn by a search sweeper: not known before
        ("a=glob(*)", []),
        ("a=1", []),
        ("a=[1,2]", []),
    ],
)
def test_the_values_a_sweep_enumerates_are_hydras(override, values):
    """report.baseline is checked against the values a swept key takes, as Hydra expands them
    (the character scan before split 'x\\,y' and quoted commas, and gave up on any bracket)."""
    from bnsweep.config.cli import swept_values

    assert swept_values(override) == values


def test_a_baseline_the_sweep_lacks_is_refused_before_any_job(cli, tmp_path):
    """The values report.baseline is checked against come from Hydra's parser (above)."""
    refused = cli("sweep.py", "-m", "model=lenet_fc_bn2", "bn=momentum,window",
                  "report.baseline='bn=cumulative'", f"hydra.sweep.dir={tmp_path}/s")  # fmt: skip
    assert refused.returncode == 2, refused.stderr
    assert refused.stderr.strip().splitlines()[-1] == (
        "error: report.baseline='bn=cumulative' matches no point: bn takes momentum, window")
    assert not (tmp_path / "s").exists()

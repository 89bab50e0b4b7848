"""sweep.vectorize: the seeds of a point trained as one stacked network equal independent runs."""

from __future__ import annotations

import json
import math
from functools import partial
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from conftest import DEVICES, compose_cfg
from helpers import SHORT, read_summary, scalars, sweep_dir_of
from stacking import (
    accuracy_on_test_set,
    assert_members_evaluate_as_alone,
    killed_at_step,
    plain_module,
    train_alone_and_stacked,
)
from torch import nn

from bnsweep.nn import InitCNN, LeNet, make_batchnorm, make_torch_batchnorm
from bnsweep.nn.stacked import (
    MemberEstimators,
    StackedConv2d,
    StackedDropout,
    StackedLinear,
    StackedNet,
    member_state,
    stack_inputs,
)

# ---------------------------------------------------------------------------------------------
# layers


@pytest.mark.parametrize("fused", [False, True])
def test_stacked_conv_and_linear_equal_the_members_layers(fused):
    torch.manual_seed(0)
    s = 3
    for plain, stack, shape in [
        ([nn.Conv2d(6, 16, 3, padding=1) for _ in range(s)], StackedConv2d, (8, 6, 10, 10)),
        ([nn.Linear(120, 84) for _ in range(s)], StackedLinear, (8, 120)),
    ]:
        xs = [torch.randn(shape, requires_grad=True) for _ in range(s)]
        gs = [torch.randn_like(layer(x)) for layer, x in zip(plain, xs)]
        for layer, x, g in zip(plain, xs, gs):
            layer(x).backward(g)
        stacked = stack(plain, fused=fused)
        x = stack_inputs([x.detach() for x in xs]).requires_grad_()
        y = stacked(x)
        y.backward(stack_inputs(gs))
        expected = stack_inputs([layer(x) for layer, x in zip(plain, xs)]).detach()
        grad_w = torch.cat([layer.weight.grad for layer in plain]).view_as(stacked.weight)
        grad_b = torch.cat([layer.bias.grad for layer in plain]).view_as(stacked.bias)
        grad_x = stack_inputs([x.grad for x in xs])
        if fused:  # another summation order: equal to float rounding (sums of up to 800 terms
            # of size ~1, |sum| up to ~100: 1e-4 is a few ulps of the largest)
            for a, b in [(y, expected), (stacked.weight.grad, grad_w), (x.grad, grad_x)]:
                torch.testing.assert_close(a.detach(), b, rtol=1e-5, atol=1e-4)
        else:  # one plain call per member: the same bits
            assert torch.equal(y.detach(), expected)
            assert torch.equal(stacked.weight.grad, grad_w)
            assert torch.equal(stacked.bias.grad, grad_b)
            assert torch.equal(x.grad, grad_x)


NORMS = {
    "momentum": partial(make_batchnorm, estimator="momentum"),
    "window": partial(make_batchnorm, estimator="window", window=3),
    "cumulative": partial(make_batchnorm, estimator="cumulative"),
    "torch": make_torch_batchnorm,
}


def _members(model: str, norm, seeds=(0, 1, 2)):
    nets, gens = [], []
    for seed in seeds:
        torch.manual_seed(seed)
        if model == "lenet":
            nets.append(LeNet(bn=["conv1", "conv2", "fc1", "fc2"], norm=norm))
        else:
            nets.append(InitCNN(dropout=0.5))
        gens.append(torch.Generator().set_state(torch.get_rng_state()))
    return nets, gens


@pytest.mark.parametrize("device", DEVICES)
def test_fused_kernels_train_each_member_as_alone_to_rounding(exact_fp32, device):
    """The GPU's path (grouped conv, batched matmul, BN over all S·C channels at once), on the
    CPU and on a GPU: one step's losses and gradients equal the members' own to float rounding."""
    for bn in ("momentum", "torch"):
        nets, _ = _members("lenet", NORMS[bn])
        nets = [net.to(device) for net in nets]
        stacked = StackedNet(nets, fused=True)
        data = torch.Generator(device).manual_seed(3)
        xs = [torch.rand(16, 1, 28, 28, generator=data, device=device) for _ in nets]
        ys = [torch.randint(0, 10, (16,), generator=data, device=device) for _ in nets]
        alone = []
        for net, x, y in zip(nets, xs, ys):
            loss = F.cross_entropy(net(x), y)
            loss.backward()
            alone.append(loss.detach())
        logits = stacked(stack_inputs(xs))
        losses = torch.stack([F.cross_entropy(logits[:, m], y) for m, y in enumerate(ys)])
        losses.sum().backward()
        torch.testing.assert_close(losses.detach(), torch.stack(alone), rtol=0, atol=1e-5)
        grads = {**stacked.net.state_dict(),
                 **{k: p.grad for k, p in stacked.net.named_parameters()}}  # fmt: skip
        for m, net in enumerate(nets):
            member = member_state(grads, stacked.member_shapes, m, len(nets))
            for key, p in net.named_parameters():
                if key.endswith("affine.bias"):
                    continue  # zero up to rounding under BN: no relative scale to compare
                scale = p.grad.abs().max()
                torch.testing.assert_close(member[key] / scale, p.grad / scale, rtol=0, atol=1e-4,
                                           msg=f"{bn} {key}")  # fmt: skip


@pytest.mark.parametrize("bn", list(NORMS))
def test_stacked_lenet_trains_each_member_as_alone(bn):
    """Five Adam steps and an eval pass: every member's loss, logits, weights and BN running
    statistics equal those of its own network trained alone (per-member BN statistics)."""
    nets, _ = _members("lenet", NORMS[bn])
    stacked = StackedNet(nets)
    data = train_alone_and_stacked(nets, stacked, partial(torch.optim.Adam, lr=1e-2), batch=16)
    x = torch.rand(32, 1, 28, 28, generator=data)
    assert_members_evaluate_as_alone(nets, stacked, x, out_atol=1e-5)


def test_members_with_different_estimators_stack_and_each_estimates_as_alone():
    """EMA momentum 0.1 and 0.01 and the cumulative average in one stacked network (points a
    vectorized sweep stacks): each member trains and evaluates as its own network, its running
    statistics those of its own estimator."""
    norms = [partial(make_batchnorm, momentum=0.1), partial(make_batchnorm, momentum=0.01),
             partial(make_batchnorm, estimator="cumulative")]  # fmt: skip
    nets = []
    for norm in norms:
        torch.manual_seed(0)  # one seed: the members differ only in their estimators
        nets.append(LeNet(bn=["conv1", "fc1"], norm=norm))
    stacked = StackedNet(nets)
    assert isinstance(stacked.net.fc1.bn.stats, MemberEstimators)
    data = train_alone_and_stacked(nets, stacked, partial(torch.optim.Adam, lr=1e-2), batch=16)
    x = torch.rand(32, 1, 28, 28, generator=data)
    assert_members_evaluate_as_alone(nets, stacked, x, out_atol=1e-5)
    means = [stacked.member_state_dict(m)["fc1.bn.running_mean"] for m in range(3)]
    assert not torch.equal(means[0], means[1]) and not torch.equal(means[1], means[2])
    window = LeNet(bn=["conv1", "fc1"], norm=partial(make_batchnorm, estimator="window"))
    with pytest.raises(ValueError, match="architecture"):  # the window's ring: other buffers
        StackedNet([nets[0], window])


def test_member_state_dicts_round_trip():
    nets, _ = _members("lenet", NORMS["window"])
    for i, net in enumerate(nets):  # distinct running statistics and window rings per member
        for m in net.modules():
            if hasattr(m, "window_mean"):
                m.window_mean.normal_(generator=torch.Generator().manual_seed(i))
                m.running_var.uniform_(1, 2)
    stacked = StackedNet(nets)
    for m, net in enumerate(nets):
        for key, value in net.state_dict().items():
            assert torch.equal(stacked.member_state_dict(m)[key], value), key
    other = StackedNet(_members("lenet", NORMS["window"], seeds=(5, 6, 7))[0])
    other.load_member_state_dicts([n.state_dict() for n in nets])
    for key, value in stacked.state_dict().items():
        assert torch.equal(other.state_dict()[key], value), key


def test_dropout_draws_each_members_mask_from_its_own_generator():
    x = torch.randn(4, 3 * 10)
    states = [torch.Generator().manual_seed(s).get_state() for s in (0, 1, 2)]
    gens = [torch.Generator().set_state(st) for st in states]
    y = StackedDropout(0.5, gens)(x)
    for m, state in enumerate(states):  # what F.dropout draws from a global RNG in that state
        torch.set_rng_state(state)
        assert torch.equal(y[:, m * 10 : (m + 1) * 10], F.dropout(x[:, m * 10 : (m + 1) * 10], 0.5))


def test_a_layer_that_cannot_stack_is_named():
    net = nn.Sequential(nn.Linear(4, 4), nn.LayerNorm(4))
    with pytest.raises(ValueError, match="cannot stack layer '1' of type LayerNorm"):
        StackedNet([net, net])


# ---------------------------------------------------------------------------------------------
# whole runs: each member against the independent run of its seed

# 200 steps, validated at 100 and 200 on 3,000 images, tested on 3,000
STEPS = ["trainer.max_epochs=null", "trainer.max_steps=200", "trainer.val_check_interval=100",
         "trainer.check_val_every_n_epoch=null", "logger=csv", "trainer.limit_val_batches=3",
         "trainer.limit_test_batches=3"]  # fmt: skip
# the fast tier's: 60 steps, validated at 30 and 60 (bit-equality with the runs alone is the
# claim, and it holds or breaks from the first step; the slow tier keeps the 200)
FAST_STEPS = [{"trainer.max_steps=200": "trainer.max_steps=60",
               "trainer.val_check_interval=100": "trainer.val_check_interval=30"}.get(a, a)
              for a in STEPS]  # fmt: skip


def _cfg(tmp_path: Path, mnist_dir: Path, name: str, *overrides: str):
    # the CPU, also where the machine has a GPU: equality with independent runs to the bit is a
    # CPU claim (per-member kernels); tests/test_gpu.py holds the GPU's to rounding
    base = [f"run_dir={tmp_path / name}", f"data.root={mnist_dir}", "data.download=false",
            "trainer.accelerator=cpu"]  # fmt: skip
    return compose_cfg("sweep", base + list(overrides))


def _independent(tmp_path, mnist_dir, seed, *overrides):
    from bnsweep.run.training import run

    return run(_cfg(tmp_path, mnist_dir, f"alone{seed}", f"seed={seed}", *overrides))


def _assert_equal_runs(member: dict, alone: dict) -> None:
    h, a = member["history"], alone["history"]
    assert h["val_step"] == a["val_step"] and h["train_epoch"] == a["train_epoch"]
    assert h["val/acc"] == a["val/acc"]  # identical accuracy
    assert member["test/acc"] == alone["test/acc"]
    for key in ("val/loss", "train/loss"):
        assert len(h[key]) == len(a[key]) > 0
        for x, y in zip(h[key], a[key]):
            assert abs(x - y) <= 1e-4, (key, h[key], a[key])
    assert abs(member["test/loss"] - alone["test/loss"]) <= 1e-4
    for key in ("diverged", "diverged_step", "steps", "seed"):
        assert member[key] == alone[key], key


# the estimators, and the variants of the training transform (ghost batches of 8 per member;
# renorm past its warm-up, r and d clipped per member)
VARIANTS = ["bn=momentum", "bn=window", "bn=cumulative", "bn=ghost",
            "bn=renorm bn.warmup=15 bn.r_max_steps=45 bn.d_max_steps=30"]  # fmt: skip


@pytest.mark.parametrize("bn", VARIANTS)
def test_vectorized_lenet_fc_bn2_equals_independent_runs(tmp_path, mnist_dir, bn):
    from bnsweep.sweep.vectorize import run_members

    overrides = ["model=lenet_fc_bn2", *bn.split(), *FAST_STEPS]
    members = run_members(_cfg(tmp_path, mnist_dir, "job", "seeds=[0,1,2]", *overrides))
    assert [m["seed"] for m in members] == [0, 1, 2]
    for seed, member in zip((0, 1, 2), members):
        _assert_equal_runs(member, _independent(tmp_path, mnist_dir, seed, *overrides))
        # on the CPU a member trains bit for bit as its run: the same final weights. The BN
        # running statistics are equal to the last bit or so: their elementwise updates over
        # S·C channels take the SIMD path where 6 channels alone take the scalar one
        ours = torch.load(tmp_path / f"job,seed={seed}" / "ckpt" / "last.ckpt", weights_only=True)
        alone = torch.load(tmp_path / f"alone{seed}" / "ckpt" / "last.ckpt", weights_only=True)
        assert ours["global_step"] == alone["global_step"] == 60
        assert ours["state_dict"].keys() == alone["state_dict"].keys()
        for key, value in alone["state_dict"].items():
            if ".bn.running_" in key or ".bn.window_" in key:
                torch.testing.assert_close(ours["state_dict"][key], value, rtol=1e-6, atol=1e-7)
            else:
                assert torch.equal(ours["state_dict"][key], value), key
    # the members' accuracies differ: three seeds, not one run three times
    assert len({m["test/acc"] for m in members}) > 1
    run_dir = tmp_path / "job,seed=1"
    assert json.loads((run_dir / "metrics.json").read_text()) == json.loads(json.dumps(members[1]))
    assert (run_dir / "csv" / "metrics.csv").read_text().count("\n") > 2
    assert {p.name for p in (run_dir / "ckpt").iterdir()} == {"last.ckpt", "best.ckpt", "prev.ckpt"}


def test_member_checkpoint_is_an_independent_runs_checkpoint(tmp_path, mnist_dir):
    """A member's last.ckpt loads into the plain network and gives the member's test accuracy."""
    from bnsweep.sweep.vectorize import run_members

    overrides = ["model=lenet_fc_bn2", "bn=window", *SHORT, "trainer.limit_test_batches=null"]
    members = run_members(_cfg(tmp_path, mnist_dir, "job", "seeds=[3,4]", *overrides))
    ckpt = torch.load(tmp_path / "job,seed=4" / "ckpt" / "last.ckpt", weights_only=True)
    saved = ckpt["bnsweep"]["history"]  # saved at the last validation, before the epoch's end
    assert ckpt["global_step"] == 20 and saved["val/acc"] == members[1]["history"]["val/acc"]
    module = plain_module(
        _cfg(tmp_path, mnist_dir, "plain", "seed=4", *overrides), ckpt["state_dict"]
    )
    assert accuracy_on_test_set(module, mnist_dir) == pytest.approx(
        members[1]["test/acc"], abs=1e-6
    )
    assert len(ckpt["optimizer_states"][0]["state"]) == len(list(module.parameters()))


def test_vectorized_percentiles_and_bn_dashboards_are_each_members(tmp_path, mnist_dir):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    from bnsweep.sweep.vectorize import run_members

    overrides = ["model=mlp_bn", "+percentiles={layer: fc3, unit: 7, q: [15, 50, 85]}", *SHORT,
                 "logger=tensorboard"]  # fmt: skip
    members = run_members(_cfg(tmp_path, mnist_dir, "job", "seeds=[0,1]", *overrides))
    for seed, member in zip((0, 1), members):
        alone = _independent(tmp_path, mnist_dir, seed, *overrides)
        for q in (15, 50, 85):
            key = f"preact/fc3_u7/p{q}"
            assert len(member["history"][key]) == 2
            assert member["history"][key] == pytest.approx(alone["history"][key], abs=1e-5)
    assert members[0]["history"]["preact/fc3_u7/p50"] != members[1]["history"]["preact/fc3_u7/p50"]
    events = EventAccumulator(str(tmp_path / "job,seed=1"))
    events.Reload()
    assert {"bn/fc1/running_mean", "preact/fc3"} <= set(events.Tags()["histograms"])
    assert {"preact/fc3_u7/p50", "val/acc"} <= set(events.Tags()["scalars"])


@pytest.mark.slow
def test_vectorized_cnn_with_dropout_equals_independent_runs(tmp_path, mnist_dir):
    from bnsweep.sweep.vectorize import run_members

    # the init study's optimizer; batch 16 instead of its 50 keeps the 200 steps affordable here
    overrides = ["model=cnn", "optimizer.lr=1e-4", "data.batch_size=16", *STEPS,
                 "data.eval_batch_size=500", "trainer.limit_val_batches=2",
                 "trainer.limit_test_batches=2"]  # fmt: skip
    members = run_members(_cfg(tmp_path, mnist_dir, "job", "seeds=[0,1]", *overrides))
    for seed, member in zip((0, 1), members):
        _assert_equal_runs(member, _independent(tmp_path, mnist_dir, seed, *overrides))


def test_a_diverging_member_is_frozen_and_the_others_train_on(tmp_path, mnist_dir, monkeypatch):
    """Seed 1's network gets a NaN bias: it diverges at step 0 as alone; seeds 0 and 2 train as
    alone, and seed 1's report equals its independent run's."""
    import bnsweep.run.training
    import bnsweep.sweep.vectorize

    counted = bnsweep.run.training.build_counted

    def plain(cfg):
        return counted(cfg)[0]

    def poisoned(cfg):  # every network a run or a job builds goes through build_counted
        net, swapped = counted(cfg)
        if cfg.seed == 1:
            with torch.no_grad():
                net.fc3.bias[0] = math.nan
        return net, swapped

    monkeypatch.setattr(bnsweep.run.training, "build_counted", poisoned)
    _ = bnsweep.sweep.vectorize  # its build_net calls bnsweep.run.training.build_counted
    overrides = ["model=lenet_fc_bn2", *SHORT]
    members = bnsweep.sweep.vectorize.run_members(
        _cfg(tmp_path, mnist_dir, "job", "seeds=[0,1,2]", *overrides)
    )
    assert [m["diverged"] for m in members] == [False, True, False]
    assert members[1]["diverged_step"] == 0 and members[1]["status"] == "finished"
    for seed, member in zip((0, 2), (members[0], members[2])):
        _assert_equal_runs(member, _independent(tmp_path, mnist_dir, seed, *overrides))
    alone = _independent(tmp_path, mnist_dir, 1, *overrides)
    assert alone["diverged_step"] == 0
    assert members[1]["history"]["val_step"] == alone["history"]["val_step"] == [1]
    assert members[1]["test/acc"] == alone["test/acc"]
    # stacked again for a resume, the diverged member stays frozen at its own weights
    from bnsweep.sweep.member_checkpoints import stack_checkpoints

    ckpts = [torch.load(tmp_path / f"job,seed={s}" / "ckpt" / "last.ckpt", weights_only=True)
             for s in (0, 1, 2)]  # fmt: skip
    net = StackedNet(
        [plain(_cfg(tmp_path, mnist_dir, "x", f"seed={s}", *overrides)) for s in (0, 1, 2)]
    )
    job = stack_checkpoints(ckpts, net)["bnsweep"]
    assert job["diverged_step"] == [None, 0, None] and list(job["frozen"]) == [1]
    bias = job["frozen"][1]["fc3.bias"]
    torch.testing.assert_close(bias, ckpts[1]["state_dict"]["net.fc3.bias"], rtol=0, atol=0,
                               equal_nan=True)  # fmt: skip


def test_an_interrupted_vectorized_job_resumes_from_its_members_checkpoints(
    tmp_path, mnist_dir, monkeypatch
):
    from bnsweep.sweep.members import LitMembers
    from bnsweep.sweep.vectorize import run_members

    # the CNN with BN and dropout: the resumed members draw the masks the whole run draws
    overrides = ["model=cnn_bn", "bn=window", "data.batch_size=16", "data.eval_batch_size=250",
                 *SHORT, "trainer.max_steps=30"]  # fmt: skip
    whole = run_members(_cfg(tmp_path, mnist_dir, "whole", "seeds=[0,1]", *overrides))

    with killed_at_step(monkeypatch, LitMembers, 25):
        run_members(_cfg(tmp_path, mnist_dir, "job", "seeds=[0,1]", *overrides))
    assert not (tmp_path / "job,seed=0" / "metrics.json").exists()
    resumed = run_members(
        _cfg(tmp_path, mnist_dir, "job", "seeds=[0,1]", *overrides, "resume=true")
    )
    for r, w in zip(resumed, whole):
        assert r["resumed_from_step"] == 20
        assert r["history"] == w["history"]
        assert r["test/acc"] == w["test/acc"] and r["test/loss"] == w["test/loss"]
    again = run_members(_cfg(tmp_path, mnist_dir, "job", "seeds=[0,1]", *overrides, "resume=true"))
    assert again == json.loads(json.dumps(resumed))  # finished: skipped, unchanged


# ---------------------------------------------------------------------------------------------
# sweep.py


def test_vectorized_sweep_writes_the_runs_of_an_independent_sweep(cli, tmp_path):
    proc = cli("sweep.py", "-m", "model=lenet_bn1,lenet_fc_bn2", "sweep.vectorize=true",
               "seeds=[0,1]", *SHORT)  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    sweep = sweep_dir_of(tmp_path)
    runs = sorted(p.parent.name for p in sweep.glob("*/metrics.json"))
    assert runs == [
        "0_model=lenet_bn1,seed=0",
        "0_model=lenet_bn1,seed=1",
        "1_model=lenet_fc_bn2,seed=0",
        "1_model=lenet_fc_bn2,seed=1",
    ]
    rows = {r["model"]: r for r in read_summary(sweep)}
    assert rows["lenet_fc_bn2"]["n_finished"] == "2" and rows["lenet_fc_bn2"]["seeds"] == "0 1"
    assert {"val/acc", "train/loss_step", "test/acc"} <= scalars(
        sweep / "1_model=lenet_fc_bn2,seed=1"
    )
    members = json.loads((sweep / "1_model=lenet_fc_bn2" / "members.json").read_text())
    assert members["runs"] == ["1_model=lenet_fc_bn2,seed=0", "1_model=lenet_fc_bn2,seed=1"]


def test_vectorize_refuses_an_explicit_seed(cli):
    proc = cli("sweep.py", "sweep.vectorize=true", "seed=3", *SHORT)
    assert proc.returncode != 0
    assert proc.stderr.strip().splitlines()[-1] == (
        "error: with sweep.vectorize=true the seeds are set by seeds=[...], got seed=3"
    )


def test_vectorize_refuses_compile_before_any_job(cli, tmp_path):
    proc = cli("sweep.py", "sweep.vectorize=true", "trainer.compile=true", *SHORT)
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines()[-1] == (
        "error: trainer.compile=true cannot be combined with sweep.vectorize=true"
    )
    assert not (tmp_path / "outputs" / "sweep").exists() or not any(
        (tmp_path / "outputs" / "sweep").iterdir()
    )


def test_vectorized_sweep_resumes_through_the_command_line(cli, tmp_path):
    """resume=<sweep folder> finds a vectorized sweep's member folders again: a finished member
    is skipped, an unfinished one continues from its last.ckpt, and the report is rewritten."""
    args = [
        "-m",
        "model=lenet_fc_bn2",
        "sweep.vectorize=true",
        "seeds=[0,1]",
        *SHORT,
        "trainer.accelerator=cpu",
    ]  # equal numbers after a resume: deterministic kernels
    first = cli("sweep.py", *args)
    assert first.returncode == 0, first.stderr[-3000:]
    sweep = sweep_dir_of(tmp_path)
    done = json.loads((sweep / "0_seed=0" / "metrics.json").read_text())
    unfinished = sweep / "0_seed=1" / "metrics.json"
    before = json.loads(unfinished.read_text())
    unfinished.unlink()  # as if the job had been killed after its last checkpoint
    resumed = cli("sweep.py", *args, f"resume={sweep}")
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert json.loads((sweep / "0_seed=0" / "metrics.json").read_text()) == done
    after = json.loads(unfinished.read_text())
    assert after["resumed_from_step"] == 20
    assert after["history"]["val/acc"] == before["history"]["val/acc"]
    assert after["test/acc"] == before["test/acc"]
    assert read_summary(sweep)[0]["n_finished"] == "2"


# ---------------------------------------------------------------------------------------------
# points stacked into one job: those that differ only in init.* or BN's estimator


def _planned(*args: str) -> list[tuple[str, list[str]]]:
    from bnsweep.config.cli import sweep_argv
    from bnsweep.sweep.plan import plan

    return [(j.folder, j.runs) for j in plan(sweep_argv(list(args)))[1]]


def test_points_differing_only_in_init_or_the_bn_estimator_stack_into_one_job():
    vec = ["sweep.vectorize=true", "seeds=[0,1]"]
    jobs = _planned("model=lenet,lenet_fc_bn2", "init.std=0.01,0.1", *vec)
    assert jobs == [
        ("0_model=lenet", ["0_model=lenet,init.std=0.01,seed=0", "0_model=lenet,init.std=0.01,seed=1",
                           "0_model=lenet,init.std=0.1,seed=0", "0_model=lenet,init.std=0.1,seed=1"]),
        ("1_model=lenet_fc_bn2", [f"1_model=lenet_fc_bn2,init.std={v},seed={s}"
                                  for v in ("0.01", "0.1") for s in (0, 1)]),
    ]  # fmt: skip
    # momentum and cumulative keep no buffers of their own: one job; the window keeps its ring
    assert [
        f for f, _ in _planned("model=lenet_fc_bn2", "bn=momentum,window,cumulative", *vec)
    ] == ["0_", "1_bn=window"]
    assert [
        len(r) for _, r in _planned("model=lenet_fc_bn2", "bn.momentum=0.1,0.01,null", *vec)
    ] == [6]
    # what the training computes differs: ghost batches, renorm's r and d from the running
    # statistics, torch's layer: separate jobs
    for swept in (["bn=momentum,ghost"], ["bn=renorm", "bn.momentum=0.1,0.01"], ["bn=momentum,torch"],
                  ["optimizer.lr=0.01,0.1", "optimizer.weight_decay=1e-4"]):  # fmt: skip
        assert len(_planned("model=lenet_fc_bn2", *swept, *vec)) == 2, swept
    # learning rates apart, each member at its own: one job (Adam without weight decay)
    assert len(_planned("model=lenet_fc_bn2", "optimizer.lr=0.01,0.1", *vec)) == 1
    # without sweep.vectorize: a job per point and seed, as before
    assert len(_planned("model=lenet_fc_bn2", "init.std=0.01,0.1", "seeds=[0,1]")) == 4


def test_the_init_scale_study_vectorized_is_one_job_of_27_runs(cli):
    proc = cli("sweep.py", "study=init_scale", "sweep.vectorize=true", "--dry-run")
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    assert lines[0].split(": ", 1)[1].startswith("1 jobs, 27 runs")
    stds = ("0.0001", "0.0003", "0.001", "0.003", "0.01", "0.03", "0.1", "0.3", "1.0")
    assert lines[1].split("runs: ")[1].split(", ") == [
        f"0_init.std={v},seed={s}" for v in stds for s in (0, 1, 2)
    ]


def _by_member(sweep: Path) -> dict[str, Path]:
    """A sweep's run folders by name without the job number: ``init.std=0.1,seed=0``."""
    return {p.parent.name.split("_", 1)[1]: p.parent for p in sweep.glob("*/metrics.json")}


def _assert_bit_identical(vectorized: Path, independent: Path, names: list[str],
                          stats_rtol: float = 0.0) -> None:  # fmt: skip
    """Each member of the vectorized sweep equals its independent run: the config, every
    number of its history and test, its final weights (BN running statistics to ``stats_rtol``)."""
    ours, alone = _by_member(vectorized), _by_member(independent)
    assert sorted(ours) == sorted(alone) == sorted(names)
    for name in names:
        a, b = (json.loads((d / "metrics.json").read_text()) for d in (ours[name], alone[name]))
        assert a["history"] == b["history"], name
        for key in ("test/acc", "test/loss", "val/acc", "val/acc_best", "steps", "seed", "choices"):
            assert a[key] == b[key], (name, key)
        assert json.loads((ours[name] / "run_config.json").read_text()) == json.loads(
            (alone[name] / "run_config.json").read_text()
        )
        wa, wb = (torch.load(d / "ckpt" / "last.ckpt", weights_only=True)["state_dict"]
                  for d in (ours[name], alone[name]))  # fmt: skip
        assert wa.keys() == wb.keys()
        for key, value in wb.items():
            if stats_rtol and ".running_" in key:
                torch.testing.assert_close(wa[key], value, rtol=stats_rtol, atol=1e-7)
            else:
                assert torch.equal(wa[key], value), (name, key)
    jobs = [json.loads(line) for line in (vectorized / "jobs.jsonl").read_text().splitlines()]
    assert len([j for j in jobs if "run" in j]) == 1  # one job trained them all
    assert numbers_without_times(vectorized) == numbers_without_times(independent)


def numbers_without_times(sweep: Path) -> list[dict[str, str]]:
    return [
        {k: v for k, v in r.items() if not k.startswith("wall_time")} for r in read_summary(sweep)
    ]


def _sweeps(cli, tmp_path: Path, *args: str) -> tuple[Path, Path]:
    out = []
    for extra in (["sweep.vectorize=true"], []):
        folder = tmp_path / ("vectorized" if extra else "independent")
        proc = cli("sweep.py", "-m", *args, *extra, f"hydra.sweep.dir={folder}")
        assert proc.returncode == 0, proc.stderr[-3000:]
        out.append(folder)
    return out[0], out[1]


@pytest.mark.slow
def test_init_points_vectorized_are_bit_identical_to_independent_runs(cli, tmp_path):
    """The init study's CNN with dropout, 100 steps, at 3 init scales × 2 seeds: one job of six
    members, each bit for bit its independent run (batch 16 instead of the study's 50 keeps it
    affordable here)."""
    steps = [{"trainer.max_steps=200": "trainer.max_steps=100",
              "trainer.val_check_interval=100": "trainer.val_check_interval=50"}.get(a, a)
             for a in STEPS]  # fmt: skip
    vectorized, independent = _sweeps(
        cli, tmp_path, "model=cnn", "init.std=0.01,0.1,1.0", "seeds=[0,1]", "optimizer.lr=1e-4",
        "data.batch_size=16", *steps, "trainer.limit_val_batches=2", "trainer.limit_test_batches=2",
        "data.eval_batch_size=500", "trainer.accelerator=cpu")  # fmt: skip
    names = [f"init.std={v},seed={s}" for v in ("0.01", "0.1", "1.0") for s in (0, 1)]
    _assert_bit_identical(vectorized, independent, names)


def test_estimator_points_vectorized_equal_independent_runs(cli, tmp_path):
    """lenet_fc_bn2 with the EMA and the cumulative average, 2 seeds: one job; each member's
    training bit for bit its own run's, its running statistics its own estimator's."""
    vectorized, independent = _sweeps(
        cli, tmp_path, "model=lenet_fc_bn2", "bn=momentum,cumulative", "seeds=[0,1]", *FAST_STEPS,
        "trainer.accelerator=cpu")  # fmt: skip
    names = [f"bn={b},seed={s}" for b in ("momentum", "cumulative") for s in (0, 1)]
    # the running statistics' elementwise updates over S·C channels take the SIMD path where
    # one member's channels alone take the scalar one (see the test above)
    _assert_bit_identical(vectorized, independent, names, stats_rtol=1e-6)


def test_a_sweep_of_stacked_points_resumes_through_the_command_line(cli, tmp_path):
    """resume=<sweep folder> of a job of stacked points: the finished members are skipped, the
    unfinished one continues from its checkpoint to the numbers it had, one job again."""
    args = ["-m", "model=lenet_fc_bn2", "init=truncated_normal", "init.std=0.05,0.1", "sweep.vectorize=true",
            "seeds=[0,1]", *SHORT, "trainer.accelerator=cpu"]  # fmt: skip
    first = cli("sweep.py", *args)
    assert first.returncode == 0, first.stderr[-3000:]
    sweep = sweep_dir_of(tmp_path)
    done = (sweep / "0_init.std=0.05,seed=0" / "metrics.json").read_text()
    unfinished = sweep / "0_init.std=0.1,seed=1" / "metrics.json"
    before = json.loads(unfinished.read_text())
    unfinished.unlink()
    resumed = cli("sweep.py", *args, f"resume={sweep}")
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "job 1/1" in resumed.stdout
    assert (sweep / "0_init.std=0.05,seed=0" / "metrics.json").read_text() == done
    after = json.loads(unfinished.read_text())
    assert after["resumed_from_step"] == 20
    assert after["history"] == before["history"] and after["test/acc"] == before["test/acc"]
    assert sorted(p.parent.name for p in sweep.glob("*/metrics.json")) == [
        f"0_init.std={v},seed={s}" for v in ("0.05", "0.1") for s in (0, 1)
    ]


def test_a_vectorized_job_of_one_member_trains_as_its_run_alone(cli, tmp_path):
    """A point with one seed, vectorized: one member (its BN statistics' check said a bool where
    the job read a list per member, and every such job failed at its first validation)."""
    args = ["model=lenet_bn1", *SHORT, "seeds=[0]"]
    together = cli("sweep.py", *args, "sweep.vectorize=true", "hydra.sweep.dir=together")
    apart = cli("sweep.py", *args, "hydra.sweep.dir=apart")
    assert together.returncode == 0 and apart.returncode == 0, together.stderr[-2000:]
    (a,) = (tmp_path / "together").glob("*seed=0/metrics.json")
    (b,) = (tmp_path / "apart").glob("*/metrics.json")
    a, b = json.loads(a.read_text()), json.loads(b.read_text())
    assert a["history"]["val/loss"] == b["history"]["val/loss"] and a["test/acc"] == b["test/acc"]

"""The pieces of the small-batch, BN-position, PreciseBN and loss-landscape studies: the probes
against a float64 hand computation and leaving training bit-identical, the learning-rate
scaling rule and the sample budget of study=batch_size, bn=none as the network without BN."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from conftest import compose_cfg
from helpers import SHORT
from hydra.utils import instantiate
from torch import nn

from bnsweep.config.checks import ConfigError, validate
from bnsweep.config.resolvers import lr_for_batch
from bnsweep.nn.probes import probe_landscape

# ---------------------------------------------------------------- loss-landscape probes


def _softmax_ce_and_grad(W, b, x, y):
    """float64 by hand: mean cross-entropy of softmax(x Wᵀ + b) and its gradient in W, b."""
    z = x @ W.T + b
    z = z - z.max(1, keepdims=True)
    p = np.exp(z) / np.exp(z).sum(1, keepdims=True)
    n = len(y)
    loss = -np.log(p[np.arange(n), y]).mean()
    d = p.copy()
    d[np.arange(n), y] -= 1
    d /= n
    return loss, d.T @ x, d.sum(0)


def test_probe_values_equal_a_hand_computation_on_a_linear_model():
    rng = np.random.default_rng(0)
    W, b = rng.normal(size=(4, 3)), rng.normal(size=4)
    x, y = rng.normal(size=(6, 3)), np.array([0, 1, 2, 3, 1, 0])
    net = nn.Linear(3, 4).double()
    with torch.no_grad():
        net.weight.copy_(torch.from_numpy(W)), net.bias.copy_(torch.from_numpy(b))
    xt, yt = torch.from_numpy(x), torch.from_numpy(y)
    F.cross_entropy(net(xt), yt).backward()
    etas = [0.05, 0.2, 0.4, 1.5]
    found = probe_landscape(net, F.cross_entropy, xt, yt, [p.grad for p in net.parameters()], etas)

    _, gW, gb = _softmax_ce_and_grad(W, b, x, y)
    g_norm = math.sqrt((gW**2).sum() + (gb**2).sum())
    losses, changes, betas = [], [], []
    for eta in etas:
        loss, mW, mb = _softmax_ce_and_grad(W - eta * gW, b - eta * gb, x, y)
        change = math.sqrt(((mW - gW) ** 2).sum() + ((mb - gb) ** 2).sum())
        losses.append(loss), changes.append(change), betas.append(change / (eta * g_norm))
    expected = {"loss_min": min(losses), "loss_max": max(losses), "grad_change_min": min(changes),
                "grad_change_max": max(changes), "beta": max(betas), "grad_norm": g_norm}  # fmt: skip
    assert found == pytest.approx(expected, rel=1e-12)
    assert found["loss_max"] > found["loss_min"]  # the steps moved the loss
    # the network probed is a copy: the caller's weights and gradients are as they were
    assert torch.equal(net.weight.detach(), torch.from_numpy(W))


def test_probes_draw_the_training_steps_dropout_masks():
    """Given the RNG state the training forward began with, a probe at η → 0 reproduces the
    training gradient (the same dropout masks): its gradient change is 0 to rounding; without
    that state the masks differ and so does the gradient. The caller's RNG is untouched."""
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Dropout(0.5), nn.Linear(16, 3))
    x, y = torch.randn(32, 8), torch.randint(0, 3, (32,))
    state = torch.get_rng_state()
    F.cross_entropy(net(x), y).backward()
    grads = [p.grad for p in net.parameters()]
    after = torch.get_rng_state()
    same = probe_landscape(net, F.cross_entropy, x, y, grads, [1e-9], (state, None))
    assert same["grad_change_max"] < 1e-6 * same["grad_norm"]
    assert torch.equal(torch.get_rng_state(), after)
    other = probe_landscape(net, F.cross_entropy, x, y, grads, [1e-9])
    assert other["grad_change_max"] > 1e-2 * other["grad_norm"]
    assert torch.equal(torch.get_rng_state(), after)


@pytest.mark.parametrize("model", ["lenet_fc_bn2", "cnn"])  # the CNN: dropout
def test_probes_leave_training_bit_identical(make_cfg, tmp_path, model):
    from bnsweep.run.training import run

    records, states = {}, {}
    for name, extra in [("plain", []), ("probed", ["probes.every=3", "probes.steps=[0.5,2]"])]:
        cfg = make_cfg(f"run_dir={tmp_path / name}", f"model={model}", *SHORT, *extra)
        records[name] = run(cfg)
        states[name] = torch.load(tmp_path / name / "ckpt" / "last.ckpt", weights_only=True)
    plain, probed = records["plain"], records["probed"]
    for key, values in plain["history"].items():
        assert probed["history"][key] == values, key
    assert probed["test/acc"] == plain["test/acc"] and probed["test/loss"] == plain["test/loss"]
    a, b = states["plain"]["state_dict"], states["probed"]["state_dict"]
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert torch.equal(states["plain"]["bnsweep"]["rng"], states["probed"]["bnsweep"]["rng"])
    # the probe records: steps 0, 3, …, 18 of the 20, each a range with min <= max
    h = probed["history"]
    assert h["probe_step"] == list(range(0, 20, 3))
    for low, high in [("probe/loss_min", "probe/loss_max"),
                      ("probe/grad_change_min", "probe/grad_change_max")]:  # fmt: skip
        assert len(h[low]) == 7 and all(lo <= hi for lo, hi in zip(h[low], h[high]))
    assert all(beta > 0 for beta in h["probe/beta"])
    assert not any(k.startswith("probe") for k in plain["history"])


BAD = [
    (["probes.every=0"], "probes.every must be null (off) or a positive integer, got 0"),
    (["probes.every=5", "probes.steps=[]"],
     "probes.steps must be a non-empty list of numbers > 0, e.g. [0.05, 0.1, 0.2, 0.4], got []"),
    (["probes.every=5", "probes.steps=[0.1,-1]"],
     "probes.steps must be a non-empty list of numbers > 0, e.g. [0.05, 0.1, 0.2, 0.4], got [0.1, -1]"),
]  # fmt: skip


@pytest.mark.parametrize("args, message", BAD, ids=[" ".join(a) for a, _ in BAD])
def test_a_bad_probe_setting_is_one_line(make_cfg, args, message):
    with pytest.raises(ConfigError) as e:
        validate(make_cfg(*args))
    assert str(e.value) == message


@pytest.mark.parametrize("value", ["0", "-5", "abc"])
def test_a_bad_sample_budget_is_refused_in_one_line_before_any_folder(cli, tmp_path, value):
    proc = cli("sweep.py", "study=batch_size", f"samples={value}")
    shown = repr(value) if value == "abc" else value
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert (
        proc.stderr.strip()
        == f"error: samples must be a positive integer (the training samples of a run), got {shown}"
    )
    assert not (tmp_path / "outputs").exists() or not any((tmp_path / "outputs").rglob("*.json"))


def test_probes_with_vectorize_are_refused_in_one_line():
    from bnsweep.config.checks import check_vectorize

    cfg = compose_cfg("sweep", ["sweep.vectorize=true", "probes.every=10"])
    with pytest.raises(ConfigError) as e:
        check_vectorize(cfg)
    assert str(e.value) == ("probes.every=10 cannot be combined with sweep.vectorize=true; run "
                            "its seeds as separate jobs")  # fmt: skip


# ---------------------------------------------------------------- study=batch_size


@pytest.mark.parametrize("batch", [2, 8, 64, 128])
def test_batch_size_study_scales_the_lr_linearly_and_keeps_the_sample_budget(batch):
    """lr = 1e-3 · B / 64 (the documented linear rule from the batch-64 baseline) and
    max_steps = ⌈8192 / B⌉, in the config a run records and in the optimizer it builds."""
    cfg = compose_cfg("sweep", ["study=batch_size", f"data.batch_size={batch}", "bn=ghost"])
    assert cfg.optimizer.lr == pytest.approx(1e-3 * batch / 64, rel=1e-15)
    assert cfg.trainer.max_steps == -(-8192 // batch)
    assert cfg.trainer.max_steps * batch >= 8192 > (cfg.trainer.max_steps - 1) * batch
    opt = instantiate(cfg.optimizer)([nn.Parameter(torch.zeros(2))])
    assert opt.param_groups[0]["lr"] == pytest.approx(1e-3 * batch / 64, rel=1e-15)
    assert cfg.bn.ghost_batch_size == min(8, batch)  # ghost BN's k: 8, or the batch when smaller
    validate(cfg)


def test_lr_rules():
    assert lr_for_batch(0.1, 256, 64, "linear") == pytest.approx(0.4)
    assert lr_for_batch(0.1, 256, 64, "sqrt") == pytest.approx(0.2)
    assert lr_for_batch(0.1, 256, 64, "none") == 0.1
    with pytest.raises(
        ValueError,
        match=r"lr_for_batch's rule must be one of \['linear', 'sqrt', 'none'\], got 'cubic'",
    ):
        lr_for_batch(0.1, 256, 64, "cubic")


def test_bn_none_is_the_network_without_bn(make_cfg):
    """lenet_fc_bn2 bn=none: the same weights and outputs as lenet (no norm layer anywhere)."""
    from bnsweep.nn import norm_layers
    from bnsweep.run.training import build_net

    none = build_net(make_cfg("model=lenet_fc_bn2", "bn=none"))
    plain = build_net(make_cfg("model=lenet"))
    assert not norm_layers(none)
    a, b = none.state_dict(), plain.state_dict()
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    x = torch.rand(5, 1, 28, 28)
    assert torch.equal(none(x), plain(x))


@pytest.mark.parametrize("study", ["batch_size", "bn_position", "precise_bn", "santurkar",
                                   "batch_size_full", "bn_position_full", "precise_bn_full",
                                   "santurkar_full"])  # fmt: skip
def test_every_new_study_composes_and_validates(study):
    """Each point of the preset's grid is a valid config (the sweep would run it)."""
    import itertools

    from conftest import CONF
    from omegaconf import OmegaConf

    preset = OmegaConf.load(CONF / "study" / f"{study}.yaml")
    if "hydra" not in preset:  # a _full preset: its base's grid
        preset = OmegaConf.load(CONF / "study" / f"{preset.defaults[0]}.yaml")
    params = {k: str(v).split(",") for k, v in preset.hydra.sweeper.params.items()}
    for values in itertools.product(*params.values()):
        point = compose_cfg(
            "sweep", [f"study={study}", *(f"{k}={v}" for k, v in zip(params, values))]
        )
        validate(point)


def test_probe_and_report_refusals_through_the_command_line_leave_no_folder(cli, tmp_path):
    from helpers import refused_with

    for script, args, message in [
        ("train.py", ["probes.every=0"], f"error: {BAD[0][1]}"),
        ("sweep.py", ["sweep.vectorize=true", "probes.every=10", *SHORT],
         "error: probes.every=10 cannot be combined with sweep.vectorize=true; run its seeds as separate jobs"),
        ("sweep.py", ["report.final_y=loss", *SHORT],
         "error: report.final_y must be one of ['acc', 'error'], got 'loss'"),
    ]:  # fmt: skip
        proc = cli(script, *args, timeout=120)
        assert refused_with(proc, message), (script, args, proc.returncode, proc.stderr[-2000:])
        outputs = tmp_path / "outputs"
        assert not outputs.exists() or not any(p.is_file() for p in outputs.rglob("*")), list(
            outputs.rglob("*")
        )


def test_a_swept_key_at_its_neutral_value_is_a_point_of_its_own(tmp_path):
    """model.bn_position=pre and model.activation=sigmoid (the defaults) are left out of a
    run's comparable config (old folders resume); the report must still tell pre from post and
    sigmoid from relu, not merge them into one point (found running study=bn_position)."""
    from bnsweep.files import write_json
    from bnsweep.report.runs import group_by_point, load_run_folders
    from bnsweep.run.folders import RUN_CONFIG, config_snapshot, write_hydra_files

    folders = []
    for i, (act, pos, seed) in enumerate([(a, p, s) for a in ("sigmoid", "relu")
                                          for p in ("pre", "post") for s in (0, 1)]):  # fmt: skip
        over = [f"model.activation={act}", f"model.bn_position={pos}", f"seed={seed}"]
        folder = tmp_path / f"{i}_run"
        folder.mkdir()
        cfg = compose_cfg("train", ["model=lenet_fc_bn2", f"run_dir={folder}", *over])
        write_json(folder / RUN_CONFIG, config_snapshot(cfg))
        write_hydra_files(folder, cfg)
        write_json(folder / "metrics.json", {"schema": 1, "status": "finished", "seed": seed,
                   "choices": {"model": "lenet_fc_bn2"}, "overrides": over})  # fmt: skip
        folders.append(folder)
    groups = group_by_point(load_run_folders(folders))
    assert sorted(groups) == sorted(
        (("model.activation", a), ("model.bn_position", p))
        for a in ("sigmoid", "relu") for p in ("pre", "post")
    )  # fmt: skip
    assert all(len(members) == 2 for members in groups.values())


def test_a_study_presets_report_settings_take_effect():
    """A preset's report.* keys (init_scale's y-range, batch_size's baseline and error plot)
    were overridden by conf/sweep.yaml's defaults (its _self_ came after the study)."""
    assert compose_cfg("sweep", ["study=init_scale"]).report.val_acc_ylim == [0.9, 1.0]
    report = compose_cfg("sweep", ["study=batch_size"]).report
    assert report.baseline == "bn=momentum,data.batch_size=64" and report.final_y == "error"
    assert compose_cfg("sweep", ["study=batch_size_full"]).seeds == [0, 1, 2, 3, 4]
    # the command line still wins over the preset
    assert (
        compose_cfg("sweep", ["study=init_scale", "report.val_acc_ylim=null"]).report.val_acc_ylim
        is None
    )

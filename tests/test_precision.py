"""Mixed precision: our BN layer under autocast behaves as torch's BN does (statistics in
float32, running statistics float32, output in the input's dtype); any Trainer argument is a
trainer.KEY; a bf16-mixed run trains as a 32-true one does, to within a point."""

from __future__ import annotations

import copy
import json

import pytest
import torch
from helpers import SHORT, refused_with
from torch import nn

from bnsweep.nn import (
    make_batch_renorm,
    make_batchnorm,
    make_group_norm,
    make_layer_norm,
    make_no_norm,
    make_torch_batchnorm,
)


@pytest.mark.parametrize("spatial", [True, False])
@pytest.mark.parametrize("estimator", ["momentum", "window", "cumulative"])
def test_our_bn_under_bf16_autocast_equals_torchs(spatial, estimator):
    torch.manual_seed(0)
    affine = nn.Conv2d(3, 8, 3) if spatial else nn.Linear(5, 8)
    x = torch.randn(16, 3, 8, 8) if spatial else torch.randn(16, 5)
    results = []
    for layer in ((nn.BatchNorm2d if spatial else nn.BatchNorm1d)(8),
                  make_batchnorm(8, spatial, estimator=estimator)):  # fmt: skip
        a, xx = copy.deepcopy(affine), x.clone().requires_grad_(True)
        for _ in range(2):  # two steps: the running statistics move twice
            with torch.autocast("cpu", dtype=torch.bfloat16):
                y = layer(a(xx))
            (y.float() ** 2).mean().backward()
        results.append(
            (y, xx.grad, layer.weight.grad, layer.bias.grad, layer.running_mean, layer.running_var)
        )
    (ty, tdx, tg, tb, tm, tv), (oy, odx, og, ob, om, ov) = results
    assert oy.dtype == ty.dtype == torch.bfloat16  # the output in the input's dtype
    assert om.dtype == ov.dtype == torch.float32  # the running statistics stay float32
    torch.testing.assert_close(oy.float(), ty.float(), rtol=1.6e-2, atol=1e-2)  # bf16's 8 bits
    for ours, theirs in ((odx, tdx), (og, tg), (ob, tb)):
        torch.testing.assert_close(ours, theirs, rtol=1e-2, atol=1e-3)
    if estimator == "momentum":  # torch's estimator: the same running statistics
        torch.testing.assert_close(om, tm, rtol=1e-4, atol=1e-6)
        torch.testing.assert_close(ov, tv, rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("factory", [make_batchnorm, make_batch_renorm, make_group_norm,
                                     make_layer_norm, make_no_norm, make_torch_batchnorm],
                         ids=lambda f: f.__name__)  # fmt: skip
def test_every_bn_option_trains_under_bf16_autocast(factory):
    layer = factory(8, True)
    x = torch.randn(16, 8, 6, 6, requires_grad=True)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        y = layer(x.to(torch.bfloat16))
    y.float().sum().backward()
    assert torch.isfinite(y.float()).all() and torch.isfinite(x.grad).all()
    for name in ("running_mean", "running_var"):
        if getattr(layer, name, None) is not None:
            assert getattr(layer, name).dtype == torch.float32


def test_any_trainer_argument_is_a_trainer_key(cli, tmp_path):
    proc = cli(
        "train.py", "trainer.precision=bf16-mixed", "trainer.gradient_clip_val=1.0", "--cfg", "job"
    )
    assert proc.returncode == 0, proc.stderr
    assert (
        "  precision: bf16-mixed\n" in proc.stdout and "  gradient_clip_val: 1.0\n" in proc.stdout
    )
    assert refused_with(cli("train.py", "trainer.precison=bf16-mixed"),
                        "error: trainer.precison is not an argument of pytorch_lightning.Trainer; "
                        "the closest: precision")  # fmt: skip
    assert refused_with(cli("train.py", "trainer.precision=bf16-true"),
                        "error: trainer.precision must be one of ['32-true', '64-true', 'bf16-mixed', "
                        "'16-mixed', 32, 64, '32', '64'], got 'bf16-true'")  # fmt: skip
    if not torch.cuda.is_available():
        assert refused_with(cli("train.py", "trainer.precision=16-mixed"),
                            "error: trainer.precision=16-mixed needs a CUDA GPU (float16 autocast and its "
                            "gradient scaler); on the CPU: trainer.precision=bf16-mixed")  # fmt: skip
    dry = cli("sweep.py", "trainer.precision=bf16-mixed,32-true", "seeds=[0]", "--dry-run")
    assert dry.returncode == 0, dry.stderr
    assert "  0_trainer.precision=bf16-mixed " in dry.stdout  # the folder: no Hydra '++'
    train = tmp_path / "outputs" / "train"
    assert not train.exists() or not any(train.iterdir())  # no run folder from the refusals


def test_a_bf16_mixed_run_trains_as_a_32_true_one(cli, tmp_path):
    """lenet_fc_bn2, 200 steps, with the dashboards, percentiles, PreciseBN and probes on:
    bf16-mixed ends within 1 point of 32-true's accuracy."""
    steps = ["model=lenet_fc_bn2", "data.train_size=6000", "trainer.max_steps=200", "trainer.max_epochs=null",
             "trainer.val_check_interval=100", "trainer.check_val_every_n_epoch=null",
             "trainer.limit_val_batches=2", "trainer.limit_test_batches=2", "bn.precise_batches=2",
             "probes.every=100", "percentiles={layer:fc2,unit:0}"]  # fmt: skip
    for precision in ("32-true", "bf16-mixed"):
        proc = cli(
            "train.py", *steps, f"trainer.precision={precision}", f"hydra.run.dir={precision}"
        )
        assert proc.returncode == 0, proc.stderr
    full, mixed = (
        json.loads((tmp_path / p / "metrics.json").read_text()) for p in ("32-true", "bf16-mixed")
    )
    assert not mixed["diverged"] and mixed["test/acc"] > 0.9
    assert abs(mixed["test/acc"] - full["test/acc"]) <= 0.01, (mixed["test/acc"], full["test/acc"])
    assert abs(mixed["val/acc"] - full["val/acc"]) <= 0.01
    assert len(mixed["history"]["probe_step"]) == 2 and mixed["history"]["val/acc_precise"]


def test_a_vectorized_job_in_bf16_mixed(cli, tmp_path):
    """The stacked members train under autocast too, to within a point of 32-true's."""
    acc = {}
    for precision in ("bf16-mixed", "32-true"):
        proc = cli("sweep.py", "model=lenet_fc_bn2", f"trainer.precision={precision}", "sweep.vectorize=true",
                   "seeds=[0,1]", f"hydra.sweep.dir={precision}", *SHORT)  # fmt: skip
        assert proc.returncode == 0, proc.stderr
        records = [
            json.loads(p.read_text()) for p in sorted((tmp_path / precision).rglob("metrics.json"))
        ]
        assert len(records) == 2 and not any(r["diverged"] for r in records)
        acc[precision] = [r["val/acc"] for r in records]
    assert all(abs(a - b) <= 0.01 for a, b in zip(acc["bf16-mixed"], acc["32-true"])), acc

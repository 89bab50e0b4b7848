"""The CUDA paths: our BN layer, the stacked (vectorized) network and whole runs on a GPU.

Skipped where torch sees no CUDA GPU (CI has none); run on a GPU machine with
``pytest tests/test_gpu.py``. The CPU half of every claim here is tested in the other files.
"""

from __future__ import annotations

from functools import partial

import pytest
import torch
import torch.nn.functional as F
from stacking import (
    accuracy_on_test_set,
    assert_members_evaluate_as_alone,
    killed_at_step,
    plain_module,
    train_alone_and_stacked,
)

from bnsweep.nn import InitCNN, LeNet, make_batchnorm, make_torch_batchnorm
from bnsweep.nn.stacked import StackedDropout, StackedNet

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")

CUDA = torch.device("cuda")


def _lenets(norm, seeds=(0, 1, 2)):
    nets = []
    for seed in seeds:
        torch.manual_seed(seed)
        nets.append(LeNet(bn=["conv1", "conv2", "fc1", "fc2"], norm=norm).to(CUDA))
    return nets


NORMS = {
    "momentum": partial(make_batchnorm, estimator="momentum"),
    "window": partial(make_batchnorm, estimator="window", window=3),
    "cumulative": partial(make_batchnorm, estimator="cumulative"),
    "torch": make_torch_batchnorm,
}


@pytest.mark.parametrize("fused", [None, False], ids=["fused-default", "per-member"])
@pytest.mark.parametrize("bn", list(NORMS))
def test_stacked_lenet_on_cuda_trains_each_member_as_alone(exact_fp32, bn, fused):
    """On the GPU (fused kernels by default there): five SGD steps, then eval. Each member's
    losses, logits, weights and BN statistics equal its own network's trained alone on the GPU,
    to float32 rounding. (SGD, not Adam: the gradient of a bias before BN is rounding noise,
    which Adam scales up to a step of size lr whatever the kernels, and the eval outputs
    follow those biases through the running means.)"""
    nets = _lenets(NORMS[bn])
    stacked = StackedNet(_lenets(NORMS[bn]), fused=fused)
    sgd = partial(torch.optim.SGD, lr=0.05, momentum=0.9)
    data = train_alone_and_stacked(nets, stacked, sgd, batch=32, device=CUDA, atol=2e-5)
    x = torch.rand(64, 1, 28, 28, generator=data, device=CUDA)
    assert_members_evaluate_as_alone(nets, stacked, x, out_atol=1e-4)


@pytest.mark.parametrize("fused", [None, False], ids=["fused-default", "per-member"])
def test_members_with_different_estimators_on_cuda_each_estimate_as_alone(exact_fp32, fused):
    """Stacked points of a vectorized sweep on the GPU: EMA momentum 0.1, 0.01 and the cumulative
    average in one stacked layer, each member's statistics its own estimator's (to rounding)."""
    from bnsweep.nn.stacked import MemberEstimators

    norms = [partial(make_batchnorm, momentum=0.1), partial(make_batchnorm, momentum=0.01),
             partial(make_batchnorm, estimator="cumulative")]  # fmt: skip

    def nets():
        out = []
        for norm in norms:
            torch.manual_seed(0)
            out.append(LeNet(bn=["conv1", "conv2", "fc1", "fc2"], norm=norm).to(CUDA))
        return out

    alone, stacked = nets(), StackedNet(nets(), fused=fused)
    assert isinstance(stacked.net.fc1.bn.stats, MemberEstimators)
    sgd = partial(torch.optim.SGD, lr=0.05, momentum=0.9)
    data = train_alone_and_stacked(alone, stacked, sgd, batch=32, device=CUDA, atol=2e-5)
    x = torch.rand(64, 1, 28, 28, generator=data, device=CUDA)
    assert_members_evaluate_as_alone(alone, stacked, x, out_atol=1e-4)


def test_dropout_on_cuda_draws_each_members_mask_from_its_own_generator():
    x = torch.randn(256, 3 * 40, device=CUDA)
    gens = [torch.Generator(CUDA).manual_seed(s) for s in (0, 1, 2)]
    y = StackedDropout(0.5, gens)(x)
    blocks = y.view(256, 3, 40)
    for m, seed in enumerate((0, 1, 2)):
        g = torch.Generator(CUDA).manual_seed(seed)
        keep = torch.empty(256, 40, device=CUDA).bernoulli_(0.5, generator=g)
        assert torch.equal(blocks[:, m], x.view(256, 3, 40)[:, m] * keep * 2)
    kept = (blocks != 0).float().mean((0, 2))
    assert ((kept - 0.5).abs() < 0.02).all()  # 10,240 draws each: 5 standard deviations
    assert not torch.equal(blocks[:, 0] != 0, blocks[:, 1] != 0)  # the members' own masks


def test_stacked_cnn_with_dropout_on_cuda_is_deterministic():
    """Same seeds and generator states: the same stacked training on the GPU, twice."""

    def train() -> torch.Tensor:
        nets = []
        for seed in (0, 1):
            torch.manual_seed(seed)
            nets.append(InitCNN(dropout=0.5))
        stacked = StackedNet(nets, [torch.Generator(CUDA).manual_seed(s) for s in (0, 1)])
        stacked = stacked.to(CUDA)
        opt = torch.optim.Adam(stacked.parameters(), 1e-4)
        data = torch.Generator(CUDA).manual_seed(5)
        for _ in range(5):
            x = torch.rand(16, 2, 28, 28, generator=data, device=CUDA)
            y = torch.randint(0, 10, (16, 2), generator=data, device=CUDA)
            opt.zero_grad()
            logits = stacked(x)
            torch.stack([F.cross_entropy(logits[:, m], y[:, m]) for m in range(2)]).sum().backward()
            opt.step()
        return torch.cat([p.detach().flatten() for p in stacked.parameters()])

    first, second = train(), train()
    torch.testing.assert_close(first, second, rtol=0, atol=1e-6)


# ---------------------------------------------------------------------------------------------
# whole runs on the GPU, real MNIST


def _cfg(tmp_path, mnist_dir, name, *overrides):
    from conftest import compose_cfg

    base = [f"run_dir={tmp_path / name}", f"data.root={mnist_dir}", "data.download=false",
            "trainer.accelerator=gpu", "logger=csv"]  # fmt: skip
    return compose_cfg("sweep", base + list(overrides))


def test_a_run_on_the_gpu_trains_lenet_fc_bn2_on_real_mnist(tmp_path, mnist_dir):
    from bnsweep.run.training import run

    result = run(_cfg(tmp_path, mnist_dir, "run", "seed=0", "model=lenet_fc_bn2",
                      "trainer.max_epochs=1"))  # fmt: skip
    assert result["device"] == "cuda:0"
    assert result["test/acc"] >= 0.97  # one epoch of LeNet+BN on MNIST
    ckpt = torch.load(tmp_path / "run" / "ckpt" / "last.ckpt", weights_only=True,
                      map_location="cpu")  # fmt: skip
    assert all(v.device.type == "cpu" for v in ckpt["state_dict"].values())


def test_vectorized_members_on_the_gpu_match_their_independent_gpu_runs(
    exact_fp32, tmp_path, mnist_dir
):
    """Three seeds stacked on the GPU (grouped conv, batched matmul) against each seed's own
    GPU run, 200 steps: the same data order and initialisation, so the same results up to the
    rounding of other kernels (in full float32: with TF32 the two drift apart faster); and the
    member's checkpoint gives its test accuracy in a plain network on the CPU."""
    from bnsweep.run.training import run
    from bnsweep.sweep.vectorize import run_members

    # SGD: Adam would turn the rounding-noise gradients of the biases before BN into steps of
    # size lr that differ between kernels (training cancels them, eval sees them through the
    # lagging running means; with Adam, measured here: 0.3-1.2 % apart in accuracy at step 200)
    steps = ["model=lenet_fc_bn2", "optimizer=sgd", "optimizer.lr=0.05", "trainer.max_epochs=null",
             "trainer.max_steps=200", "trainer.val_check_interval=100",
             "trainer.check_val_every_n_epoch=null"]  # fmt: skip
    members = run_members(_cfg(tmp_path, mnist_dir, "job", "seeds=[0,1,2]", *steps))
    assert len({m["test/acc"] for m in members}) == 3  # three seeds, not one run three times
    alones = [run(_cfg(tmp_path, mnist_dir, f"alone{s}", f"seed={s}", *steps)) for s in (0, 1, 2)]

    def losses(r: dict) -> list[float]:
        return [*r["history"]["val/loss"], r["test/loss"]]

    for m, (member, alone) in enumerate(zip(members, alones)):
        assert member["device"] == alone["device"] == "cuda:0"
        assert member["steps"] == alone["steps"] == 200
        h, a = member["history"], alone["history"]
        assert h["val_step"] == a["val_step"] == [100, 200]
        # 5,000 validation and 10,000 test images: at most 10 answers apart
        assert h["val/acc"] == pytest.approx(a["val/acc"], abs=0.002)
        assert member["test/acc"] == pytest.approx(alone["test/acc"], abs=0.001)
        assert losses(member) == pytest.approx(losses(alone), rel=2e-3)
        # and each member is nearer its own run than any other seed's
        gaps = [sum(abs(x - y) for x, y in zip(losses(member), losses(o))) for o in alones]
        assert min(range(3), key=gaps.__getitem__) == m, gaps
        assert member["test/acc"] >= 0.85  # it learned: 10 % is chance
    ckpt = torch.load(tmp_path / "job,seed=1" / "ckpt" / "last.ckpt", weights_only=True,
                      map_location="cpu")  # fmt: skip
    assert ckpt["global_step"] == 200
    module = plain_module(_cfg(tmp_path, mnist_dir, "plain", "seed=1", *steps), ckpt["state_dict"])
    assert accuracy_on_test_set(module, mnist_dir) == pytest.approx(
        members[1]["test/acc"], abs=3e-4
    )  # ≤ 3 of 10,000


@pytest.mark.parametrize("vectorized", [False, True], ids=["run", "vectorized"])
def test_an_interrupted_gpu_run_resumes_mid_epoch(tmp_path, mnist_dir, monkeypatch, vectorized):
    """Killed at step 25 of a 40-step epoch, resumed from the step-20 checkpoint on the GPU: the
    epoch sums read from the checkpoint (on the CPU) join the GPU's, and the run reports what
    the uninterrupted one reports (CNN with BN and dropout: the CUDA generators' states too)."""
    from bnsweep.run.lit import LitClassifier
    from bnsweep.run.training import run
    from bnsweep.sweep.members import LitMembers
    from bnsweep.sweep.vectorize import run_members

    overrides = ["model=cnn_bn", "bn=window", "data.batch_size=16", "data.train_size=640",
                 "trainer.max_epochs=2", "trainer.val_check_interval=10",
                 "trainer.limit_val_batches=2", "trainer.limit_test_batches=2",
                 "trainer.deterministic=true"]  # fmt: skip
    seeds = ["seeds=[0,1]"] if vectorized else ["seed=0"]

    def go(name, *extra):
        cfg = _cfg(tmp_path, mnist_dir, name, *seeds, *overrides, *extra)
        return run_members(cfg) if vectorized else [run(cfg)]

    whole = go("whole")
    with killed_at_step(monkeypatch, LitMembers if vectorized else LitClassifier, 25):
        go("job")
    resumed = go("job", "resume=true")
    for r, w in zip(resumed, whole):
        assert r["resumed_from_step"] == 20 and r["device"] == "cuda:0"
        assert (
            r["history"]["val_step"] == w["history"]["val_step"] == [10, 20, 30, 40, 50, 60, 70, 80]
        )
        for key in ("train/loss", "val/loss", "val/acc"):
            assert r["history"][key] == pytest.approx(w["history"][key], abs=1e-5), key
        assert r["test/acc"] == pytest.approx(w["test/acc"], abs=1e-6)

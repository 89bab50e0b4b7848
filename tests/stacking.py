"""Helpers of the stacked-network tests (tests/test_vectorize.py and tests/test_gpu.py): a few
steps alone and stacked, evaluation compared member by member, a member checkpoint read as a
plain run's, a job killed at a chosen step."""

from __future__ import annotations

from contextlib import contextmanager
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from bnsweep.nn.stacked import stack_inputs


def train_alone_and_stacked(nets, stacked, optimizer, batch: int, device="cpu", atol=1e-5):
    """Five steps of each network alone and of the stacked one on the same batches: each
    step's member losses equal the losses alone. Returns the data generator, for more draws."""
    opts = [optimizer(n.parameters()) for n in nets]
    opt = optimizer(stacked.parameters())
    data = torch.Generator(device).manual_seed(9)
    for _ in range(5):
        xs = [torch.rand(batch, 1, 28, 28, generator=data, device=device) for _ in nets]
        ys = [torch.randint(0, 10, (batch,), generator=data, device=device) for _ in nets]
        alone = []
        for net, o, x, y in zip(nets, opts, xs, ys):
            o.zero_grad()
            loss = F.cross_entropy(net(x), y)
            loss.backward()
            o.step()
            alone.append(loss.detach())
        opt.zero_grad()
        logits = stacked(stack_inputs(xs))
        losses = torch.stack([F.cross_entropy(logits[:, m], y) for m, y in enumerate(ys)])
        losses.sum().backward()
        opt.step()
        torch.testing.assert_close(losses.detach(), torch.stack(alone), rtol=0, atol=atol)
    return data


def assert_members_evaluate_as_alone(nets, stacked, x, out_atol: float) -> None:
    """In eval mode each member's logits, weights and BN statistics equal its own network's."""
    for net in [stacked, *nets]:
        net.eval()
    with torch.no_grad():
        out = stacked(stack_inputs([x] * len(nets)))
        for m, net in enumerate(nets):
            torch.testing.assert_close(out[:, m], net(x), rtol=1e-4, atol=out_atol)
            member = stacked.member_state_dict(m)
            for key, value in net.state_dict().items():
                if key.endswith("affine.bias"):
                    continue  # a bias under BN: its gradient is rounding noise that Adam scales up
                torch.testing.assert_close(member[key], value, rtol=1e-4, atol=1e-5, msg=key)


def plain_module(cfg, state_dict: dict):
    """cfg's plain LightningModule holding ``state_dict`` (a member checkpoint read as an
    independent run's), in eval mode on the CPU."""
    from bnsweep.run.training import build

    module, _ = build(cfg)
    module.load_state_dict(state_dict)
    return module.eval()


def accuracy_on_test_set(module, mnist_dir: Path) -> float:
    """The module's accuracy on all 10,000 MNIST test images."""
    from bnsweep.data.modules import MNISTDataModule

    dm = MNISTDataModule(root=str(mnist_dir), download=False)
    dm.setup()
    with torch.no_grad():
        acc = (module(dm.tensors["x_test"]).argmax(1) == dm.tensors["y_test"]).float().mean()
    return float(acc)


@contextmanager
def killed_at_step(monkeypatch, module: type, step: int):
    """Within: ``module.training_step`` raises at global step ``step``, as a killed job stops;
    the block must end that way. The real step is put back after."""
    original = module.training_step

    def crash(self, batch, batch_idx):
        if self.global_step == step:
            raise RuntimeError("killed")
        return original(self, batch, batch_idx)

    monkeypatch.setattr(module, "training_step", crash)
    try:
        with pytest.raises(RuntimeError, match="killed"):
            yield
    finally:
        monkeypatch.setattr(module, "training_step", original)

"""The paper's Figure 1 (study=paper_fig1): percentiles of a sigmoid input over training,
checked against torch.quantile on activations recomputed by hand, and the three-panel figure."""

from __future__ import annotations

import json

import matplotlib.image
import pytest
import torch
from conftest import compose_cfg
from helpers import read_summary, sweep_dir_of
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from bnsweep.data.modules import MNISTDataModule
from bnsweep.report.summary import DRIFT_SKIP
from bnsweep.run.training import build, run

Q = [15.0, 50.0, 85.0]
KEYS = [f"preact/fc3_u7/p{q:g}" for q in Q]


def _fc3_input_by_hand(net: torch.nn.Module, x: torch.Tensor, unit: int) -> torch.Tensor:
    """The input of fc3's sigmoid, layer by layer, without hooks: affine, [BN in eval], sigmoid."""
    h = x.flatten(1)
    for name in ("fc1", "fc2", "fc3"):
        block = getattr(net, name)
        h = block.affine(h)
        if hasattr(block, "bn"):
            bn = block.bn
            h = (h - bn.running_mean) / torch.sqrt(bn.running_var + bn.eps) * bn.weight + bn.bias
        if name == "fc3":
            return h[:, unit]
        h = torch.sigmoid(h)
    raise AssertionError("unreachable")


@pytest.mark.parametrize("model", ["mlp", "mlp_bn"])
def test_percentiles_equal_torch_quantile_of_the_recomputed_activations(make_cfg, model):
    cfg = make_cfg(
        f"model={model}",
        "init=normal",
        "optimizer=sgd",
        "optimizer.momentum=0",
        "optimizer.lr=0.5",
        "data.batch_size=60",
        "data.val_size=0",  # validate on the test set, as the paper
        "trainer.max_epochs=null",
        "trainer.max_steps=200",
        "trainer.val_check_interval=100",
        "trainer.check_val_every_n_epoch=null",
        "percentiles={layer:fc3,unit:7,q:[15,50,85]}",
    )
    metrics = run(cfg)
    h = metrics["history"]
    assert h["val_step"] == [100, 200]
    assert all(len(h[k]) == 2 for k in KEYS)
    # the final weights (last.ckpt is written after the last validation)
    module, _ = build(cfg)
    state = torch.load(f"{cfg.run_dir}/ckpt/last.ckpt", weights_only=True)["state_dict"]
    module.load_state_dict(state)
    net = module.net.eval()
    dm = MNISTDataModule(root=cfg.data.root, download=False, val_size=0, batch_size=60)
    dm.setup()
    with torch.no_grad():
        values = _fc3_input_by_hand(net, dm.tensors["x_test"], 7)
    assert len(values) == 10_000  # the whole test set
    expected = torch.quantile(values, torch.tensor(Q) / 100).tolist()
    assert [h[k][-1] for k in KEYS] == pytest.approx(expected, abs=1e-5)
    # the validation accuracy is the test set's: the same number as the final test
    assert h["val/acc"][-1] == pytest.approx(metrics["test/acc"])
    events = EventAccumulator(cfg.run_dir)
    events.Reload()
    logged = {k: [e.value for e in events.Scalars(k)] for k in KEYS}
    assert all(logged[k] == pytest.approx(h[k], abs=1e-6) for k in KEYS)


def test_paper_fig1_preset_is_the_paper_setup(tmp_path):
    cfg = compose_cfg("sweep", ["study=paper_fig1", f"run_dir={tmp_path}"])
    assert cfg.model._target_ == "bnsweep.nn.MLP" and list(cfg.model.hidden) == [100, 100, 100]
    assert cfg.data.batch_size == 60 and cfg.data.val_size == 0
    assert cfg.trainer.max_steps == 50_000 and cfg.trainer.val_check_interval == 500
    assert cfg.init._target_ == "bnsweep.nn.init.normal"
    assert dict(cfg.percentiles) == {"layer": "fc3", "unit": 0, "q": [15, 50, 85]}
    with_bn = compose_cfg("sweep", ["study=paper_fig1", "model=mlp_bn", f"run_dir={tmp_path}"])
    assert list(with_bn.model.bn) == ["fc1", "fc2", "fc3"]


def test_paper_fig1_shortened_writes_the_series_and_the_three_panel_figure(cli, tmp_path):
    proc = cli(
        "sweep.py",
        "study=paper_fig1",
        "seeds=[0,1]",
        "trainer.max_steps=300",
        "trainer.val_check_interval=100",
        timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    sweep = sweep_dir_of(tmp_path)
    runs = sorted(sweep.glob("*/metrics.json"))
    assert len(runs) == 4
    histories = {}
    for path in runs:
        m = json.loads(path.read_text())
        h = m["history"]
        keys = [f"preact/fc3_u0/p{q:g}" for q in Q]
        assert h["val_step"] == [100, 200, 300]
        assert all(len(h[k]) == 3 for k in keys)
        assert all(lo <= mid <= hi for lo, mid, hi in zip(*(h[k] for k in keys)))
        histories.setdefault(m["choices"]["model"], []).append(h)
    rows = {r["model"]: r for r in read_summary(sweep)}
    assert set(rows) == {"mlp", "mlp_bn"}
    for model, hs in histories.items():
        # the drift column: max - min of the median after the first DRIFT_SKIP of training
        drifts = []
        for h in hs:
            kept = [
                v for s, v in zip(h["val_step"], h["preact/fc3_u0/p50"]) if s >= DRIFT_SKIP * 300
            ]
            drifts.append(max(kept) - min(kept))
        assert float(rows[model]["fc3_u0_p50_drift_mean"]) == pytest.approx(
            sum(drifts) / len(drifts), abs=1e-9
        )
    assert "fc3_u0_p50 drift" in (sweep / "summary.md").read_text()
    image = matplotlib.image.imread(sweep / "accuracy_and_percentiles.png")
    height, width = image.shape[:2]
    assert width > 2.5 * height  # three panels side by side


def test_sanity_check_batches_do_not_enter_the_percentiles(make_cfg, tmp_path):
    quick = ["model=mlp_bn", "logger=none", "data.val_size=0", "trainer.max_epochs=null",
             "trainer.max_steps=60", "trainer.val_check_interval=30",
             "trainer.check_val_every_n_epoch=null", "percentiles={layer:fc3,unit:7}"]  # fmt: skip
    plain = run(make_cfg(*quick, f"run_dir={tmp_path / 'a'}"))["history"]
    checked = run(make_cfg(*quick, "trainer.num_sanity_val_steps=2", f"run_dir={tmp_path / 'b'}"))
    assert checked["history"]["val_step"] == [30, 60]
    assert all(checked["history"][k] == plain[k] for k in KEYS)

"""FlowMatchingModule pieces (EMA, batch forms, errors) and the CLI's other subcommands."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

pytest.importorskip("lightning")

from models import MLPVelocity  # noqa: E402
from torchuot.couplings import PlanSampler  # noqa: E402
from training.cli import build_cli  # noqa: E402
from training.module import FlowMatchingModule, split_batch  # noqa: E402

CONFIGS = Path(__file__).resolve().parents[2] / "training" / "configs"


def test_ema_follows_the_weights():
    torch.manual_seed(0)
    m = FlowMatchingModule(MLPVelocity(dim=2, hidden=8, depth=1), ema_decay=0.75)
    before = [p.detach().clone() for p in m.ema.parameters()]
    with torch.no_grad():
        for p in m.net.parameters():
            p.add_(1.0)
    m.on_train_batch_end(None, None, 0)
    for pe, p0, p in zip(m.ema.parameters(), before, m.net.parameters(), strict=True):
        torch.testing.assert_close(pe, 0.75 * p0 + 0.25 * p)
        assert not pe.requires_grad
    assert m.eval_net is m.ema


def test_split_batch_forms():
    x0, x1 = torch.randn(4, 2), torch.randn(4, 2)
    out = split_batch({"x0": x0, "x1": x1, "y0": torch.zeros(4)})
    assert out[0] is x0 and out[1] is x1 and out[3] is None
    z, x, y0, y1 = split_batch((x1, torch.arange(4)))  # generation: noise source
    assert z.shape == x1.shape and x is x1 and y0 is None and torch.equal(y1, torch.arange(4))
    with pytest.raises(KeyError, match="needs keys 'x0' and 'x1'"):
        split_batch({"x": x0})
    with pytest.raises(TypeError, match="batch must be a dict"):
        split_batch(x0)


def test_training_step_uses_the_coupling():
    torch.manual_seed(0)
    m = FlowMatchingModule(MLPVelocity(dim=2, hidden=8, depth=1), sampler=PlanSampler("ot"))
    batch = {"x0": torch.randn(16, 2), "x1": torch.randn(16, 2) + 3}
    loss = m.training_step(batch, 0)  # no trainer: self.log only warns
    assert loss.ndim == 0 and float(loss) > 0
    loss.backward()


def test_module_argument_errors():
    net = MLPVelocity(dim=2)
    with pytest.raises(TypeError, match="net must be an nn.Module"):
        FlowMatchingModule(lambda t, x: x)
    with pytest.raises(ValueError, match="sigma must be non-negative"):
        FlowMatchingModule(net, sigma=-0.1)
    with pytest.raises(ValueError, match="ema_decay must lie in"):
        FlowMatchingModule(net, ema_decay=1.0)
    with pytest.raises(ValueError, match="ode_method must be one of"):
        FlowMatchingModule(net, ode_method="rk45")


def test_validate_test_predict_subcommands(tmp_path: Path):
    base = [
        "--config",
        str(CONFIGS / "toy2d.yaml"),
        "--trainer.default_root_dir",
        str(tmp_path),
        "--trainer.enable_progress_bar",
        "false",
        "--model.ode_steps",
        "2",
        "--data.init_args.n_train",
        "512",
        "--data.init_args.n_val",
        "256",
        "--data.init_args.n_test",
        "256",
    ]
    build_cli(["fit", *base, "--trainer.max_epochs", "1"])
    ckpt = tmp_path / "report" / "model.ckpt"
    assert json.loads((tmp_path / "report" / "metrics.json").read_text())["global_step"] == 2
    for sub in ("validate", "test"):
        cli = build_cli([sub, *base, "--ckpt_path", str(ckpt)])
        assert f"{'val' if sub == 'validate' else 'test'}/transport_cost" in cli.trainer.callback_metrics
    cli = build_cli(["predict", *base, "--ckpt_path", str(ckpt)])
    preds = cli.trainer.predict_loop.predictions
    assert preds and preds[0]["x1_hat"].shape == preds[0]["x0"].shape == (256, 2)

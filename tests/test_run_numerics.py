"""A run never writes a checkpoint (or a metrics row) holding NaN/Inf in any tensor, including
BatchNorm statistics, which the loss may not reveal (normalisation hides them)."""

from __future__ import annotations

import numpy as np
import pytest
from conftest import ROOT

import autotrain.train.run as run_module
from autotrain.config import load_config
from autotrain.distributed import Communicator
from autotrain.errors import NumericalError


def test_inf_running_var_stops_before_any_checkpoint(tmp_path, monkeypatch):
    cfg = load_config(ROOT / "configs" / "tiny.yaml", [f"output.dir={tmp_path / 'run'}", "train.epochs=1"])
    real_evaluate = run_module.evaluate

    def corrupting_evaluate(model, loader, **kwargs):
        model.layer1[0].bn1.running_var.data[0] = np.inf
        return real_evaluate(model, loader, **kwargs)

    monkeypatch.setattr(run_module, "evaluate", corrupting_evaluate)
    with pytest.raises(NumericalError, match="layer1.0.bn1.running_var"):
        run_module.train(cfg)
    written = sorted(p.name for p in (tmp_path / "run").iterdir())
    assert written == ["config.yaml"]


def test_a_lone_last_image_is_dropped_rather_than_refused_by_batchnorm(tmp_path):
    # tiny.yaml: 8x8 images, small stem, so layer4 is 1x1; 1346 training images % 5 == 1.
    cfg = load_config(ROOT / "configs" / "tiny.yaml",
                      [f"output.dir={tmp_path / 'run'}", "train.epochs=1", "train.batch_size=5"])
    train_loader, _ = run_module.make_loaders(cfg, run_module.load_data(cfg))
    assert train_loader.num_samples % 5 == 1 and len(train_loader) == train_loader.num_samples // 5
    result = run_module.train(cfg)
    assert result.status == "finished" and result.history[0]["train_loss"] > 0


class _TwinRanks(Communicator):
    """A communicator of two ranks that computed the same shard: every sum is twice this
    rank's values (the loss weight is 1/2, so the update equals one process's on the shard)."""

    size = 2

    def combine_gradients(self, arrays, extras=()):
        return [2 * a for a in arrays], 2 * np.array(extras, dtype=np.float64)


@pytest.mark.parametrize("ranks", ["one process", "two ranks"])
def test_a_parameter_without_a_gradient_is_skipped_by_the_update_for_any_world_size(ranks) -> None:
    """A trainable parameter that no rank gave a gradient keeps ``.grad`` None, so SGD's
    weight decay and momentum leave it alone, as in one process (the gradient buffer holds
    zeros for it only during the sum); the used parameters update exactly as in one process."""
    from autotrain import nn
    from autotrain.optim import SGD
    from autotrain.train.loop import train_step

    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.used, self.unused = nn.Linear(4, 3), nn.Linear(4, 3)

        def forward(self, x):
            return self.used(x)

    start = {k: np.array(v, copy=True) for k, v in Net().state_dict().items()}

    def run(comm_args):
        net = Net()
        net.load_state_dict(start)
        before = {k: np.array(v, copy=True) for k, v in net.state_dict().items()}
        opt = SGD(list(net.parameters()), lr=0.1, momentum=0.9, weight_decay=0.1)
        x = np.random.default_rng(1).standard_normal((6, 4)).astype(np.float32)
        y = np.array([0, 1, 2, 0, 1, 2])
        for _ in range(2):
            out = train_step(net, opt, x, y, "test", *comm_args)
        return net, before, out

    net, before, out = run(() if ranks == "one process" else (_TwinRanks(), 12))
    reference, _, _ = run(())
    assert net.unused.weight.grad is None and net.unused.bias.grad is None
    assert np.array_equal(net.unused.weight.data, before["unused.weight"])
    assert np.array_equal(net.unused.bias.data, before["unused.bias"])
    assert not np.array_equal(net.used.weight.data, before["used.weight"])
    assert np.array_equal(net.used.weight.data, reference.used.weight.data)
    assert out[2] == (6 if ranks == "one process" else 12) and out[3] is None

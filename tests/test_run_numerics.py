"""A run never writes a checkpoint (or a metrics row) holding NaN/Inf in any tensor, including
BatchNorm statistics, which the loss may not reveal (normalisation hides them)."""

from __future__ import annotations

import numpy as np
import pytest

import autotrain.train.run as run_module
from autotrain.config import load_config
from autotrain.errors import NumericalError
from conftest import ROOT


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

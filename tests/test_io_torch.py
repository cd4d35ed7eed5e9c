"""Cross-checks against real torch (skipped where torch is not installed)."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import pytest

from autotrain.errors import WeightsError
from autotrain.io import convert, load_weights, read_pth, save_weights

from conftest import require

# Outside CI these tests skip without torch; in CI (.ci/run installs torch) a missing torch fails.
torch = require("torch")

FIXTURES = Path(__file__).parent / "fixtures"
WEIGHTS = FIXTURES / "weights"


def as_numpy(t) -> np.ndarray:
    t = t.detach()
    return (t.float() if t.dtype == torch.bfloat16 else t).numpy()


def tricky_state() -> dict:
    gen = torch.Generator().manual_seed(0)
    base = torch.randn(4, 6, generator=gen)
    return {
        "f32": torch.randn(2, 3, generator=gen),
        "f64": torch.randn(3, generator=gen, dtype=torch.float64),
        "f16": torch.randn(5, generator=gen).half(),
        "bf16": torch.randn(5, generator=gen).bfloat16(),
        "i64": torch.tensor(7),
        "i32": torch.arange(-3, 3, dtype=torch.int32),
        "i16": torch.arange(4, dtype=torch.int16),
        "i8": torch.tensor([-128, 127], dtype=torch.int8),
        "u8": torch.tensor([0, 255], dtype=torch.uint8),
        "bool": torch.tensor([True, False, True]),
        "base": base,
        "transposed": base.t(),  # shares the storage of "base"
        "sliced": base[1:, 2:],  # offset and strides into the same storage
        "column": base[:, 3],
        "expanded": torch.ones(1).expand(5),
        "empty": torch.zeros(0, 3),
        "scalar": torch.tensor(3.5),
    }


@pytest.mark.filterwarnings("ignore:Detected pickle protocol")
@pytest.mark.parametrize("zip_layout", [True, False])
@pytest.mark.parametrize("protocol", [2, 4])
def test_every_dtype_and_view_matches_torch_load(tmp_path: Path, zip_layout: bool, protocol: int) -> None:
    path = tmp_path / "tricky.pth"
    torch.save(tricky_state(), path, _use_new_zipfile_serialization=zip_layout, pickle_protocol=protocol)
    # torch's own weights_only loader cannot read protocol 4 (FRAME); we wrote this file ourselves
    reference = torch.load(path, weights_only=protocol == 2)
    ours = load_weights(path)
    assert list(ours) == list(reference)
    for key, tensor in reference.items():
        want = as_numpy(tensor)
        assert ours[key].dtype == want.dtype and ours[key].shape == want.shape, key
        np.testing.assert_array_equal(ours[key], want, err_msg=key)
        assert ours[key].flags.owndata, key


def test_parameters_wrappers_and_dataparallel(tmp_path: Path) -> None:
    model = torch.nn.Sequential(torch.nn.Linear(3, 2), torch.nn.BatchNorm1d(2))
    expected = {k: v.numpy() for k, v in model.state_dict().items()}
    cases = {
        "params.pth": model.state_dict(keep_vars=True),  # nn.Parameter -> _rebuild_parameter
        "lightning.pth": {"epoch": 3, "state_dict": model.state_dict(), "hparams": {"lr": 0.1}},
        "timm.pth": {"model": model.state_dict()},
        "dataparallel.pth": torch.nn.DataParallel(model).state_dict(),
    }
    for name, obj in cases.items():
        torch.save(obj, tmp_path / name)
        got = read_pth(tmp_path / name)
        assert list(got) == list(expected), name
        for key, array in expected.items():
            np.testing.assert_array_equal(got[key], array)


def test_tensor_kinds_we_do_not_support_are_refused(tmp_path: Path) -> None:
    torch.save({"w": torch.eye(3).to_sparse()}, tmp_path / "sparse.pth")
    with pytest.raises(WeightsError, match="refusing to unpickle global torch._utils._rebuild_sparse_tensor"):
        read_pth(tmp_path / "sparse.pth")
    torch.save({"w": torch.nn.Linear(2, 2)}, tmp_path / "module.pth")
    with pytest.raises(WeightsError, match="refusing to unpickle global"):
        read_pth(tmp_path / "module.pth")


def test_our_safetensors_output_loads_in_torch(tmp_path: Path) -> None:
    from safetensors.torch import load_file

    out = tmp_path / "w.safetensors"
    convert(WEIGHTS / "resnet18_w8.pth", out)
    reference = torch.load(WEIGHTS / "resnet18_w8.pth", weights_only=True)
    loaded = load_file(str(out))
    assert set(loaded) == set(reference)
    for key, tensor in reference.items():
        assert loaded[key].dtype == tensor.dtype and torch.equal(loaded[key], tensor), key


def test_fixture_logits_reproduce_from_our_converted_weights(tmp_path: Path) -> None:
    spec = importlib.util.spec_from_file_location("make_weight_fixtures", FIXTURES / "make_weight_fixtures.py")
    builders = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(builders)
    save_weights(load_weights(WEIGHTS / "resnet18_w8_legacy.pth"), tmp_path / "w.npz")
    state = {k: torch.from_numpy(v) for k, v in np.load(tmp_path / "w.npz").items()}
    model = builders.resnet18(width=8, num_classes=10)
    model.load_state_dict(state, strict=True)
    model.eval()
    expected = np.load(WEIGHTS / "resnet18_w8_expected.npz")
    with torch.no_grad():
        logits = model(torch.from_numpy(expected["x"]))
    # Not bit-exact: the fixture was computed by torch on another CPU, and torch's float32
    # convolutions pick their summation order per CPU (oneDNN), so a fresh run here differs by
    # ~1 ulp on most logits (max 5.9e-6 relative seen on an AMD EPYC, 1 or 4 threads alike).
    # 1e-5 relative (+1e-6 absolute for logits near zero; they are O(1)) admits that rounding
    # and still fails on any wrongly converted tensor, which moves logits by far more.
    np.testing.assert_allclose(logits.numpy(), expected["logits"], rtol=1e-5, atol=1e-6)

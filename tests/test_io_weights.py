"""load_weights / save_weights / convert / match_state_dict."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

from autotrain.errors import ConfigError, WeightsError
from autotrain.io import LoadReport, convert, load_weights, match_state_dict, read_safetensors, save_weights

WEIGHTS = Path(__file__).parent / "fixtures" / "weights"


@pytest.fixture(scope="module")
def expected() -> dict[str, np.ndarray]:
    with np.load(WEIGHTS / "resnet18_w8_expected.npz") as npz:
        return {k: npz[k] for k in npz.files if k not in ("x", "logits")}


def assert_same(got: dict[str, np.ndarray], want: dict[str, np.ndarray], ordered: bool = True) -> None:
    """Same tensors, bit for bit; with ``ordered`` also in the same (state_dict) order. A
    safetensors file lays tensors out by dtype and keeps no order, so it is compared as a set."""
    assert list(got) == list(want) if ordered else set(got) == set(want)
    for key, array in want.items():
        assert got[key].dtype == array.dtype and got[key].shape == array.shape, key
        assert got[key].tobytes() == array.tobytes(), key


@pytest.mark.parametrize("name", ["resnet18_w8.pth", "resnet18_w8_legacy.pth", "resnet18_w8.safetensors"])
def test_every_fixture_format_loads_the_same_tensors(name: str, expected) -> None:
    assert_same(load_weights(WEIGHTS / name), expected, ordered=not name.endswith(".safetensors"))


@pytest.mark.parametrize("suffix", [".safetensors", ".npz", ".SAFETENSORS"])
def test_save_and_load_round_trip(tmp_path: Path, suffix: str, expected) -> None:
    path = tmp_path / f"w{suffix}"
    save_weights(expected, path)
    assert_same(load_weights(path), expected, ordered=suffix == ".npz")
    assert os.listdir(tmp_path) == [path.name]


def test_convert_pth_to_safetensors_and_npz(tmp_path: Path, expected) -> None:
    out = tmp_path / "w.safetensors"
    tensors = convert(WEIGHTS / "resnet18_w8_legacy.pth", out)
    assert_same(tensors, expected)
    assert_same(read_safetensors(out)[0], expected, ordered=False)
    convert(out, tmp_path / "w.npz")
    assert_same(load_weights(tmp_path / "w.npz"), expected, ordered=False)  # written from safetensors


@pytest.mark.parametrize("name", ["w.pth", "w.bin", "w"])
def test_unsupported_output_extension_is_a_usage_error(tmp_path: Path, name: str) -> None:
    with pytest.raises(ConfigError, match="unsupported weights format"):
        save_weights({"a": np.zeros(1)}, tmp_path / name)
    assert not list(tmp_path.iterdir())


def test_missing_file_and_directory(tmp_path: Path) -> None:
    with pytest.raises(WeightsError, match="no such file"):
        load_weights(tmp_path / "missing.pth")
    with pytest.raises(WeightsError, match="is a directory"):
        load_weights(tmp_path)


def test_npz_with_nan_or_objects_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "nan.npz"
    np.savez(path, ok=np.ones(2, np.float32), bad=np.array([1.0, np.nan]))
    with pytest.raises(WeightsError, match="tensor 'bad' contains NaN"):
        load_weights(path)
    objects = tmp_path / "objects.npz"
    np.savez(objects, o=np.array([{"a": 1}], dtype=object))
    with pytest.raises(WeightsError, match="corrupt .npz"):
        load_weights(objects)
    strings = tmp_path / "strings.npz"
    np.savez(strings, s=np.array(["a", "b"]))
    with pytest.raises(WeightsError, match="tensor 's' has unsupported dtype"):
        load_weights(strings)


def test_integer_tensors_are_not_checked_for_nan(tmp_path: Path) -> None:
    path = tmp_path / "ints.npz"
    np.savez(path, n=np.array(3, np.int64))
    assert load_weights(path)["n"] == 3


def test_npz_writer_refuses_non_arrays(tmp_path: Path) -> None:
    with pytest.raises(TypeError):
        save_weights({"a": [1, 2]}, tmp_path / "w.npz")


def test_match_state_dict_report() -> None:
    model = {"conv1.weight": (8, 3, 7, 7), "bn1.weight": (8,), "fc.weight": (10, 64), "fc.bias": (10,)}
    loaded = {
        "conv1.weight": np.zeros((8, 3, 7, 7)),
        "fc.weight": np.zeros((1000, 64)),
        "fc.bias": np.zeros(1000),
        "extra.weight": np.zeros(1),
    }
    report = match_state_dict(model, loaded)
    assert report == LoadReport(
        loaded=["conv1.weight"],
        missing=["bn1.weight"],
        unexpected=["extra.weight"],
        mismatched=[("fc.weight", (10, 64), (1000, 64)), ("fc.bias", (10,), (1000,))],
    )
    assert not report.complete
    summary = report.summary()
    assert summary.startswith("loaded 1, missing 1, unexpected 1, shape mismatch 2: fc.weight expected (10, 64) got")
    full = match_state_dict({"a": (2,)}, {"a": np.zeros(2)})
    assert full.complete and full.summary() == "loaded 1, missing 0, unexpected 0, shape mismatch 0"


def test_match_against_the_fixture_with_a_new_head(expected) -> None:
    shapes = {k: v.shape for k, v in expected.items()}
    shapes["fc.weight"], shapes["fc.bias"] = (3, 64), (3,)
    report = match_state_dict(shapes, load_weights(WEIGHTS / "resnet18_w8.pth"))
    assert [m[0] for m in report.mismatched] == ["fc.weight", "fc.bias"]
    assert len(report.loaded) == len(expected) - 2 and not report.missing and not report.unexpected

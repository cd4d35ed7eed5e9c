"""The safetensors reader validates the header itself and names the file and tensor."""

from __future__ import annotations

import json
import struct
from pathlib import Path

import numpy as np
import pytest

from autotrain.errors import WeightsError
from autotrain.io import load_weights, read_safetensors, read_safetensors_metadata, safetensors_bytes
from autotrain.io.safetensors_io import read_safetensors_bytes

FIXTURES = Path(__file__).parent / "fixtures" / "weights"


def raw_file(header: dict | str, payload: bytes = b"", length: int | None = None) -> bytes:
    """A safetensors file from a header (dict or literal JSON text) and a payload."""
    text = header if isinstance(header, str) else json.dumps(header)
    encoded = text.encode()
    return struct.pack("<Q", len(encoded) if length is None else length) + encoded + payload


def entry(dtype: str, shape: list[int], begin: int, end: int) -> dict:
    return {"dtype": dtype, "shape": shape, "data_offsets": [begin, end]}


def error_for(tmp_path: Path, data: bytes, name: str = "bad.safetensors") -> str:
    path = tmp_path / name
    path.write_bytes(data)
    with pytest.raises(WeightsError) as info:
        read_safetensors(path)
    message = str(info.value)
    assert "\n" not in message and str(path) in message
    return message


def test_round_trip_keeps_dtypes_shapes_and_metadata(tmp_path: Path) -> None:
    tensors = {
        "conv1.weight": np.random.default_rng(0).standard_normal((4, 3, 3, 3)).astype(np.float32),
        "bn1.num_batches_tracked": np.array(7, dtype=np.int64),
        "mask": np.array([True, False, True]),
        "half": np.arange(6, dtype=np.float16).reshape(2, 3),
        "empty": np.zeros((0, 5), dtype=np.float64),
        "strided": np.arange(12, dtype=np.int32).reshape(3, 4)[:, ::2],
        "big_endian": np.arange(3, dtype=">f4"),
    }
    path = tmp_path / "w.safetensors"
    path.write_bytes(safetensors_bytes(tensors, {"note": "hello"}))
    loaded, metadata = read_safetensors(path)
    assert metadata == {"note": "hello"}
    assert set(loaded) == set(tensors)
    for name, array in tensors.items():
        assert loaded[name].shape == array.shape
        assert loaded[name].dtype == array.dtype.newbyteorder("=")
        np.testing.assert_array_equal(loaded[name], array)
        assert loaded[name].flags.owndata and loaded[name].flags.writeable
    assert read_safetensors_metadata(path) == {"note": "hello"}


def test_fixture_from_safetensors_torch_matches_expected() -> None:
    expected = np.load(FIXTURES / "resnet18_w8_expected.npz")
    loaded, _ = read_safetensors(FIXTURES / "resnet18_w8.safetensors")
    assert set(loaded) == set(expected.files) - {"x", "logits"}
    for name, array in loaded.items():
        assert array.dtype == expected[name].dtype and array.tobytes() == expected[name].tobytes()


def test_bf16_is_widened_to_float32(tmp_path: Path) -> None:
    values = np.array([1.0, -2.5, 3.140625], dtype=np.float32)
    bits = (values.view(np.uint32) >> 16).astype("<u2").tobytes()
    data = raw_file({"w": entry("BF16", [3], 0, 6)}, bits)
    tensors, _ = read_safetensors_bytes(data, "mem")
    assert tensors["w"].dtype == np.float32
    np.testing.assert_array_equal(tensors["w"], values)


@pytest.mark.parametrize(
    "data, fragment",
    [
        (b"", "shorter than the 8-byte header length"),
        (b"\x01\x02\x03", "shorter than the 8-byte header length"),
        (struct.pack("<Q", 2**63) + b"{}", "absurd"),
        (struct.pack("<Q", 1000) + b"{}", "past the end"),
        (raw_file("[1, 2]"), "not a JSON object"),
        (raw_file("{not json"), "not valid JSON"),
        (raw_file(b"\xff\xfe".decode("latin-1")), "not valid JSON"),
        (raw_file({"__metadata__": {"a": 1}}), "__metadata__ must map strings to strings"),
        (raw_file({"__metadata__": "x"}), "__metadata__ must map strings to strings"),
        (raw_file({"a": entry("F32", [2], 0, 8)}, b"\0" * 12), "4 trailing bytes"),
    ],
)
def test_bad_files_without_a_tensor_name(tmp_path: Path, data: bytes, fragment: str) -> None:
    assert fragment in error_for(tmp_path, data)


@pytest.mark.parametrize(
    "header, payload, tensor, fragment",
    [
        ({"a": entry("F32", [2], 0, 8)}, b"\0" * 4, "a", "past the end"),
        ({"a": entry("F32", [2], 0, 8), "b": entry("F32", [2], 4, 12)}, b"\0" * 12, "b", "overlap"),
        ({"a": entry("F32", [2], 0, 8), "b": entry("F32", [2], 12, 20)}, b"\0" * 20, "b", "gap"),
        ({"a": entry("F32", [2], 4, 12)}, b"\0" * 12, "a", "do not start at 0"),
        ({"a": entry("F32", [3], 0, 8)}, b"\0" * 8, "a", "needs 12 bytes"),
        ({"a": entry("F8_E4M3", [2], 0, 2)}, b"\0" * 2, "a", "unknown or unsupported dtype"),
        ({"a": entry("Q4", [2], 0, 2)}, b"\0" * 2, "a", "unknown or unsupported dtype"),
        ({"a": entry("F32", [-1], 0, 0)}, b"", "a", "non-negative"),
        ({"a": entry("F32", [2.0], 0, 8)}, b"\0" * 8, "a", "non-negative integers"),
        ({"a": entry("F32", [2], 8, 0)}, b"\0" * 8, "a", "end before"),
        ({"a": {"dtype": "F32", "shape": [1]}}, b"\0" * 4, "a", "keys"),
        ({"a": [1, 2]}, b"", "a", "not an object"),
        ({"a": entry("BOOL", [2], 0, 2)}, b"\x01\x07", "a", "BOOL byte"),
    ],
)
def test_bad_tensor_entries_name_the_tensor(tmp_path: Path, header, payload, tensor, fragment) -> None:
    message = error_for(tmp_path, raw_file(header, payload))
    assert fragment in message and f"tensor {tensor!r}" in message


def test_duplicate_names_are_refused(tmp_path: Path) -> None:
    first, second = (json.dumps(entry("F32", [1], b, b + 4)) for b in (0, 4))
    text = f'{{"a": {first}, "a": {second}}}'
    assert "duplicate name 'a'" in error_for(tmp_path, raw_file(text, b"\0" * 8))


def test_truncated_file_is_refused(tmp_path: Path) -> None:
    good = safetensors_bytes({"a": np.ones(16, np.float32), "b": np.ones(4, np.float32)})
    message = error_for(tmp_path, good[: len(good) - 10])
    assert "past the end" in message


def test_metadata_reader_checks_the_header_only(tmp_path: Path) -> None:
    path = tmp_path / "x.safetensors"
    path.write_bytes(struct.pack("<Q", 2**63))
    with pytest.raises(WeightsError, match="absurd"):
        read_safetensors_metadata(path)
    with pytest.raises(WeightsError, match="no such file"):
        read_safetensors_metadata(tmp_path / "missing.safetensors")


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_non_finite_values_are_refused_by_load_weights(tmp_path: Path, bad: float) -> None:
    path = tmp_path / "nan.safetensors"
    values = np.ones((2, 2), np.float32)
    values[1, 0] = bad
    path.write_bytes(safetensors_bytes({"ok": np.ones(3, np.float32), "fc.weight": values}))
    with pytest.raises(WeightsError, match=r"tensor 'fc.weight' contains (NaN|Inf)"):
        load_weights(path)


def test_zero_byte_and_missing_files(tmp_path: Path) -> None:
    empty = tmp_path / "empty.safetensors"
    empty.write_bytes(b"")
    with pytest.raises(WeightsError, match="shorter than"):
        load_weights(empty)
    with pytest.raises(WeightsError, match="no such file"):
        read_safetensors(tmp_path / "nope.safetensors")
    with pytest.raises(WeightsError, match="directory"):
        read_safetensors(tmp_path)

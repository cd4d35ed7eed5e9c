"""Property: a damaged file loads or raises WeightsError, never any other exception."""

from __future__ import annotations

import importlib.util
import tempfile
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from autotrain.errors import WeightsError
from autotrain.io import load_checkpoint, load_weights, safetensors_bytes, save_checkpoint
from autotrain.io.safetensors_io import read_safetensors_bytes

WEIGHTS = Path(__file__).parent / "fixtures" / "weights"
STATE = {
    "conv1.weight": np.arange(24, dtype=np.float32).reshape(2, 3, 2, 2) / 7,
    "bn1.num_batches_tracked": np.array(5, np.int64),
    "mask": np.array([True, False]),
    "half": np.ones(3, np.float16),
}
VALID_SAFETENSORS = safetensors_bytes(STATE, {"note": "x"})


def _checkpoint_bytes() -> bytes:
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "c.safetensors"
        save_checkpoint(path, STATE, {"momentum_buffer.conv1.weight": STATE["conv1.weight"]}, {"step": 3, "epoch": 1})
        return path.read_bytes()


VALID_CHECKPOINT = _checkpoint_bytes()


def _small_pth() -> dict[str, bytes]:
    """Small valid zip and legacy .pth files (the ResNet fixtures are too big to fuzz quickly)."""
    spec = importlib.util.spec_from_file_location("make_weight_fixtures", WEIGHTS.parent / "make_weight_fixtures.py")
    b = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(b)
    raw = b.float_storage(np.arange(6) / 3)

    def pickle_for(legacy: bool) -> bytes:
        items = [
            ("fc.weight", b.tensor("FloatStorage", "0", 6, 0, (2, 3), (3, 1), legacy)),
            ("fc.bias", b.tensor("FloatStorage", "0", 6, 4, (2,), (1,), legacy)),
            ("bn.num_batches_tracked", b.tensor("LongStorage", "1", 1, 0, (), (), legacy)),
        ]
        return b.program(b.ordered_dict(items))

    long_one = np.array([7], "<i8").tobytes()
    return {
        "zip": b.build_pth_zip(pickle_for(False), {"0": raw, "1": long_one}),
        "legacy": b.build_pth_legacy(pickle_for(True), [("0", 6, raw), ("1", 1, long_one)]),
    }


SMALL_PTH = _small_pth()


def damage(data: bytes, flips: list[tuple[int, int]], cut: int | None) -> bytes:
    out = bytearray(data)
    for index, mask in flips:
        out[index % len(out)] ^= mask
    return bytes(out[:cut] if cut is not None else out)


def mutations(size: int):
    flips = st.lists(st.tuples(st.integers(0, size - 1), st.integers(1, 255)), min_size=0, max_size=4)
    cut = st.one_of(st.none(), st.integers(0, size))
    return flips, cut


FAST = settings(max_examples=50, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@FAST
@given(*mutations(len(VALID_SAFETENSORS)))
def test_damaged_safetensors(flips, cut) -> None:
    try:
        tensors, _ = read_safetensors_bytes(damage(VALID_SAFETENSORS, flips, cut), "fuzz.safetensors")
    except WeightsError as err:
        assert "\n" not in str(err) and "fuzz.safetensors" in str(err)
        return
    assert all(isinstance(t, np.ndarray) and t.flags.owndata for t in tensors.values())


@FAST
@given(*mutations(len(VALID_CHECKPOINT)))
def test_damaged_checkpoint(flips, cut) -> None:
    data = damage(VALID_CHECKPOINT, flips, cut)
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "c.safetensors"
        path.write_bytes(data)
        try:
            loaded = load_checkpoint(path)
        except WeightsError as err:
            # refused the way a user sees it: one line naming the file, exit 3
            assert err.exit_code == 3 and "\n" not in str(err), str(err)
            assert str(err).startswith(f"{path}: "), str(err)
            return
    # a damaged file that still loads must be byte-identical in content (the hash held)
    for name, array in STATE.items():
        np.testing.assert_array_equal(loaded.model_state[name], array)


def load_weights_bytes(data: bytes) -> dict[str, np.ndarray]:
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "w.pth"
        path.write_bytes(data)
        return load_weights(path)


@pytest.mark.parametrize("layout", sorted(SMALL_PTH))
def test_damaged_pth(layout: str) -> None:
    original = SMALL_PTH[layout]
    assert len(load_weights_bytes(original)) == 3  # the undamaged file is valid

    @FAST
    @given(*mutations(len(original)))
    def check(flips, cut) -> None:
        with tempfile.TemporaryDirectory() as folder:
            path = Path(folder) / "w.pth"
            path.write_bytes(damage(original, flips, cut))
            try:
                tensors = load_weights(path)
            except WeightsError as err:
                assert "\n" not in str(err)
                return
            assert all(isinstance(t, np.ndarray) for t in tensors.values())

    check()

"""Property: any damaged weights file or checkpoint loads or raises WeightsError (one line,
naming the file), never another exception, and loading it allocates memory in proportion to
the file, not to what its headers claim.

tests/test_io_properties.py flips and truncates safetensors bytes, checkpoints and small
.pth files (zip and legacy) without watching memory; this adds the .npz format (stored and
deflated), checkpoints read through ``load_weights`` and ``find_latest_valid_checkpoint``,
edits of the numbers inside ASCII headers (safetensors JSON, .npy dict) to huge values, and a
tracemalloc bound on every load.
"""

from __future__ import annotations

import io
import re
import tempfile
import tracemalloc
import zipfile
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st
from test_io_properties import SMALL_PTH, STATE, VALID_CHECKPOINT, damage, mutations

from autotrain.errors import WeightsError
from autotrain.io import (
    find_latest_valid_checkpoint,
    load_checkpoint,
    load_weights,
    safetensors_bytes,
    save_checkpoint,
)

PROPERTY = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
FLOATS = {"conv1.weight": STATE["conv1.weight"], "fc.bias": np.linspace(-1, 1, 7).astype(np.float64),
          "bn1.num_batches_tracked": np.array(5, np.int64), "mask": np.array([1, 0], np.uint8)}


def npz_bytes(compressed: bool) -> bytes:
    buffer = io.BytesIO()
    (np.savez_compressed if compressed else np.savez)(buffer, **FLOATS)
    return buffer.getvalue()


VALID = {
    "safetensors": safetensors_bytes(FLOATS),
    "npz": npz_bytes(False),
    "npz_deflated": npz_bytes(True),
    "checkpoint": VALID_CHECKPOINT,
    "pth_zip": SMALL_PTH["zip"],
    "pth_legacy": SMALL_PTH["legacy"],
}
SUFFIX = {"safetensors": ".safetensors", "checkpoint": ".safetensors", "npz": ".npz", "npz_deflated": ".npz",
          "pth_zip": ".pth", "pth_legacy": ".pth"}


def memory_bound(data: bytes) -> int:
    """What loading a file of this size may allocate at its peak: a few copies of it, plus
    a fixed allowance for parsing (the valid files stay well under it)."""
    return 8 * len(data) + (1 << 20)


def load_bounded(data: bytes, suffix: str) -> dict[str, np.ndarray] | None:
    """load_weights on ``data``: the tensors, or None after a WeightsError; any other exception
    propagates. Asserts the peak traced allocation stays under memory_bound."""
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / f"w{suffix}"
        path.write_bytes(data)
        tracemalloc.start()
        try:
            tracemalloc.reset_peak()
            try:
                tensors = load_weights(path)
            except WeightsError as err:
                message = str(err)
                assert "\n" not in message and str(path) in message, message
                tensors = None
            peak = tracemalloc.get_traced_memory()[1]
        finally:
            tracemalloc.stop()
    assert peak <= memory_bound(data), f"loading {len(data)} bytes allocated {peak} bytes at peak"
    return tensors


@pytest.mark.parametrize("kind", sorted(VALID))
def test_the_undamaged_files_load_within_the_bound(kind: str) -> None:
    tensors = load_bounded(VALID[kind], SUFFIX[kind])
    assert tensors is not None and len(tensors) >= 3


@pytest.mark.parametrize("kind", sorted(VALID))
def test_flipped_and_truncated_bytes(kind: str) -> None:
    original = VALID[kind]

    @PROPERTY
    @given(*mutations(len(original)))
    def check(flips, cut) -> None:
        tensors = load_bounded(damage(original, flips, cut), SUFFIX[kind])
        if tensors is not None:
            assert all(isinstance(t, np.ndarray) for t in tensors.values())

    check()


def _numbers_in_headers(data: bytes) -> list[tuple[int, int]]:
    """(start, end) of each run of ASCII digits inside the ASCII headers: the safetensors JSON
    header and the dict at the start of each .npy member."""
    spans = []
    if data[8:9] == b"{":
        length = int.from_bytes(data[:8], "little")
        spans += [(m.start() + 8, m.end() + 8) for m in re.finditer(rb"\d+", data[8 : 8 + length])]
    for magic in re.finditer(rb"\x93NUMPY", data):
        start, end = magic.end() + 4, data.find(b"}", magic.end())  # after version and length
        spans += [(m.start() + start, m.end() + start) for m in re.finditer(rb"\d+", data[start:end])]
    return spans


def with_number(data: bytes, span: tuple[int, int], value: int) -> bytes | None:
    """``data`` with the digits at ``span`` replaced by ``value``, the file kept consistent
    where a reader would otherwise stop at once: a safetensors header gets a new length
    prefix; a .npy header keeps its length by taking or giving back the spaces that pad it
    (the caller re-zips, for fresh CRCs). None when the number does not fit the padding."""
    start, end = span
    text = str(value).encode()
    if data[8:9] == b"{":
        length = int.from_bytes(data[:8], "little")
        if start < 8 + length:
            header = data[8:start] + text + data[end : 8 + length]
            return len(header).to_bytes(8, "little") + header + data[8 + length :]
    newline = data.find(b"\n", end)
    tail = data[end:newline].rstrip(b" ")
    region = data[start:newline]
    replaced = (text + tail).ljust(len(region), b" ")
    if len(replaced) != len(region):
        return None
    return data[:start] + replaced + data[newline:]


@pytest.mark.parametrize("kind", ["safetensors", "npz", "npz_deflated", "checkpoint"])
def test_header_numbers_replaced_by_huge_ones(kind: str) -> None:
    """A shape, offset or length in a header that claims gigabytes or terabytes is refused
    (or loads, if the edit happens to be consistent) without allocating the claim."""
    # .npy headers are edited in the stored archive, then re-zipped (stored or deflated) with
    # fresh CRCs: a consistent zip whose only lie is the header
    original = VALID["npz"] if kind.startswith("npz") else VALID[kind]
    spans = _numbers_in_headers(original)
    assert spans, kind

    @PROPERTY
    @given(st.sampled_from(spans), st.one_of(st.integers(0, 10**15), st.sampled_from([10**8, 10**9, 2**33])))
    def check(span, value) -> None:
        data = with_number(original, span, value)
        assume(data is not None)
        if kind.startswith("npz"):
            data = _rezipped(data, zipfile.ZIP_DEFLATED if kind == "npz_deflated" else zipfile.ZIP_STORED)
        tensors = load_bounded(data, SUFFIX[kind])
        if tensors is not None:
            assert all(isinstance(t, np.ndarray) for t in tensors.values())

    check()


def _rezipped(data: bytes, compression: int) -> bytes:
    """The same zip entries, written again with ``compression`` and correct CRCs."""
    out = io.BytesIO()
    with zipfile.ZipFile(io.BytesIO(data)) as src, zipfile.ZipFile(out, "w", compression) as dst:
        for info in src.infolist():
            with src.open(info) as member:
                member._expected_crc = None  # the edit changed the content; CRC is recomputed below
                dst.writestr(info.filename, member.read())
    return out.getvalue()


def _npz_claiming(shape: tuple[int, ...], payload: bytes, compress: int = zipfile.ZIP_STORED) -> bytes:
    header = io.BytesIO()
    np.lib.format.write_array_header_1_0(header, {"descr": "<f4", "fortran_order": False, "shape": shape})
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", compress) as zf:
        zf.writestr("fc.weight.npy", header.getvalue() + payload)
    return buffer.getvalue()


@pytest.mark.parametrize("shape", [(10**8,), (10**9,), (2**40,), (65536, 65536)])
@pytest.mark.parametrize("compress", [zipfile.ZIP_STORED, zipfile.ZIP_DEFLATED])
def test_npz_member_claiming_more_than_it_holds(shape, compress) -> None:
    """A 300-byte .npz whose .npy header claims gigabytes: WeightsError naming the tensor,
    without allocating the claim (numpy alone would reserve it before reading)."""
    data = _npz_claiming(shape, b"\0" * 64, compress)
    assert load_bounded(data, ".npz") is None
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "w.npz"
        path.write_bytes(data)
        with pytest.raises(WeightsError, match="fc.weight"):
            load_weights(path)


@PROPERTY
@given(*mutations(len(VALID_CHECKPOINT)))
def test_a_damaged_newest_checkpoint_is_skipped_for_an_intact_older_one(flips, cut) -> None:
    """find_latest_valid_checkpoint returns a checkpoint that loads (the damaged newer one only
    if the damage left its content hash intact), never raises."""
    with tempfile.TemporaryDirectory() as folder:
        run = Path(folder)
        save_checkpoint(run / "epoch-1.safetensors", STATE, {}, {"step": 1, "epoch": 1})
        (run / "last.safetensors").write_bytes(damage(VALID_CHECKPOINT, flips, cut))  # step 3
        found = find_latest_valid_checkpoint(run)
        assert found is not None
        loaded = load_checkpoint(found)
        assert loaded.metadata["step"] in (1, 3)

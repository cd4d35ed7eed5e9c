"""Read and serialise safetensors files, validating the header before trusting it.

Format (https://github.com/huggingface/safetensors): an unsigned 64-bit little-endian
header length N, N bytes of JSON, then the tensor payload. The JSON maps each tensor
name to ``{"dtype", "shape", "data_offsets": [begin, end]}`` (offsets relative to the
payload) and may hold ``"__metadata__"``, a str -> str map.

Contract of the reader: every tensor's byte span must equal ``prod(shape) * itemsize``;
the spans, sorted, must tile the payload exactly (start at 0, no gap, no overlap, nothing
after the last one); names are unique; the dtype is known. Any violation raises
:class:`~autotrain.errors.WeightsError` with a one-line message naming the file and,
where there is one, the tensor. Arrays returned own their memory, are writable and
native-endian. ``BF16`` is widened to float32 (NumPy has no bfloat16).

Writing goes through ``safetensors.numpy.save`` (to bytes); the caller writes the bytes
atomically (see :func:`autotrain.io.checkpoint.atomic_write_bytes`).
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from collections.abc import Mapping

import numpy as np
import safetensors.numpy

from autotrain.errors import WeightsError

# The header is JSON describing tensors; a real one is kilobytes. The reference
# implementation refuses headers above 100 MB, and so do we.
MAX_HEADER_BYTES = 100_000_000

METADATA_KEY = "__metadata__"

# safetensors dtype name -> little-endian NumPy dtype as stored on disk.
_DTYPES: dict[str, np.dtype] = {
    "BOOL": np.dtype("?"),
    "U8": np.dtype("u1"),
    "I8": np.dtype("i1"),
    "U16": np.dtype("<u2"),
    "I16": np.dtype("<i2"),
    "U32": np.dtype("<u4"),
    "I32": np.dtype("<i4"),
    "U64": np.dtype("<u8"),
    "I64": np.dtype("<i8"),
    "F16": np.dtype("<f2"),
    "F32": np.dtype("<f4"),
    "F64": np.dtype("<f8"),
    "BF16": np.dtype("<u2"),  # raw bits, widened to float32 after reading
}


@dataclass(frozen=True)
class TensorEntry:
    """One validated header entry: ``payload[begin:end]`` holds the tensor."""

    name: str
    dtype: str
    shape: tuple[int, ...]
    begin: int
    end: int


@dataclass(frozen=True)
class Header:
    """A validated safetensors header: entries in payload order, metadata, payload start."""

    entries: tuple[TensorEntry, ...]
    metadata: dict[str, str]
    payload_start: int


def _fail(source: str, problem: str, tensor: str | None = None) -> WeightsError:
    where = f"{source}: tensor {tensor!r}: " if tensor is not None else f"{source}: "
    return WeightsError(where + problem)


def _reject_duplicates(source: str):
    """object_pairs_hook for json.loads: a repeated key anywhere is an error, not 'last wins'."""

    def hook(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for key, value in pairs:
            if key in out:
                raise _fail(source, f"duplicate name {key!r} in the safetensors header")
            out[key] = value
        return out

    return hook


def _header_length(prefix: bytes, file_size: int, source: str) -> int:
    if file_size < 8 or len(prefix) < 8:
        raise _fail(source, f"not a safetensors file: {file_size} bytes, shorter than the 8-byte header length")
    (length,) = struct.unpack("<Q", prefix[:8])
    if length > MAX_HEADER_BYTES:
        raise _fail(source, f"safetensors header length {length} is absurd (limit {MAX_HEADER_BYTES} bytes)")
    if 8 + length > file_size:
        raise _fail(source, f"safetensors header length {length} runs past the end of the {file_size}-byte file")
    return length


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _parse_entry(name: str, spec: Any, source: str) -> TensorEntry:
    if not isinstance(spec, dict):
        raise _fail(source, "header entry is not an object", name)
    if set(spec) != {"dtype", "shape", "data_offsets"}:
        raise _fail(source, f"header entry keys {sorted(spec)} != ['data_offsets', 'dtype', 'shape']", name)
    dtype, shape, offsets = spec["dtype"], spec["shape"], spec["data_offsets"]
    if not isinstance(dtype, str) or dtype not in _DTYPES:
        raise _fail(source, f"unknown or unsupported dtype {dtype!r}", name)
    if not isinstance(shape, list) or not all(_is_int(d) and d >= 0 for d in shape):
        raise _fail(source, f"shape {shape!r} is not a list of non-negative integers", name)
    if not (isinstance(offsets, list) and len(offsets) == 2 and all(_is_int(o) and o >= 0 for o in offsets)):
        raise _fail(source, f"data_offsets {offsets!r} is not a pair of non-negative integers", name)
    begin, end = offsets
    if end < begin:
        raise _fail(source, f"data_offsets [{begin}, {end}] end before they begin", name)
    expected = math.prod(shape) * _DTYPES[dtype].itemsize
    if end - begin != expected:
        raise _fail(
            source,
            f"shape {shape} x {dtype} needs {expected} bytes but data_offsets span {end - begin}",
            name,
        )
    return TensorEntry(name, dtype, tuple(shape), begin, end)


def _parse_metadata(value: Any, source: str) -> dict[str, str]:
    if not isinstance(value, dict) or not all(isinstance(k, str) and isinstance(v, str) for k, v in value.items()):
        raise _fail(source, "__metadata__ must map strings to strings")
    return dict(value)


def _check_tiling(entries: list[TensorEntry], payload_size: int, source: str) -> None:
    """The sorted spans must cover [0, payload_size) exactly once."""
    cursor = 0
    for entry in entries:
        if entry.end > payload_size:
            raise _fail(source, f"data_offsets end {entry.end} past the end of the {payload_size}-byte payload", entry.name)
        if entry.begin < cursor:
            raise _fail(source, f"data_offsets [{entry.begin}, {entry.end}] overlap the previous tensor", entry.name)
        if entry.begin > cursor:
            what = "do not start at 0" if cursor == 0 else f"leave a gap after byte {cursor}"
            raise _fail(source, f"data_offsets [{entry.begin}, {entry.end}] {what}", entry.name)
        cursor = entry.end
    if cursor != payload_size:
        raise _fail(source, f"{payload_size - cursor} trailing bytes after the last tensor")


def parse_header(prefix: bytes, file_size: int, source: str) -> Header:
    """Validate the header found at the start of a safetensors file.

    ``prefix`` must hold at least the 8-byte length and the header itself; ``file_size``
    is the size of the whole file, against which offsets are checked. Raises
    WeightsError on any inconsistency; never reads the payload.
    """
    length = _header_length(prefix, file_size, source)
    raw = prefix[8 : 8 + length]
    try:
        parsed = json.loads(raw.decode("utf-8"), object_pairs_hook=_reject_duplicates(source))
    except WeightsError:
        raise
    except (UnicodeDecodeError, ValueError, RecursionError) as exc:
        raise _fail(source, f"safetensors header is not valid JSON ({type(exc).__name__})") from None
    if not isinstance(parsed, dict):
        raise _fail(source, "safetensors header is not a JSON object")
    metadata = _parse_metadata(parsed.pop(METADATA_KEY), source) if METADATA_KEY in parsed else {}
    entries = []
    for name, spec in parsed.items():
        if not name:
            raise _fail(source, "empty tensor name in the safetensors header")
        entries.append(_parse_entry(name, spec, source))
    entries.sort(key=lambda e: (e.begin, e.end))
    _check_tiling(entries, file_size - 8 - length, source)
    return Header(tuple(entries), metadata, 8 + length)


def _decode(entry: TensorEntry, payload: memoryview, source: str) -> np.ndarray:
    raw = np.frombuffer(payload[entry.begin : entry.end], dtype=_DTYPES[entry.dtype]).reshape(entry.shape)
    if entry.dtype == "BOOL" and raw.size and raw.view(np.uint8).max() > 1:
        # A bool byte other than 0/1 is not a valid value; NumPy would carry it silently.
        raise WeightsError(f"{source}: tensor {entry.name!r}: BOOL byte other than 0 or 1")
    if entry.dtype == "BF16":
        # bfloat16 is the top half of a float32: shift the bits up into a float32 array.
        widened = np.empty(entry.shape, dtype=np.float32)
        widened.view(np.uint32)[...] = raw.astype(np.uint32) << 16
        return widened
    return raw.astype(raw.dtype.newbyteorder("="), copy=True)  # owned, writable, native


def read_safetensors_bytes(data: bytes, source: str) -> tuple[dict[str, np.ndarray], dict[str, str]]:
    """Parse a whole safetensors file held in memory; ``source`` names it in errors.

    Returns ``(tensors, metadata)``; tensors appear in payload order.
    """
    header = parse_header(data, len(data), source)
    payload = memoryview(data)[header.payload_start :]
    tensors = {entry.name: _decode(entry, payload, source) for entry in header.entries}
    return tensors, header.metadata


@contextlib.contextmanager
def _read_errors(path: Path):
    """An OSError while reading ``path`` becomes one WeightsError line naming it."""
    try:
        yield
    except FileNotFoundError:
        raise WeightsError(f"{path}: no such file") from None
    except IsADirectoryError:
        raise WeightsError(f"{path}: is a directory, not a weights file") from None
    except OSError as exc:
        raise WeightsError(f"{path}: cannot read: {exc.strerror or exc}") from None


def read_file_bytes(path: Path) -> bytes:
    """The bytes of a weights file; WeightsError naming it when it is missing or unreadable."""
    with _read_errors(path):
        return path.read_bytes()


def read_safetensors(path: str | os.PathLike[str]) -> tuple[dict[str, np.ndarray], dict[str, str]]:
    """Read a safetensors file: ``(tensors, metadata)``; WeightsError if it is unsafe or corrupt."""
    path = Path(path)
    return read_safetensors_bytes(read_file_bytes(path), str(path))


def read_safetensors_metadata(path: str | os.PathLike[str]) -> dict[str, str]:
    """Validate the header of a safetensors file and return its ``__metadata__``.

    Reads only the header, so it is cheap on large checkpoints; the payload is not hashed
    or decoded. WeightsError if the header is invalid or the file is missing.
    """
    path = Path(path)
    with _read_errors(path), path.open("rb") as f:
        size = os.fstat(f.fileno()).st_size
        prefix = f.read(8)
        length = _header_length(prefix, size, str(path))
        prefix += f.read(length)
    return parse_header(prefix, size, str(path)).metadata


def _for_disk(name: Any, array: Any) -> np.ndarray:
    if not isinstance(name, str) or not name or name == METADATA_KEY:
        raise ValueError(f"invalid tensor name {name!r}")
    if not isinstance(array, np.ndarray):
        raise TypeError(f"tensor {name!r} is {type(array).__name__}, not a numpy array")
    if array.dtype.kind not in "biuf":
        raise TypeError(f"tensor {name!r} has dtype {array.dtype}, which safetensors cannot store")
    # safetensors is little-endian and C-ordered; normalise so any array can be saved.
    # (np.require, not np.ascontiguousarray, which would turn a 0-d array into shape (1,))
    return np.require(array.astype(array.dtype.newbyteorder("<"), copy=False), requirements="C")


def safetensors_bytes(tensors: Mapping[str, np.ndarray], metadata: Mapping[str, str] | None = None) -> bytes:
    """Serialise ``tensors`` (and a str -> str ``metadata``) to safetensors bytes.

    Raises TypeError/ValueError for a caller error (non-array value, object dtype,
    bad name, non-string metadata): these are programming errors, not user input.
    """
    arrays = {name: _for_disk(name, array) for name, array in tensors.items()}
    meta = dict(metadata or {})
    if not all(isinstance(k, str) and isinstance(v, str) for k, v in meta.items()):
        raise TypeError("safetensors metadata must map strings to strings")
    return safetensors.numpy.save(arrays, metadata=meta or None)

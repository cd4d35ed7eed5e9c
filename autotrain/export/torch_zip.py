"""Write a state dict as a torch ``.pth`` in torch's zip layout, without torch.

The bytes are what ``torch.save(state_dict, f)`` writes (torch >= 1.6):

* ``archive/data.pkl``: a protocol-2 pickle of an ``OrderedDict`` name -> tensor; each tensor
  is ``torch._utils._rebuild_tensor_v2(storage, 0, size, stride, False, OrderedDict())`` and
  its storage the persistent id ``('storage', torch.<Type>Storage, key, 'cpu', numel)``;
* ``archive/data/<key>``: each storage's raw little-endian bytes (one storage a tensor);
* ``archive/.format_version``, ``archive/.storage_alignment``, ``archive/byteorder``,
  ``archive/version``: the records torch writes beside them;
* every entry stored uncompressed, its data at a 64-byte-aligned offset (an ``FB`` extra
  field in the local header pads it, as torch's PyTorchStreamWriter does), so torch can
  map the storages in place (``torch.load(mmap=True)``).

The pickle is emitted opcode by opcode: no pickler walks live objects and torch is never
imported. Its only globals are ``collections.OrderedDict``, ``torch._utils._rebuild_tensor_v2``
and the typed ``torch.*Storage`` names, all of which ``torch.load(weights_only=True)`` and
autotrain's own restricted reader (:mod:`autotrain.io.torch_pth`) accept. The output is a
pure function of the state dict (fixed zip timestamps), so equal weights give equal files.
"""

from __future__ import annotations

import io
import math
import os
import pickle
import struct
import zipfile
from collections.abc import Mapping

import numpy as np

from autotrain.errors import WeightsError
from autotrain.io.checkpoint import atomic_write_bytes

ARCHIVE = "archive"
ALIGNMENT = 64
# numpy dtype -> torch's typed storage class name (the name torch pickles for that dtype).
STORAGE_TYPES = {
    np.dtype(np.float32): "FloatStorage",
    np.dtype(np.float64): "DoubleStorage",
    np.dtype(np.float16): "HalfStorage",
    np.dtype(np.int64): "LongStorage",
    np.dtype(np.int32): "IntStorage",
    np.dtype(np.int16): "ShortStorage",
    np.dtype(np.int8): "CharStorage",
    np.dtype(np.uint8): "ByteStorage",
    np.dtype(np.bool_): "BoolStorage",
}
_ZIP_TIME = (1980, 1, 1, 0, 0, 0)  # the zip epoch: no wall-clock time in the file
_PAD_HEADER_ID = b"FB"  # torch's id for its padding extra field

# --------------------------------------------------------------------------- pickle opcodes
# Protocol 2, the one torch.save uses; the names are pickle's own (Lib/pickle.py).
_PROTO2 = b"\x80\x02"
_MARK, _TUPLE, _EMPTY_TUPLE = b"(", b"t", b")"
_SMALL_TUPLES = {1: b"\x85", 2: b"\x86", 3: b"\x87"}  # TUPLE1..TUPLE3
_REDUCE, _BINPERSID, _SETITEMS, _NEWFALSE, _STOP = b"R", b"Q", b"u", b"\x89", b"."


def _global(module: str, name: str) -> bytes:
    return b"c" + module.encode("ascii") + b"\n" + name.encode("ascii") + b"\n"


def _str(text: str) -> bytes:
    data = text.encode("utf-8")
    return b"X" + struct.pack("<I", len(data)) + data  # BINUNICODE


def _int(n: int) -> bytes:
    if 0 <= n < 1 << 8:
        return b"K" + struct.pack("<B", n)  # BININT1
    if 0 <= n < 1 << 16:
        return b"M" + struct.pack("<H", n)  # BININT2
    if -(1 << 31) <= n < 1 << 31:
        return b"J" + struct.pack("<i", n)  # BININT
    data = pickle.encode_long(n)
    return b"\x8a" + struct.pack("<B", len(data)) + data  # LONG1


def _tuple(items: list[bytes]) -> bytes:
    if not items:
        return _EMPTY_TUPLE
    if len(items) in _SMALL_TUPLES:
        return b"".join(items) + _SMALL_TUPLES[len(items)]
    return _MARK + b"".join(items) + _TUPLE


def _empty_ordered_dict() -> bytes:
    return _global("collections", "OrderedDict") + _EMPTY_TUPLE + _REDUCE


def _tensor(key: str, storage_type: str, array: np.ndarray) -> bytes:
    """``_rebuild_tensor_v2(storage, 0, size, stride, False, OrderedDict())`` of a C-contiguous array."""
    strides = [math.prod(array.shape[i + 1:]) for i in range(array.ndim)]  # torch's contiguous strides
    storage = _tuple([_str("storage"), _global("torch", storage_type), _str(key), _str("cpu"),
                      _int(array.size)]) + _BINPERSID
    args = [storage, _int(0), _tuple([_int(n) for n in array.shape]), _tuple([_int(s) for s in strides]),
            _NEWFALSE, _empty_ordered_dict()]
    return _global("torch._utils", "_rebuild_tensor_v2") + _MARK + b"".join(args) + _TUPLE + _REDUCE


def _data_pickle(entries: list[tuple[str, str, str, np.ndarray]]) -> bytes:
    """The pickle of ``OrderedDict((name, tensor), ...)`` for (name, key, storage type, array)."""
    items = b"".join(_str(name) + _tensor(key, stype, array) for name, key, stype, array in entries)
    return _PROTO2 + _empty_ordered_dict() + (_MARK + items + _SETITEMS if entries else b"") + _STOP


# --------------------------------------------------------------------------- zip container


def _padding_extra(header_offset: int, name: bytes) -> bytes:
    """An extra field that puts the entry's data at a multiple of ALIGNMENT."""
    start = header_offset + 30 + len(name) + 4  # 30-byte local header, then name, then 4-byte field head
    pad = -start % ALIGNMENT
    return _PAD_HEADER_ID + struct.pack("<H", pad) + b"Z" * pad


def _zip(records: list[tuple[str, bytes]]) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_STORED) as zf:
        for name, data in records:
            info = zipfile.ZipInfo(f"{ARCHIVE}/{name}", date_time=_ZIP_TIME)
            # zipfile writes each local header where the buffer stands now
            info.extra = _padding_extra(buffer.tell(), info.filename.encode("utf-8"))
            zf.writestr(info, data)
    return buffer.getvalue()


# --------------------------------------------------------------------------- entry points


def pth_bytes(state_dict: Mapping[str, np.ndarray], source: str = "state_dict") -> bytes:
    """The bytes of a torch zip-layout ``.pth`` holding ``state_dict`` (order kept).

    WeightsError naming ``source`` and the tensor when a dtype has no torch storage type
    (e.g. uint16) or a value is not a numpy array.
    """
    entries, storages = [], []
    for index, (name, array) in enumerate(state_dict.items()):
        if not isinstance(array, np.ndarray):
            raise WeightsError(f"{source}: tensor {name!r} is a {type(array).__name__}, not an array")
        stype = STORAGE_TYPES.get(array.dtype.newbyteorder("="))
        if stype is None:
            raise WeightsError(f"{source}: tensor {name!r} has dtype {array.dtype}, which a torch .pth cannot hold")
        # (np.ascontiguousarray would turn a 0-d num_batches_tracked into shape (1,))
        little = array.astype(array.dtype.newbyteorder("<"), order="C", copy=False)
        key = str(index)
        entries.append((name, key, stype, little))
        storages.append((f"data/{key}", little.tobytes()))
    records = [("data.pkl", _data_pickle(entries)), (".format_version", b"1"),
               (".storage_alignment", str(ALIGNMENT).encode()), ("byteorder", b"little"),
               *storages, ("version", b"3\n")]
    return _zip(records)


def write_pth(state_dict: Mapping[str, np.ndarray], path: str | os.PathLike[str], source: str = "state_dict") -> None:
    """Write ``state_dict`` to ``path`` as a torch ``.pth``, atomically (OutputError if it cannot)."""
    atomic_write_bytes(path, pth_bytes(state_dict, source))

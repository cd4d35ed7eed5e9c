"""Read PyTorch ``.pth`` state dicts without torch and without executing pickled code.

Two layouts written by ``torch.save(model.state_dict(), f)`` are understood:

* the zip layout (torch >= 1.6): ``<top>/data.pkl`` (the pickled dict), ``<top>/data/<key>``
  (raw storages), ``<top>/byteorder``, ``<top>/version``; ``<top>`` varies;
* the legacy layout (``_use_new_zipfile_serialization=False``): pickles of the magic
  number, the protocol version and sys_info, then the data pickle, then the pickled list
  of storage keys, then each storage as an 8-byte little-endian element count and its
  raw bytes.

Safety contract: the pickles are read by a restricted unpickler whose ``find_class``
resolves ONLY ``collections.OrderedDict``, ``torch._utils._rebuild_tensor_v2``,
``torch._utils._rebuild_parameter(_with_state)`` and the typed ``torch.*Storage`` names,
each to a harmless stand-in defined here; any other global (``posix.system``,
``builtins.eval``, ``subprocess.Popen``...) raises WeightsError naming it, and there is no
fallback to a full unpickle. Tensors are built from the storages only after a bounds check
(non-negative sizes and strides, the last element inside the storage), then copied, so
returned arrays own their memory. Zip entries whose declared size is absurd for the file
(a zip bomb) are refused before anything is decompressed.

Result: ``dict[str, np.ndarray]``, little-endian data made native; a top-level
``{"state_dict": ...}`` or ``{"model": ...}`` wrapper (timm, Lightning) is unwrapped and a
``module.`` prefix (DataParallel) stripped. bfloat16 storages are widened to float32.
Every failure is a one-line WeightsError naming the file and, where known, the tensor.
"""

from __future__ import annotations

import collections
import io
import math
import os
import pickle
import pickletools
import reprlib
import struct
import zipfile
from pathlib import Path
from typing import Any
from collections.abc import Callable

import numpy as np

from autotrain.errors import WeightsError
from autotrain.io.safetensors_io import read_file_bytes

ZIP_MAGIC = b"PK\x03\x04"
# pickle protocol 2 of the int 0x1950a86a20f9469cfc6c, which torch writes first in legacy files.
LEGACY_MAGIC_NUMBER = 0x1950A86A20F9469CFC6C
LEGACY_PROTOCOL_VERSION = 1001

# Zip-bomb limits: an entry above this size must not claim a compression ratio above
# _MAX_RATIO, and all entries together may not expand past _MAX_TOTAL_RATIO x the file.
_SMALL_ENTRY = 1 << 20
_MAX_RATIO = 100
_MAX_TOTAL_RATIO = 128
# A tensor may repeat storage elements (stride 0) but not blow a small file up past this.
_MAX_EXPANDED_NUMEL = 1 << 20

# typed storage name -> (dtype on disk, little-endian)
_STORAGE_DTYPES: dict[str, str] = {
    "FloatStorage": "<f4",
    "DoubleStorage": "<f8",
    "HalfStorage": "<f2",
    "BFloat16Storage": "<u2",  # raw bits; widened to float32 when decoded
    "LongStorage": "<i8",
    "IntStorage": "<i4",
    "ShortStorage": "<i2",
    "CharStorage": "i1",
    "ByteStorage": "u1",
    "BoolStorage": "?",
}


_REPR = reprlib.Repr()
_REPR.maxstring = _REPR.maxother = 120
_REPR.maxlevel = 3


def _one_line(text: object, limit: int = 200) -> str:
    """An exception text on one line, bounded: messages must stay one short line."""
    flat = " ".join(str(text).split())
    return flat if len(flat) <= limit else flat[: limit - 3] + "..."


def _show(value: object) -> str:
    """A bounded repr for values read from an untrusted file (no deep recursion, no huge text)."""
    try:
        return _one_line(_REPR.repr(value))
    except Exception:  # a hostile object whose repr fails
        return f"<{type(value).__name__}>"


class _Inert:
    """Base of the stand-ins: immutable, so a pickle's BUILD opcode cannot alter one."""

    __slots__ = ()

    def __setstate__(self, state: Any) -> None:
        raise pickle.UnpicklingError(f"BUILD on {type(self).__name__} is not allowed")

    def __setattr__(self, key: str, value: Any) -> None:
        raise AttributeError(f"{type(self).__name__} is immutable")


class _StorageType(_Inert):
    """Stand-in for ``torch.FloatStorage`` and friends: a name and an on-disk dtype."""

    __slots__ = ("name", "dtype")

    def __init__(self, name: str) -> None:
        object.__setattr__(self, "name", name)
        object.__setattr__(self, "dtype", np.dtype(_STORAGE_DTYPES[name]))


class _StorageRef(_Inert):
    """A storage named by a persistent id: its key, element type and element count."""

    __slots__ = ("key", "stype", "numel")

    def __init__(self, key: str, stype: _StorageType, numel: int) -> None:
        for slot, value in zip(self.__slots__, (key, stype, numel), strict=True):
            object.__setattr__(self, slot, value)


class _TensorRef(_Inert):
    """What ``_rebuild_tensor_v2`` returns here: a view, checked and built later."""

    __slots__ = ("storage", "offset", "size", "stride")

    def __init__(self, storage: Any, offset: Any, size: Any, stride: Any) -> None:
        for slot, value in zip(self.__slots__, (storage, offset, size, stride), strict=True):
            object.__setattr__(self, slot, value)


class _Function(_Inert):
    """Stand-in for an allowed torch function: calls ours, and cannot be altered by a pickle
    (a plain function would let BUILD rewrite its ``__defaults__`` for later loads)."""

    __slots__ = ("fn",)

    def __init__(self, fn: Callable[..., Any]) -> None:
        object.__setattr__(self, "fn", fn)

    def __call__(self, *args: Any) -> Any:
        return self.fn(*args)


def _rebuild_tensor_v2(storage, storage_offset, size, stride, requires_grad=False, backward_hooks=None, metadata=None):
    return _TensorRef(storage, storage_offset, size, stride)


def _rebuild_parameter(data, requires_grad=False, backward_hooks=None):
    return data


def _rebuild_parameter_with_state(data, requires_grad=False, backward_hooks=None, state=None):
    return data


_STORAGE_TYPES = {name: _StorageType(name) for name in _STORAGE_DTYPES}
_ALLOWED_GLOBALS: dict[tuple[str, str], Any] = {
    ("collections", "OrderedDict"): collections.OrderedDict,
    ("torch._utils", "_rebuild_tensor_v2"): _Function(_rebuild_tensor_v2),
    ("torch._utils", "_rebuild_parameter"): _Function(_rebuild_parameter),
    ("torch._utils", "_rebuild_parameter_with_state"): _Function(_rebuild_parameter_with_state),
    **{("torch", name): stype for name, stype in _STORAGE_TYPES.items()},
}


class _RestrictedUnpickler(pickle.Unpickler):
    """Unpickler that resolves only the allow-listed globals and records storages.

    ``legacy`` selects the persistent-id layout: zip files use
    ``('storage', type, key, location, numel)``, legacy files add ``view_metadata``.
    With ``allow_globals=False`` no global at all resolves (the legacy preamble pickles).
    """

    def __init__(self, file: io.BytesIO, source: str, *, legacy: bool, allow_globals: bool = True) -> None:
        super().__init__(file)
        self.source = source
        self.legacy = legacy
        self.allow_globals = allow_globals
        self.storages: dict[str, _StorageRef] = {}

    def find_class(self, module: str, name: str) -> Any:
        target = _ALLOWED_GLOBALS.get((module, name)) if self.allow_globals else None
        if target is None:
            raise WeightsError(
                f"{self.source}: refusing to unpickle global {_one_line(module)}.{_one_line(name)}"
                " (only tensors, storages and OrderedDict are allowed)"
            )
        return target

    def persistent_load(self, pid: Any) -> _StorageRef:
        arity = 6 if self.legacy else 5
        if not (self.allow_globals and isinstance(pid, tuple) and len(pid) == arity and pid[0] == "storage"):
            raise WeightsError(f"{self.source}: unexpected persistent id in the pickle (not a tensor storage)")
        stype, key, numel = pid[1], pid[2], pid[4]
        if not isinstance(stype, _StorageType) or not isinstance(key, str) or not key:
            raise WeightsError(f"{self.source}: malformed storage record {_show(key)}")
        if not isinstance(numel, int) or isinstance(numel, bool) or numel < 0:
            raise WeightsError(f"{self.source}: storage {_show(key)} has an invalid element count")
        if self.legacy and pid[5] is not None:
            raise WeightsError(f"{self.source}: storage {_show(key)} is a pre-1.0 storage view (unsupported)")
        known = self.storages.get(key)
        if known is not None and (known.stype is not stype or known.numel != numel):
            raise WeightsError(f"{self.source}: storage {_show(key)} is declared twice with different types or sizes")
        self.storages.setdefault(key, _StorageRef(key, stype, numel))
        return self.storages[key]


_MEMO_PUTS = frozenset({"PUT", "BINPUT", "LONG_BINPUT"})


def _prescan(f: io.BytesIO, source: str, what: str) -> None:
    """Walk the pickle's opcodes up to STOP without executing anything, then rewind.

    The C unpickler trusts declared sizes before reading: a BYTEARRAY8 length is
    allocated up front, and a LONG_BINPUT of 2**31 makes it allocate and zero a memo of
    16 GiB. pickletools checks every length against the bytes actually present, and a
    memo index may not exceed the opcode count (a real pickler numbers them from 0).
    """
    start = f.tell()
    try:
        for count, (op, arg, _) in enumerate(pickletools.genops(f)):
            if op.name in _MEMO_PUTS and arg > count:
                raise WeightsError(f"{source}: corrupt {what}: memo index {arg} at opcode {count}")
    except WeightsError:
        raise
    except Exception as exc:  # truncated data, unknown opcode, bad argument
        raise WeightsError(f"{source}: corrupt {what}: {type(exc).__name__}: {_one_line(exc)}") from None
    f.seek(start)


def _unpickle(f: io.BytesIO, source: str, what: str, **kwargs: Any) -> tuple[Any, _RestrictedUnpickler]:
    _prescan(f, source, what)
    unpickler = _RestrictedUnpickler(f, source, **kwargs)
    try:
        return unpickler.load(), unpickler
    except WeightsError:
        raise
    except Exception as exc:  # any malformed pickle surfaces as a weights error, one line
        raise WeightsError(f"{source}: corrupt {what}: {type(exc).__name__}: {_one_line(exc)}") from None


# --------------------------------------------------------------------------- tensors


def _storage_array(raw: bytes | memoryview, ref: _StorageRef, source: str, byteorder: str = "<") -> np.ndarray:
    """Decode one storage's bytes (exactly numel elements, in ``byteorder``: "<" little, ">"
    big endian) to a native 1-d array."""
    if len(raw) != ref.numel * ref.stype.dtype.itemsize:
        raise WeightsError(
            f"{source}: storage {_show(ref.key)} holds {len(raw)} bytes, expected {ref.numel} x {ref.stype.dtype.itemsize}"
        )
    array = np.frombuffer(raw, dtype=ref.stype.dtype.newbyteorder(byteorder))
    if ref.stype.name == "BFloat16Storage":
        return (array.astype(np.uint32) << 16).view(np.float32)
    if ref.stype.name == "BoolStorage" and array.size and array.view(np.uint8).max() > 1:
        raise WeightsError(f"{source}: storage {_show(ref.key)}: bool byte other than 0 or 1")
    return array.astype(array.dtype.newbyteorder("="), copy=False)


def _as_int_tuple(value: Any) -> tuple[int, ...] | None:
    if not isinstance(value, tuple) or not all(isinstance(v, int) and not isinstance(v, bool) for v in value):
        return None
    return value


def _check_view(ref: _TensorRef, source: str, name: str) -> tuple[tuple[int, ...], tuple[int, ...], int]:
    size, stride, offset = _as_int_tuple(ref.size), _as_int_tuple(ref.stride), ref.offset
    storage = ref.storage
    if not isinstance(storage, _StorageRef):
        raise WeightsError(f"{source}: tensor {_show(name)} is not backed by a storage")
    if size is None or stride is None or len(size) != len(stride):
        raise WeightsError(f"{source}: tensor {_show(name)} has a malformed size/stride {_show(ref.size)}/{_show(ref.stride)}")
    if not isinstance(offset, int) or isinstance(offset, bool) or offset < 0:
        raise WeightsError(f"{source}: tensor {_show(name)} has an invalid storage offset {_show(offset)}")
    if any(s < 0 for s in size) or any(s < 0 for s in stride):
        raise WeightsError(f"{source}: tensor {_show(name)} has a negative size or stride {_show(size)}/{_show(stride)}")
    numel = math.prod(size)
    last = offset + sum((n - 1) * s for n, s in zip(size, stride, strict=True)) if numel else offset - 1
    if last >= storage.numel:
        raise WeightsError(
            f"{source}: tensor {_show(name)} of size {_show(list(size))} (stride {_show(list(stride))}, offset {_show(offset)})"
            f" reads past its storage of {storage.numel} elements"
        )
    if numel > max(storage.numel, _MAX_EXPANDED_NUMEL):
        raise WeightsError(f"{source}: tensor {_show(name)} expands {storage.numel} stored elements to {numel}")
    return size, stride, offset


def _build_tensor(view: tuple[tuple[int, ...], tuple[int, ...], int], storage: np.ndarray) -> np.ndarray:
    """The tensor a view checked by ``_check_view`` reads from ``storage``, as its own array."""
    size, stride, offset = view
    if math.prod(size) == 0:
        return np.empty(size, dtype=storage.dtype)
    itemsize = storage.dtype.itemsize
    view = np.lib.stride_tricks.as_strided(
        storage[offset:], shape=size, strides=tuple(s * itemsize for s in stride), writeable=False
    )
    return np.array(view, copy=True)  # own the memory; the storage buffer may be shared


def _select_state_dict(obj: Any, source: str) -> dict[str, _TensorRef]:
    """Unwrap {"state_dict"|"model": ...}, check every value is a tensor, strip "module."."""
    if not isinstance(obj, dict):
        raise WeightsError(f"{source}: the pickle holds a {type(obj).__name__}, not a state_dict")
    for wrapper in ("state_dict", "model"):
        inner = obj.get(wrapper)
        if isinstance(inner, dict):
            obj = inner
            break
    for key, value in obj.items():
        if not isinstance(key, str):
            raise WeightsError(f"{source}: state_dict key of type {type(key).__name__} is not a string")
        if not isinstance(value, _TensorRef):
            raise WeightsError(f"{source}: tensor {_show(key)} is a {type(value).__name__}, not a tensor")
    if obj and all(key.startswith("module.") for key in obj):
        obj = {key[len("module.") :]: value for key, value in obj.items()}
    return dict(obj)


def _materialise(
    refs: dict[str, _TensorRef], load_storage: Callable[[_StorageRef], np.ndarray], source: str
) -> dict[str, np.ndarray]:
    cache: dict[str, np.ndarray] = {}
    out: dict[str, np.ndarray] = {}
    for name, ref in refs.items():
        view = _check_view(ref, source, name)  # before the storage is read
        key = ref.storage.key
        if key not in cache:
            cache[key] = load_storage(ref.storage)
        out[name] = _build_tensor(view, cache[key])
    return out


# --------------------------------------------------------------------------- zip layout


def check_zip_sizes(infos: list[zipfile.ZipInfo], archive_size: int, source: str) -> None:
    """Refuse a zip whose declared sizes are absurd for a file of ``archive_size`` bytes.

    Reads only the central directory, so it runs before anything is decompressed.
    """
    total = 0
    for info in infos:
        if info.compress_type == zipfile.ZIP_STORED and info.file_size != info.compress_size:
            raise WeightsError(f"{source}: zip entry {_show(info.filename)} is stored but its sizes disagree")
        if info.file_size > _SMALL_ENTRY and info.file_size > _MAX_RATIO * max(info.compress_size, 1):
            raise WeightsError(
                f"{source}: zip entry {_show(info.filename)} claims {info.file_size} bytes from"
                f" {info.compress_size} compressed (zip bomb?)"
            )
        total += info.file_size
    if total > _MAX_TOTAL_RATIO * archive_size + _SMALL_ENTRY:
        raise WeightsError(f"{source}: zip entries claim {total} bytes in a {archive_size}-byte file (zip bomb?)")


def _find_record_prefix(names: list[str], source: str) -> str:
    pickles = [n for n in names if n.endswith("/data.pkl") and n.count("/") == 1]
    if len(pickles) != 1:
        raise WeightsError(f"{source}: not a torch zip checkpoint (expected one <folder>/data.pkl, found {len(pickles)})")
    return pickles[0][: -len("data.pkl")]


def _read_member(zf: zipfile.ZipFile, name: str, source: str) -> bytes:
    try:
        return zf.read(name)
    except KeyError:
        raise WeightsError(f"{source}: zip entry {_show(name)} is missing") from None
    except Exception as exc:  # BadZipFile (CRC), zlib.error, EOFError, NotImplementedError...
        raise WeightsError(f"{source}: zip entry {_show(name)} is corrupt: {type(exc).__name__}: {_one_line(exc)}") from None


def _zip_byteorder(zf: zipfile.ZipFile, prefix: str, source: str) -> str:
    if prefix + "byteorder" not in zf.NameToInfo:
        return "little"  # files from before torch wrote it are little-endian
    order = _read_member(zf, prefix + "byteorder", source).decode("ascii", "replace").strip()
    if order not in ("little", "big"):
        raise WeightsError(f"{source}: unknown byteorder {_show(order)}")
    return order


def open_zip(data: bytes, source: str) -> tuple[zipfile.ZipFile, list[zipfile.ZipInfo]]:
    """Open a zip held in memory and check its entries' sizes (zip bombs) before anything is
    read from it: (archive, entries). WeightsError naming ``source`` otherwise."""
    try:
        zf = zipfile.ZipFile(io.BytesIO(data))
        infos = zf.infolist()
    except Exception as exc:
        raise WeightsError(f"{source}: not a readable zip file: {type(exc).__name__}: {_one_line(exc)}") from None
    try:
        check_zip_sizes(infos, len(data), source)
    except WeightsError:
        zf.close()
        raise
    return zf, infos


def read_pth_zip_bytes(data: bytes, source: str) -> dict[str, np.ndarray]:
    """Read a zip-layout ``.pth`` held in memory; ``source`` names it in errors."""
    zf, infos = open_zip(data, source)
    with zf:
        return read_pth_zip(zf, infos, source)


def read_pth_zip(zf: zipfile.ZipFile, infos: list[zipfile.ZipInfo], source: str) -> dict[str, np.ndarray]:
    """Read a zip-layout ``.pth`` from an archive :func:`open_zip` opened and checked."""
    prefix = _find_record_prefix([i.filename for i in infos], source)
    byteorder = ">" if _zip_byteorder(zf, prefix, source) == "big" else "<"
    pkl = _read_member(zf, prefix + "data.pkl", source)
    obj, _ = _unpickle(io.BytesIO(pkl), source, "data.pkl", legacy=False)
    refs = _select_state_dict(obj, source)

    def load_storage(ref: _StorageRef) -> np.ndarray:
        raw = _read_member(zf, f"{prefix}data/{ref.key}", source)
        return _storage_array(raw, ref, source, byteorder)

    return _materialise(refs, load_storage, source)


# --------------------------------------------------------------------------- legacy layout


def _legacy_preamble(f: io.BytesIO, source: str) -> None:
    magic, _ = _unpickle(f, source, "legacy magic number", legacy=True, allow_globals=False)
    if magic != LEGACY_MAGIC_NUMBER:
        raise WeightsError(f"{source}: not a torch file (legacy magic number missing)")
    protocol, _ = _unpickle(f, source, "legacy protocol version", legacy=True, allow_globals=False)
    if protocol != LEGACY_PROTOCOL_VERSION:
        raise WeightsError(f"{source}: unsupported legacy torch protocol version {_show(protocol)}")
    sys_info, _ = _unpickle(f, source, "legacy sys_info", legacy=True, allow_globals=False)
    if not isinstance(sys_info, dict) or sys_info.get("little_endian") is not True:
        raise WeightsError(f"{source}: legacy file is not from a little-endian machine (unsupported)")


def _legacy_storages(f: io.BytesIO, storages: dict[str, _StorageRef], source: str) -> dict[str, np.ndarray]:
    keys, _ = _unpickle(f, source, "legacy storage key list", legacy=True, allow_globals=False)
    if not isinstance(keys, list) or not all(isinstance(k, str) for k in keys):
        raise WeightsError(f"{source}: legacy storage key list is malformed")
    arrays: dict[str, np.ndarray] = {}
    for key in keys:
        ref = storages.get(key)
        if ref is None or key in arrays:
            raise WeightsError(f"{source}: legacy storage {_show(key)} is listed but not referenced, or listed twice")
        header = f.read(8)
        if len(header) != 8:
            raise WeightsError(f"{source}: truncated: storage {_show(key)} is missing")
        (numel,) = struct.unpack("<q", header)
        if numel != ref.numel:
            raise WeightsError(f"{source}: storage {_show(key)} holds {numel} elements, its record says {ref.numel}")
        nbytes = numel * ref.stype.dtype.itemsize
        raw = f.read(nbytes)
        if len(raw) != nbytes:
            raise WeightsError(f"{source}: truncated: storage {_show(key)} has {len(raw)} of {nbytes} bytes")
        arrays[key] = _storage_array(raw, ref, source)
    return arrays


def read_pth_legacy_bytes(data: bytes, source: str) -> dict[str, np.ndarray]:
    """Read a legacy (non-zip) ``.pth`` held in memory; ``source`` names it in errors."""
    f = io.BytesIO(data)
    _legacy_preamble(f, source)
    obj, unpickler = _unpickle(f, source, "data pickle", legacy=True)
    refs = _select_state_dict(obj, source)
    arrays = _legacy_storages(f, unpickler.storages, source)

    def load_storage(ref: _StorageRef) -> np.ndarray:
        if ref.key not in arrays:
            raise WeightsError(f"{source}: storage {_show(ref.key)} is referenced but absent from the file")
        return arrays[ref.key]

    return _materialise(refs, load_storage, source)


# --------------------------------------------------------------------------- entry points


def read_pth_bytes(data: bytes, source: str) -> dict[str, np.ndarray]:
    """Read a ``.pth`` (zip or legacy layout) held in memory; WeightsError otherwise."""
    if data.startswith(ZIP_MAGIC):
        return read_pth_zip_bytes(data, source)
    if data[:1] == b"\x80":
        return read_pth_legacy_bytes(data, source)
    raise WeightsError(f"{source}: not a torch .pth file (neither a zip archive nor a pickle)")


def read_pth(path: str | os.PathLike[str]) -> dict[str, np.ndarray]:
    """Read a ``torch.save``-d state dict from ``path`` (see the module docstring)."""
    path = Path(path)
    return read_pth_bytes(read_file_bytes(path), str(path))

"""The decoded-image store: uint8 rows in RAM or in one memory-mapped cache file on disk.

Decode once, read memory-mapped (FFCV's .beton, numpy's memmap). A source that decodes
image files (the imagefolder) hands its decoder a *sink*; the sink keeps uint8 rows
(N, C, S, S) in RAM (``data.cache: off``) or streams them into a cache file that later runs
find again by a fingerprint of what made it (``auto`` or a PATH). Either way the loader gets
an :class:`ImageRows`: it asks for rows by index and receives uint8 arrays; floats exist
only per batch (:func:`to_unit_float`). Sources never see this module's files or locks.

Cache file layout (little-endian; every offset is in the header)::

    0       b"ATCACHE\\x01" and zero padding to 64 bytes
    64      pixels   uint8  (N, C, S, S)
    ...     labels   int64  (N,)            \\
    ...     sums     int64  (N, C)           > "the index", covered by index_sha256
    ...     squares  int64  (N, C)          /
    ...     header   JSON (utf-8)
    end-48  header length uint64, sha256 of the header, b"ATCEND\\x00\\x01"

``sums``/``squares`` are each image's per-channel sum of pixel values and of their
squares (exact integers), so the train split's mean and std come from them in one pass
over N x C integers at start, for any split, without reading a pixel.

Writers: one file is built by one process at a time, under ``fcntl.flock`` on
``<file>.lock``; it is written to ``.<file>.tmp-<pid>`` and renamed when whole, so a reader
(another run, another MPI rank) sees either no file or a complete one, and a build killed
with ``kill -9`` leaves only a temp file that the next builder removes. A file whose size,
header or index checksum is wrong is rebuilt with a one-line warning; pixel bytes are not
checksummed at open (that would read the whole file), only their extent.
"""

from __future__ import annotations

import errno
import fcntl
import hashlib
import json
import math
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np

from autotrain.data.arrays import dataset_error

FORMAT_VERSION = 1
SUFFIX = ".atcache"
CACHE_DIR_ENV = "AUTOTRAIN_CACHE_DIR"
_MAGIC = b"ATCACHE\x01"
_END_MAGIC = b"ATCEND\x00\x01"
_PIXELS_OFFSET = 64
_TRAILER = 48  # header length (8) + header sha256 (32) + end magic (8)
_MAX_HEADER = 1 << 30
# Rows of per-image sums added per step when the split's statistics are summed: int64
# partial sums of at most this many images cannot overflow (255^2 x 1024^2 x 2^16 < 2^63).
_SUM_CHUNK = 1 << 16

Notify = Callable[[str], None]
_ABSENT = (FileNotFoundError, NotADirectoryError)  # no cache file there yet: nothing to warn about


def to_unit_float(pixels: np.ndarray) -> np.ndarray:
    """uint8 pixels as float32 in [0, 1]: ``float32(v) / float32(255)``, the same division the
    decoder always used, so a value reads back bit-identical to a fresh decode."""
    out = pixels.astype(np.float32)
    out /= np.float32(255.0)
    return out


def per_image_sums(rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per-image, per-channel sum of the uint8 values of (k, C, H, W) ``rows`` and of their
    squares, as int64 (k, C) arrays (exact: integer arithmetic)."""
    flat = rows.reshape(rows.shape[0], rows.shape[1], -1).astype(np.int64)
    return flat.sum(axis=2), np.einsum("kcp,kcp->kc", flat, flat)


class ImageRows:
    """Decoded images as uint8 (N, C, S, S) rows, from RAM or a memory-mapped cache file.

    A view over a subset of the stored rows (a train or validation split) is another
    ImageRows sharing the same pixels: nothing is copied. ``take(positions)`` returns the
    uint8 rows at those positions of the view, gathered in sorted order (sequential reads of
    the file) and returned in the order asked. As an array (``shape``, indexing,
    ``np.asarray``) it reads as the float32 0..1 pixels the other sources give, so code that
    looks at a split's ``train_x`` needs no special case; the loader uses ``take``.
    """

    dtype = np.dtype(np.float32)
    ndim = 4

    def __init__(self, pixels: np.ndarray, sums: np.ndarray, squares: np.ndarray,
                 index: np.ndarray | None = None, path: Path | None = None) -> None:
        self.pixels, self.sums, self.squares, self.path = pixels, sums, squares, path
        self.index = None if index is None else np.asarray(index, dtype=np.int64)

    def __len__(self) -> int:
        return int(self.pixels.shape[0] if self.index is None else self.index.shape[0])

    @property
    def shape(self) -> tuple[int, ...]:
        return (len(self),) + tuple(self.pixels.shape[1:])

    @property
    def memory_mapped(self) -> bool:
        """True when the pixels are read from a cache file rather than held in RAM."""
        return self.path is not None

    def _stored(self, positions: np.ndarray) -> np.ndarray:
        positions = np.asarray(positions, dtype=np.int64)
        return positions if self.index is None else self.index[positions]

    def subset(self, positions: np.ndarray) -> ImageRows:
        """The rows at ``positions`` of this view, as a new view (no pixel is copied)."""
        return ImageRows(self.pixels, self.sums, self.squares, self._stored(positions), self.path)

    def take(self, positions: np.ndarray) -> np.ndarray:
        """uint8 (k, C, S, S) copy of the rows at ``positions`` (in that order)."""
        stored = self._stored(positions)
        if stored.size < 2 or np.all(stored[1:] >= stored[:-1]):
            return self.pixels[stored]
        order = np.argsort(stored, kind="stable")
        out = np.empty((stored.shape[0],) + self.pixels.shape[1:], dtype=np.uint8)
        out[order] = self.pixels[stored[order]]
        return out

    def __getitem__(self, key: Any) -> np.ndarray:
        rows, rest = (key[0], key[1:]) if isinstance(key, tuple) else (key, ())
        positions = np.arange(len(self), dtype=np.int64)[rows]
        pixels = to_unit_float(self.take(np.atleast_1d(positions)))
        if positions.ndim == 0:
            return pixels[0][rest]
        return pixels[(slice(None),) + tuple(rest)]

    def __array__(self, dtype: Any = None, copy: Any = None) -> np.ndarray:
        pixels = to_unit_float(self.take(np.arange(len(self))))
        return pixels if dtype is None else pixels.astype(dtype, copy=False)

    def channel_stats(self) -> tuple[list[float], list[float]]:
        """Per-channel mean and population std of this view's pixels in [0, 1], from the
        stored per-image integer sums (exact until the final division and square root).
        A flat channel (std below 1e-6) gets std 1.0, an empty view mean 0 and std 1, as
        ``arrays.channel_stats`` does for float arrays."""
        channels = self.pixels.shape[1]
        count = len(self) * self.pixels.shape[2] * self.pixels.shape[3]
        if count == 0:
            return [0.0] * channels, [1.0] * channels
        stored = np.arange(self.pixels.shape[0]) if self.index is None else self.index
        total = [0] * channels
        squares = [0] * channels
        for start in range(0, stored.shape[0], _SUM_CHUNK):
            part = stored[start : start + _SUM_CHUNK]
            total = [t + int(v) for t, v in zip(total, self.sums[part].sum(axis=0))]
            squares = [t + int(v) for t, v in zip(squares, self.squares[part].sum(axis=0))]
        scale = count * 255
        mean = [t / scale for t in total]
        # Variance x (count * 255)^2 = count * sum(v^2) - sum(v)^2, an exact integer.
        std = [math.sqrt(max(count * q - t * t, 0)) / scale for t, q in zip(total, squares)]
        std = [1.0 if s < 1e-6 else s for s in std]
        return mean, std


# --------------------------------------------------------------------------- sinks


class _Sink:
    """Rows arrive in dataset order through ``append``; labels and per-image sums (small)
    are kept in RAM by every sink, the pixels where the subclass puts them."""

    def __init__(self, channels: int) -> None:
        self.channels = channels
        self.count = 0
        self._labels: list[np.ndarray] = []
        self._sums: list[np.ndarray] = []
        self._squares: list[np.ndarray] = []

    def append(self, rows: np.ndarray, labels: np.ndarray) -> None:
        """Store uint8 (k, C, S, S) ``rows`` and their int labels after the earlier ones."""
        rows = np.ascontiguousarray(rows, dtype=np.uint8)
        self._store(rows)
        sums, squares = per_image_sums(rows)
        self._labels.append(np.asarray(labels, dtype=np.int64))
        self._sums.append(sums)
        self._squares.append(squares)
        self.count += rows.shape[0]

    def _store(self, rows: np.ndarray) -> None:
        raise NotImplementedError

    def index(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(labels (N,), sums (N, C), squares (N, C)), all int64."""
        def stacked(parts: list[np.ndarray], shape: tuple[int, ...]) -> np.ndarray:
            return np.concatenate(parts) if parts else np.empty(shape, dtype=np.int64)
        return (stacked(self._labels, (0,)), stacked(self._sums, (0, self.channels)),
                stacked(self._squares, (0, self.channels)))


class MemorySink(_Sink):
    """Keeps decoded rows in a RAM array of ``capacity`` rows (``data.cache: off``)."""

    def __init__(self, capacity: int, channels: int, size: int) -> None:
        super().__init__(channels)
        self._pixels = np.empty((capacity, channels, size, size), dtype=np.uint8)

    def _store(self, rows: np.ndarray) -> None:
        self._pixels[self.count : self.count + rows.shape[0]] = rows

    def result(self) -> tuple[ImageRows, np.ndarray]:
        labels, sums, squares = self.index()
        return ImageRows(self._pixels[: self.count], sums, squares), labels


class _FileSink(_Sink):
    """Streams decoded rows into an open cache file (see the module docstring's layout)."""

    def __init__(self, handle, channels: int, size: int) -> None:
        super().__init__(channels)
        self._handle = handle
        self._row_bytes = channels * size * size
        self._size = size
        handle.write(_MAGIC.ljust(_PIXELS_OFFSET, b"\0"))

    def _store(self, rows: np.ndarray) -> None:
        self._handle.write(memoryview(rows).cast("B"))  # flat bytes, no copy

    def finish(self, header: dict[str, Any]) -> None:
        """Write the index, the header and the trailer after the pixels."""
        end = _PIXELS_OFFSET + self.count * self._row_bytes
        labels_offset = _align(end)
        self._handle.write(b"\0" * (labels_offset - end))
        index = b"".join(part.astype("<i8").tobytes() for part in self.index())
        self._handle.write(index)
        header = dict(header, version=FORMAT_VERSION, count=self.count, channels=self.channels,
                      size=self._size, labels_offset=labels_offset, index_bytes=len(index),
                      index_sha256=hashlib.sha256(index).hexdigest())
        text = json.dumps(header, sort_keys=True).encode()
        self._handle.write(text)
        self._handle.write(len(text).to_bytes(8, "little") + hashlib.sha256(text).digest() + _END_MAGIC)


def _align(offset: int, to: int = 64) -> int:
    return (offset + to - 1) // to * to


# --------------------------------------------------------------------------- reading


class _Unusable(Exception):
    """A cache file that cannot be used: ``stale`` (made from other data) or corrupt."""

    def __init__(self, reason: str, stale: bool = False) -> None:
        super().__init__(reason)
        self.stale = stale


@dataclass
class Cached:
    """What a cache file (or a RAM decode) holds: the rows, their labels, and the header's
    extra fields the source stored (skipped files, ...)."""

    rows: ImageRows
    labels: np.ndarray
    extra: dict[str, Any] = field(default_factory=dict)


def _read_cache(path: Path, fingerprint: str) -> Cached:
    """Open and check a cache file; raise _Unusable saying what is wrong with it."""
    try:
        size = path.stat().st_size
        with open(path, "rb") as handle:
            head = handle.read(len(_MAGIC))
            if size < _PIXELS_OFFSET + _TRAILER or head != _MAGIC:
                raise _Unusable(f"not an autotrain cache file ({size} bytes)")
            handle.seek(size - _TRAILER)
            trailer = handle.read(_TRAILER)
            length = int.from_bytes(trailer[:8], "little")
            if trailer[40:] != _END_MAGIC or not 0 < length <= min(_MAX_HEADER, size - _TRAILER - _PIXELS_OFFSET):
                raise _Unusable("truncated or incomplete (no valid trailer at the end)")
            handle.seek(size - _TRAILER - length)
            text = handle.read(length)
            if hashlib.sha256(text).digest() != trailer[8:40]:
                raise _Unusable("header checksum mismatch")
            header = json.loads(text)
            if header.get("version") != FORMAT_VERSION:
                raise _Unusable(f"format version {header.get('version')}, expected {FORMAT_VERSION}", stale=True)
            if header.get("fingerprint") != fingerprint:
                raise _Unusable("made from other data (fingerprint differs)", stale=True)
            count, channels, side = header["count"], header["channels"], header["size"]
            labels_offset, index_bytes = header["labels_offset"], header["index_bytes"]
            expected = labels_offset + index_bytes + length + _TRAILER
            if labels_offset < _PIXELS_OFFSET + count * channels * side * side \
                    or index_bytes != 8 * count * (1 + 2 * channels) or expected != size:
                raise _Unusable(f"size {size} bytes does not match its header ({expected} bytes)")
            handle.seek(labels_offset)
            index = handle.read(index_bytes)
            if hashlib.sha256(index).hexdigest() != header["index_sha256"]:
                raise _Unusable("index checksum mismatch")
    except _Unusable:
        raise
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise _Unusable(f"unreadable ({' '.join(str(exc).split()) or type(exc).__name__})") from exc
    table = np.frombuffer(index, dtype="<i8").astype(np.int64)
    labels = table[:count]
    sums = table[count : count * (1 + channels)].reshape(count, channels)
    squares = table[count * (1 + channels):].reshape(count, channels)
    shape = (count, channels, side, side)
    # np.asarray drops the memmap subclass: plain ndarray indexing over the mapped pages.
    pixels = np.asarray(np.memmap(path, dtype=np.uint8, mode="r", offset=_PIXELS_OFFSET, shape=shape)) \
        if count else np.empty(shape, dtype=np.uint8)
    return Cached(ImageRows(pixels, sums, squares, path=path), labels, header.get("extra", {}))


# --------------------------------------------------------------------------- locating


def default_cache_dir() -> Path:
    """Where ``data.cache: auto`` keeps cache files: ``$AUTOTRAIN_CACHE_DIR``, else
    ``$XDG_CACHE_HOME/autotrain/data``, else ``~/.cache/autotrain/data``."""
    explicit = os.environ.get(CACHE_DIR_ENV)
    if explicit:
        return Path(explicit)
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "autotrain" / "data"


def fingerprint(description: dict[str, Any]) -> str:
    """sha256 (hex) of a JSON description of what makes a cache: source, path, each file's
    name, size and mtime, image_size, in_channels, classes, the decoder's version."""
    text = json.dumps(dict(description, cache_format=FORMAT_VERSION), sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()


def cache_file(setting: str, name: str, key: str) -> tuple[Path, bool]:
    """(cache file, explicit?) for a ``data.cache`` setting other than "off".

    ``auto``: ``<default_cache_dir()>/<name>-<key[:16]>.atcache``. A PATH that is a folder
    (or ends with a separator) holds fingerprint-named files the same way; any other PATH
    is the cache file itself (rebuilt when made from other data).
    """
    if setting == "auto":
        return default_cache_dir() / f"{name}-{key[:16]}{SUFFIX}", False
    path = Path(os.path.expanduser(setting))
    if path.is_dir() or setting.endswith(("/", os.sep)):
        return path / f"{name}-{key[:16]}{SUFFIX}", True
    return path, True


_TEMP = re.compile(r"^\.(?P<name>.+)\.tmp-\d+$")


def _remove_stale_temps(path: Path) -> None:
    """Remove ``.<name>.tmp-<pid>`` left by killed builders (call with the lock held: a live
    builder holds the lock, so every temp file seen then is a dead one's)."""
    try:
        entries = list(os.scandir(path.parent))
    except OSError:
        return
    for entry in entries:
        match = _TEMP.match(entry.name)
        if match and match["name"] == path.name:
            try:
                os.unlink(entry.path)
            except OSError:
                pass


def _write(path: Path, channels: int, size: int, build: Callable[[MemorySink], dict[str, Any]],
           key: str, made_from: dict[str, Any]) -> None:
    """Build the cache into a temp file, fsync it, rename it over ``path``, fsync the folder."""
    temp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        with open(temp, "wb") as handle:
            sink = _FileSink(handle, channels, size)
            extra = build(sink)
            sink.finish({"fingerprint": key, "made_from": made_from, "extra": extra})
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(temp, path)
    except BaseException:
        try:
            temp.unlink()
        except OSError:
            pass
        raise
    try:
        folder = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(folder)
        finally:
            os.close(folder)
    except OSError:
        pass


@dataclass
class CacheInfo:
    """How a load went: the setting, the file (None in RAM) and what happened to it:
    "read" (found and used), "built", "rebuilt" (was corrupt or made from other data),
    or "memory" (decoded into RAM)."""

    setting: str
    path: str | None
    status: str
    bytes: int = 0

    def as_dict(self) -> dict[str, Any]:
        return {"setting": self.setting, "path": self.path, "status": self.status, "bytes": self.bytes}


def _in_memory(capacity: int, channels: int, size: int,
               build: Callable[[MemorySink], dict[str, Any]]) -> Cached:
    sink = MemorySink(capacity, channels, size)
    extra = build(sink)
    rows, labels = sink.result()
    return Cached(rows, labels, extra)


def load_or_build(setting: str | os.PathLike[str] | None, name: str, key: str, made_from: dict[str, Any], capacity: int,
                  channels: int, size: int, build: Callable[[MemorySink], dict[str, Any]],
                  notify: Notify | None = None) -> tuple[Cached, CacheInfo]:
    """The decoded images for fingerprint ``key``, from the cache or from ``build``.

    ``build(sink)`` decodes the source in dataset order into ``sink.append(rows, labels)``
    and returns JSON-able extra facts to keep (skipped files, ...); ``capacity`` bounds the
    rows it may append. ``setting`` None or "off": build into RAM. "auto" or a PATH (see
    :func:`cache_file`): use a valid file, else build it under the lock while other
    processes wait. ``notify`` receives one-line warnings (a rebuilt cache, a wait).

    Raises DatasetError (exit 4) naming the file when an explicit PATH cannot be
    (re)written; with "auto" an unwritable cache folder falls back to RAM with a warning.
    """
    say = notify or (lambda text: None)
    setting = None if setting is None else os.fspath(setting)
    if setting in (None, "off"):
        return _in_memory(capacity, channels, size, build), CacheInfo("off", None, "memory")
    path, explicit = cache_file(setting, name, key)
    try:
        cached = _read_cache(path, key)
        return cached, CacheInfo(setting, str(path), "read", path.stat().st_size)
    except _Unusable as exc:
        problem = None if isinstance(exc.__cause__, _ABSENT) else exc
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except (FileExistsError, NotADirectoryError):
        error = NotADirectoryError(errno.ENOTDIR, f"{path.parent} is not a folder")
        return _cannot_write(path, explicit, problem, error, say, capacity, channels, size, build, setting)
    except OSError as exc:
        return _cannot_write(path, explicit, problem, exc, say, capacity, channels, size, build, setting)
    try:
        lock = os.open(path.with_name(path.name + ".lock"), os.O_RDWR | os.O_CREAT, 0o644)
    except OSError as exc:
        return _cannot_write(path, explicit, problem, exc, say, capacity, channels, size, build, setting)
    try:
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            say(f"data cache {path}: another process is building it; waiting")
            fcntl.flock(lock, fcntl.LOCK_EX)
        try:  # it may have been built while this process waited
            cached = _read_cache(path, key)
            return cached, CacheInfo(setting, str(path), "read", path.stat().st_size)
        except _Unusable as exc:
            problem = None if isinstance(exc.__cause__, _ABSENT) else exc
        if problem is not None:
            say(f"data cache {path}: {problem}; rebuilding it")
        _remove_stale_temps(path)
        try:
            _write(path, channels, size, build, key, made_from)
        except OSError as exc:
            return _cannot_write(path, explicit, problem, exc, say, capacity, channels, size, build, setting)
        try:
            cached = _read_cache(path, key)
        except _Unusable as exc:  # written and renamed, yet unreadable: the disk is lying
            raise dataset_error(path, f"data cache unreadable right after it was written ({exc})") from None
        return cached, CacheInfo(setting, str(path), "built" if problem is None else "rebuilt", path.stat().st_size)
    finally:
        os.close(lock)  # releases the flock


def _cannot_write(path: Path, explicit: bool, problem: _Unusable | None, error: OSError, say: Notify,
                  capacity: int, channels: int, size: int, build, setting: str) -> tuple[Cached, CacheInfo]:
    """An explicit PATH that cannot be (re)written is a dataset error (exit 4) naming it;
    the automatic location falls back to decoding into RAM, with a warning."""
    reason = error.strerror or str(error)
    if explicit:
        what = "data cache cannot be written" if problem is None else \
            f"data cache is unusable ({problem}) and cannot be rewritten"
        raise dataset_error(path, f"{what}: {reason}")
    say(f"data cache {path}: cannot be written ({reason}); decoding into memory "
        "(set data.cache to a writable folder)")
    return _in_memory(capacity, channels, size, build), CacheInfo(setting, None, "memory")

"""Atomic, self-verifying training checkpoints in safetensors.

A checkpoint is one safetensors file:

* the model's state under its bare names (``conv1.weight``, ``bn1.running_mean``, ...);
* optimizer buffers under ``optimizer.<name>`` (e.g. ``optimizer.momentum_buffer.fc.weight``);
* ``__metadata__``: each caller metadata value JSON-encoded under its key (config, epoch,
  step, schedule state, normalisation, class names, RNG state, version, metrics, ...),
  plus ``format`` and ``sha256``. The hash covers every tensor (name, dtype, shape,
  bytes) and every other metadata entry, so a reader detects a flipped byte anywhere a
  header check would not (a payload byte, a renamed tensor, an edited epoch).

Files in a run folder: ``last.safetensors``, ``best.safetensors``, ``epoch-N.safetensors``.
Every write goes through :func:`atomic_write_bytes`, so a crash leaves either the old file
or the new one, never a torn one; a killed writer leaves at most a hidden
``.<name>.tmp-<pid>`` file, removed by :func:`clean_stale_temp_files`.

Test hooks (fault injection; never set them in production):

* ``AUTOTRAIN_FAULT_WRITE_SLEEP=<seconds>``: :func:`atomic_write_bytes` writes and flushes
  the first half of the data, sleeps that long, then writes the rest, so a test can
  ``kill -9`` the writer mid-write.
* ``AUTOTRAIN_FAULT_WRITE_ABORT=1``: the process exits at once with status 99
  (``os._exit``) after the first half, as a crash would.
"""

from __future__ import annotations

import errno
import hashlib
import json
import os
import re
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO
from collections.abc import Mapping

import numpy as np

from autotrain.errors import OutputError, WeightsError
from autotrain.io.safetensors_io import read_safetensors, read_safetensors_metadata, safetensors_bytes

FORMAT = "autotrain.checkpoint/1"
OPTIMIZER_PREFIX = "optimizer."
LAST_NAME = "last.safetensors"
BEST_NAME = "best.safetensors"
_RESERVED_KEYS = frozenset({"format", "sha256"})
_EPOCH_RE = re.compile(r"^epoch-(\d+)\.safetensors$")
_TEMP_RE = re.compile(r"^\..+\.tmp-(\d+)$")

FAULT_SLEEP_ENV = "AUTOTRAIN_FAULT_WRITE_SLEEP"
FAULT_ABORT_ENV = "AUTOTRAIN_FAULT_WRITE_ABORT"


@dataclass(frozen=True)
class Checkpoint:
    """A loaded checkpoint; ``metadata`` values are decoded from JSON."""

    model_state: dict[str, np.ndarray]
    optimizer_state: dict[str, np.ndarray]
    metadata: dict[str, Any]
    sha256: str


# --------------------------------------------------------------------------- atomic write


def temp_path_for(path: Path) -> Path:
    """The hidden temp file beside ``path``; its name never ends in ``.safetensors``."""
    return path.with_name(f".{path.name}.tmp-{os.getpid()}")


def unwritable_folder(out: Path) -> str | None:
    """Why files cannot be created in folder ``out`` (made if missing), or None when they can:
    ``"exists and is not a folder"``, or ``"is not writable (P does not accept new files)"``
    naming the nearest existing ancestor P. Checked before a run or a report writes anything."""
    if out.exists() and not out.is_dir():
        return "exists and is not a folder"
    probe = out
    while not probe.exists():
        probe = probe.parent
    if not probe.is_dir() or not os.access(probe, os.W_OK | os.X_OK):
        return f"is not writable ({probe} does not accept new files)"
    return None


def _write_payload(f: BinaryIO, data: bytes) -> None:
    sleep_s = os.environ.get(FAULT_SLEEP_ENV)
    abort = os.environ.get(FAULT_ABORT_ENV) == "1"
    if not sleep_s and not abort:
        f.write(data)
        return
    half = len(data) // 2
    f.write(data[:half])
    f.flush()  # make the torn state visible on disk for the test that kills us
    if sleep_s:
        time.sleep(float(sleep_s))
    if abort:
        os._exit(99)
    f.write(data[half:])


def _fsync_dir(folder: Path, target: Path) -> None:
    # The rename is durable only once the directory entry is on disk.
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError as exc:
        raise OutputError(f"cannot write {target}: cannot open its folder to sync it: {exc.strerror or exc}") from None
    try:
        os.fsync(fd)
    except OSError as exc:
        if exc.errno not in (errno.EINVAL, errno.ENOTSUP):  # filesystems that cannot sync a folder
            raise OutputError(f"cannot write {target}: syncing its folder failed: {exc.strerror or exc}") from None
    finally:
        os.close(fd)


def _remove_quietly(path: Path) -> None:
    try:
        os.unlink(path)
    except OSError:
        pass  # already gone, or the folder itself is unusable; the write error is what matters


def atomic_write_bytes(path: str | os.PathLike[str], data: bytes) -> None:
    """Replace ``path`` by ``data`` atomically and durably.

    Order: write a temp file in the same folder -> flush -> ``os.fsync(file)`` ->
    ``os.replace(temp, path)`` -> ``os.fsync(folder)``. On any OSError (ENOSPC, EACCES,
    a missing folder...) the temp file is removed, ``path`` keeps its old content, and
    OutputError naming ``path`` is raised.
    """
    path = Path(path)
    tmp = temp_path_for(path)
    try:
        with open(tmp, "wb") as f:
            _write_payload(f, data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except OSError as exc:
        _remove_quietly(tmp)
        raise OutputError(f"cannot write {path}: {exc.strerror or exc}") from None
    except BaseException:
        _remove_quietly(tmp)
        raise
    _fsync_dir(path.parent, path)


# --------------------------------------------------------------------------- hashing


def _json_default(value: Any) -> Any:
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, Path):
        return str(value)
    raise TypeError(f"{type(value).__name__} is not JSON serialisable")


def content_sha256(tensors: Mapping[str, np.ndarray], metadata: Mapping[str, str]) -> str:
    """SHA-256 over every tensor (sorted by name: name, dtype, shape, little-endian
    C-order bytes) and every metadata entry except ``sha256`` itself (sorted by key).

    Independent of the file layout, so the writer hashes arrays before serialising and
    the reader hashes what it decoded.
    """
    h = hashlib.sha256()
    for name in sorted(tensors):
        array = tensors[name]
        array = np.require(array.astype(array.dtype.newbyteorder("<"), copy=False), requirements="C")
        h.update(json.dumps([name, array.dtype.str, list(array.shape)]).encode())
        h.update(b"\0")
        h.update(memoryview(array).cast("B"))
    for key in sorted(k for k in metadata if k != "sha256"):
        h.update(json.dumps([key, metadata[key]]).encode())
        h.update(b"\0")
    return h.hexdigest()


# --------------------------------------------------------------------------- save / load


def _checkpoint_tensors(
    model_state: Mapping[str, np.ndarray], optimizer_state: Mapping[str, np.ndarray]
) -> dict[str, np.ndarray]:
    tensors: dict[str, np.ndarray] = {}
    for name, array in model_state.items():
        if name.startswith(OPTIMIZER_PREFIX):
            raise ValueError(f"model tensor {name!r} uses the reserved prefix {OPTIMIZER_PREFIX!r}")
        tensors[name] = array
    for name, array in optimizer_state.items():
        tensors[OPTIMIZER_PREFIX + name] = array
    for name, array in tensors.items():
        if not isinstance(array, np.ndarray):
            raise TypeError(f"tensor {name!r} is {type(array).__name__}, not a numpy array")
    return tensors


def _encode_metadata(metadata: Mapping[str, Any]) -> dict[str, str]:
    clash = _RESERVED_KEYS.intersection(metadata)
    if clash:
        raise ValueError(f"metadata keys {sorted(clash)} are reserved by the checkpoint format")
    encoded = {key: json.dumps(value, default=_json_default, sort_keys=True) for key, value in metadata.items()}
    encoded["format"] = FORMAT
    return encoded


def save_checkpoint(
    path: str | os.PathLike[str],
    model_state: Mapping[str, np.ndarray],
    optimizer_state: Mapping[str, np.ndarray],
    metadata: Mapping[str, Any],
) -> str:
    """Write a checkpoint atomically; returns its content sha256 (hex).

    ``metadata`` values must be JSON-serialisable (NumPy scalars and arrays are turned
    into numbers and lists; tuples come back as lists). ValueError/TypeError for caller
    errors (a reserved key, a non-array tensor); OutputError if the write fails.
    """
    data, digest = encode_checkpoint(model_state, optimizer_state, metadata)
    atomic_write_bytes(path, data)
    return digest


def encode_checkpoint(
    model_state: Mapping[str, np.ndarray],
    optimizer_state: Mapping[str, np.ndarray],
    metadata: Mapping[str, Any],
) -> tuple[bytes, str]:
    """The bytes of a checkpoint file and its content sha256, for writing with
    :func:`atomic_write_bytes` (once encoded, the same bytes can go to several names)."""
    tensors = _checkpoint_tensors(model_state, optimizer_state)
    meta = _encode_metadata(metadata)
    meta["sha256"] = content_sha256(tensors, meta)
    return safetensors_bytes(tensors, meta), meta["sha256"]


def _decode_metadata(meta: Mapping[str, str], source: str) -> dict[str, Any]:
    decoded: dict[str, Any] = {}
    for key, text in meta.items():
        if key in _RESERVED_KEYS:
            continue
        try:
            decoded[key] = json.loads(text)
        except (ValueError, RecursionError):
            raise WeightsError(f"{source}: metadata {key!r} is not valid JSON") from None
    return decoded


def load_checkpoint(path: str | os.PathLike[str]) -> Checkpoint:
    """Read and verify a checkpoint written by :func:`save_checkpoint`.

    WeightsError (naming the file) if it is missing, not a safetensors file, not an
    autotrain checkpoint, or its content hash does not match.
    """
    tensors, meta = read_safetensors(path)
    return checkpoint_from_safetensors(tensors, meta, str(path))


def checkpoint_from_safetensors(tensors: dict[str, np.ndarray], meta: Mapping[str, str],
                                source: str) -> Checkpoint:
    """Verify (format tag, content hash) and split already-read safetensors content into a
    :class:`Checkpoint`; WeightsError naming ``source`` otherwise."""
    if meta.get("format") != FORMAT or "sha256" not in meta:
        raise WeightsError(f"{source}: not an autotrain checkpoint (no {FORMAT!r} format tag or sha256 in metadata)")
    digest = content_sha256(tensors, meta)
    if digest != meta["sha256"]:
        recorded = meta["sha256"][:12]
        raise WeightsError(f"{source}: checkpoint is corrupt: content sha256 {digest[:12]}... != recorded {recorded}...")
    model = {k: v for k, v in tensors.items() if not k.startswith(OPTIMIZER_PREFIX)}
    optim = {k[len(OPTIMIZER_PREFIX) :]: v for k, v in tensors.items() if k.startswith(OPTIMIZER_PREFIX)}
    return Checkpoint(model, optim, _decode_metadata(meta, source), digest)


# --------------------------------------------------------------------------- run folder


def epoch_checkpoint_name(epoch: int) -> str:
    """The file name of the checkpoint kept for ``epoch``: ``epoch-<epoch>.safetensors``."""
    return f"epoch-{int(epoch)}.safetensors"


def _epoch_files(run_dir: Path) -> list[tuple[int, Path]]:
    found = []
    for entry in run_dir.iterdir():
        match = _EPOCH_RE.match(entry.name)
        if match and entry.is_file():
            found.append((int(match.group(1)), entry))
    return sorted(found)


def rotate_checkpoints(run_dir: str | os.PathLike[str], keep_last: int) -> list[Path]:
    """Delete all but the ``keep_last`` highest-numbered ``epoch-N.safetensors``.

    ``last``/``best`` and other files are never touched. Call it only after the newest
    checkpoint is in place. Returns the deleted paths; OutputError if one cannot be deleted.
    """
    if keep_last < 0:
        raise ValueError(f"keep_last must be >= 0, got {keep_last}")
    epochs = _epoch_files(Path(run_dir))
    doomed = [p for _, p in epochs[: max(len(epochs) - keep_last, 0)]]
    for path in doomed:
        _remove(path, "old checkpoint")
    return doomed


def _remove(path: Path, what: str) -> bool:
    """Delete ``path``; False if it was already gone, OutputError naming it if it cannot be."""
    try:
        path.unlink()
    except FileNotFoundError:
        return False
    except OSError as exc:
        raise OutputError(f"cannot delete {what} {path}: {exc.strerror or exc}") from None
    return True


def saved_step(path: str | os.PathLike[str]) -> int | None:
    """The integer ``step`` in a checkpoint's header (read cheaply, no hash check); None when
    the file is missing, unreadable or holds no integer step."""
    try:
        step = json.loads(read_safetensors_metadata(path).get("step", "null"))
    except (WeightsError, ValueError, RecursionError):
        return None
    return step if isinstance(step, int) and not isinstance(step, bool) else None


def find_latest_valid_checkpoint(run_dir: str | os.PathLike[str]) -> Path | None:
    """The path of :func:`latest_valid_checkpoint`, or None."""
    found = latest_valid_checkpoint(run_dir)
    return None if found is None else found[0]


def latest_valid_checkpoint(run_dir: str | os.PathLike[str]) -> tuple[Path, Checkpoint] | None:
    """The resumable checkpoint with the highest ``step`` among ``last`` and ``epoch-N``, and
    its loaded content (so a resume does not read and hash it a second time).

    Candidates whose header is unreadable or lacks an integer ``step`` are skipped; the
    rest are fully verified (hash included) from the highest step down, and the first
    valid one is returned (``last`` wins a tie). None if there is none.
    """
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        return None
    candidates = [p for _, p in _epoch_files(run_dir)]
    if (run_dir / LAST_NAME).is_file():
        candidates.append(run_dir / LAST_NAME)
    ranked = []
    for path in candidates:
        step = saved_step(path)
        if step is not None:
            ranked.append((step, path.name == LAST_NAME, path))
    for _, _, path in sorted(ranked, key=lambda r: (r[0], r[1]), reverse=True):
        try:
            return path, load_checkpoint(path)
        except WeightsError:
            continue
    return None


def _pid_alive(pid: int) -> bool:
    if pid == os.getpid():
        return False  # we are not mid-write while cleaning
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def clean_stale_temp_files(run_dir: str | os.PathLike[str]) -> list[Path]:
    """Remove ``.<name>.tmp-<pid>`` files left by writers that died; returns them.

    A temp file whose pid is another live process is left alone (it may be mid-write).
    """
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        return []
    removed = []
    for entry in run_dir.iterdir():
        match = _TEMP_RE.match(entry.name)
        if match and entry.is_file() and not _pid_alive(int(match.group(1))):
            if _remove(entry, "stale temp file"):
                removed.append(entry)
    return removed

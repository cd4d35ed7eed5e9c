"""Load, save and convert pretrained weights; compare them with a model's shapes.

:func:`load_weights` recognises the format by content, not by name: a zip holding
``<folder>/data.pkl`` is a torch ``.pth``, a zip of ``.npy`` members is ``.npz``, a pickle
is read as a legacy ``.pth`` (whose reader checks torch's magic number), anything else as
safetensors; an autotrain checkpoint (safetensors with the checkpoint format tag) gives
its model state only. Loaded float tensors must be finite. :func:`save_weights` picks the format
from the extension (``.safetensors`` or ``.npz``) and writes atomically.
"""

from __future__ import annotations

import io
import math
import os
import struct
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from collections.abc import Mapping

import numpy as np

from autotrain.errors import ConfigError, WeightsError
from autotrain.io.checkpoint import FORMAT as CHECKPOINT_FORMAT
from autotrain.io.checkpoint import atomic_write_bytes, checkpoint_from_safetensors
from autotrain.io.safetensors_io import read_file_bytes, read_safetensors_bytes, safetensors_bytes
from autotrain.io.torch_pth import ZIP_MAGIC, open_zip, read_pth_legacy_bytes, read_pth_zip

SAVE_FORMATS = (".safetensors", ".npz")


_NPY_HEADER_READERS = {(1, 0): np.lib.format.read_array_header_1_0, (2, 0): np.lib.format.read_array_header_2_0}


def npz_claim_problem(archive) -> str | None:
    """What is wrong with an .npz (a path or a file object) whose .npy members claim more bytes
    than they hold, or None. numpy reserves an array of the claimed size before it reads a zip
    member, so a 300-byte file claiming shape (2**40,) would ask for 4 TiB; the claim is
    checked against the member's size from the zip directory first, reading only its header.
    Shared by the weights and the dataset readers, which wrap the text in their own error."""
    try:
        with zipfile.ZipFile(archive) as zf:
            for info in zf.infolist():
                name = info.filename[: -len(".npy")] if info.filename.endswith(".npy") else info.filename
                with zf.open(info) as member:
                    version = np.lib.format.read_magic(member)
                    if version not in _NPY_HEADER_READERS:
                        return f"tensor {name!r}: unsupported .npy format version {version}"
                    shape, _, dtype = _NPY_HEADER_READERS[version](member)
                    held = info.file_size - member.tell()
                claimed = math.prod(shape) * dtype.itemsize
                if claimed > held:
                    return (f"tensor {name!r}: .npy header claims shape {shape} x {dtype} "
                            f"= {claimed} bytes but the entry holds {held}")
    except Exception as exc:  # not a zip, bad magic or header, CRC or zlib errors, truncated entries
        message = " ".join(str(exc).split())
        return f"corrupt .npz: {type(exc).__name__}: {message}"
    return None


def _read_npz(data: bytes, source: str) -> dict[str, np.ndarray]:
    problem = npz_claim_problem(io.BytesIO(data))
    if problem:
        raise WeightsError(f"{source}: {problem}")
    try:
        with np.load(io.BytesIO(data), allow_pickle=False) as npz:
            tensors = {name: np.array(npz[name]) for name in npz.files}
    except Exception as exc:  # object arrays (pickle refused), bad .npy headers, CRC errors
        message = " ".join(str(exc).split())
        raise WeightsError(f"{source}: corrupt .npz: {type(exc).__name__}: {message}") from None
    for name, array in tensors.items():
        if array.dtype.kind not in "biuf":
            raise WeightsError(f"{source}: tensor {name!r} has unsupported dtype {array.dtype}")
    return tensors


def _read_zip(data: bytes, source: str) -> dict[str, np.ndarray]:
    zf, infos = open_zip(data, source)  # opened and size-checked once, whichever format it is
    with zf:
        names = [info.filename for info in infos]
        if any(name.endswith("/data.pkl") for name in names):
            return read_pth_zip(zf, infos, source)
    if names and all(name.endswith(".npy") for name in names):
        return _read_npz(data, source)
    raise WeightsError(f"{source}: zip archive is neither a torch .pth nor an .npz")


def _looks_like_safetensors(data: bytes) -> bool:
    if len(data) < 9:
        return False
    (length,) = struct.unpack("<Q", data[:8])
    return length < len(data) and data[8:9] == b"{"


def _parse(data: bytes, source: str, suffix: str) -> dict[str, np.ndarray]:
    if data.startswith(ZIP_MAGIC):
        return _read_zip(data, source)
    if _looks_like_safetensors(data) or suffix == ".safetensors":
        tensors, meta = read_safetensors_bytes(data, source)
        if meta.get("format") == CHECKPOINT_FORMAT:
            return checkpoint_from_safetensors(tensors, meta, source).model_state
        return tensors
    if data[:1] == b"\x80":  # a pickle: only torch's legacy layout is accepted
        return read_pth_legacy_bytes(data, source)
    raise WeightsError(f"{source}: not a recognised weights file (safetensors, torch .pth, or .npz)")


def check_finite(tensors: Mapping[str, np.ndarray], source: str) -> None:
    """WeightsError naming the first float tensor that holds NaN or Inf."""
    for name, array in tensors.items():
        if array.dtype.kind == "f" and not np.isfinite(array).all():
            what = "NaN" if np.isnan(array).any() else "Inf"
            raise WeightsError(f"{source}: tensor {name!r} contains {what}")


def load_weights(path: str | os.PathLike[str]) -> dict[str, np.ndarray]:
    """Load a state dict from a safetensors, torch ``.pth`` (zip or legacy) or ``.npz`` file.

    The format is sniffed from the content. Returns ``{name: array}`` with arrays that
    own their memory. WeightsError (one line naming the file and tensor) if the file is
    missing, unsafe, corrupt, or holds a non-finite float.
    """
    path = Path(path)
    tensors = _parse(read_file_bytes(path), str(path), path.suffix.lower())
    check_finite(tensors, str(path))
    return tensors


def _npz_bytes(state_dict: Mapping[str, np.ndarray]) -> bytes:
    for name, array in state_dict.items():
        if not isinstance(array, np.ndarray) or array.dtype.kind not in "biuf":
            raise TypeError(f"tensor {name!r} is not a numeric numpy array")
    buffer = io.BytesIO()
    np.savez(buffer, **dict(state_dict))
    return buffer.getvalue()


def save_weights(state_dict: Mapping[str, np.ndarray], path: str | os.PathLike[str]) -> None:
    """Write ``state_dict`` atomically as ``.safetensors`` or ``.npz`` (chosen by extension).

    ConfigError for any other extension (a usage error, before anything is written);
    OutputError if the write fails.
    """
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix == ".safetensors":
        data = safetensors_bytes(state_dict)
    elif suffix == ".npz":
        data = _npz_bytes(state_dict)
    else:
        shown = suffix or "(no extension)"
        raise ConfigError(f"{path}: unsupported weights format {shown!r}; use one of {', '.join(SAVE_FORMATS)}")
    atomic_write_bytes(path, data)


def convert(in_path: str | os.PathLike[str], out_path: str | os.PathLike[str]) -> dict[str, np.ndarray]:
    """Load ``in_path`` (any readable format) and save it to ``out_path``; returns the tensors."""
    tensors = load_weights(in_path)
    save_weights(tensors, out_path)
    return tensors


# --------------------------------------------------------------------------- load report


@dataclass
class LoadReport:
    """How a loaded state dict fits a model.

    ``loaded``: names present in both with equal shapes (model order); ``missing``: in the
    model only; ``unexpected``: in the file only (file order); ``mismatched``:
    ``(name, expected_shape, got_shape)`` for names in both with different shapes.
    """

    loaded: list[str] = field(default_factory=list)
    missing: list[str] = field(default_factory=list)
    unexpected: list[str] = field(default_factory=list)
    mismatched: list[tuple[str, tuple[int, ...], tuple[int, ...]]] = field(default_factory=list)

    @property
    def complete(self) -> bool:
        """True when every model tensor was loaded and nothing in the file was left over."""
        return not (self.missing or self.unexpected or self.mismatched)

    def summary(self) -> str:
        """One line: counts, then each mismatch with both shapes."""
        text = (
            f"loaded {len(self.loaded)}, missing {len(self.missing)}, "
            f"unexpected {len(self.unexpected)}, shape mismatch {len(self.mismatched)}"
        )
        if self.mismatched:
            text += ": " + "; ".join(f"{k} expected {tuple(e)} got {tuple(g)}" for k, e, g in self.mismatched)
        return text


def match_state_dict(model_shapes: Mapping[str, tuple[int, ...]], loaded: Mapping[str, np.ndarray]) -> LoadReport:
    """Compare a model's ``{name: shape}`` with loaded tensors by name and shape."""
    report = LoadReport()
    for name, shape in model_shapes.items():
        if name not in loaded:
            report.missing.append(name)
        elif tuple(loaded[name].shape) != tuple(shape):
            report.mismatched.append((name, tuple(shape), tuple(loaded[name].shape)))
        else:
            report.loaded.append(name)
    report.unexpected = [name for name in loaded if name not in model_shapes]
    return report

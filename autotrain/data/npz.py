"""The ``npz`` source: one NumPy .npz file with arrays ``x`` (images) and ``y`` (labels).

Contract for the file (read with ``allow_pickle=False``: no code runs from it):

- ``x``: (N, H, W) grey, or (N, H, W, C) / (N, C, H, W) with C = 1 or 3. The layout of a
  4-d array is told by which axis is 1 or 3; if both axis 1 and axis 3 could be channels,
  NCHW (autotrain's own layout) is assumed.
- pixel scale: uint8 is 0..255, uint16 is 0..65535, bool is 0/1, other integers must lie
  in 0..255, floats must be finite and lie in [0, 1] (the scale ``load_image`` gives at
  prediction time; anything else would silently differ between training and predicting).
- ``y``: (N,) integer labels (floats holding whole numbers are accepted).
- optional ``class_names``: (K,) strings, the name of each label.
"""

from __future__ import annotations

import zipfile
from pathlib import Path

import numpy as np

from autotrain.data.arrays import dataset_error
from autotrain.io.weights import npz_claim_problem

_FLOAT_TOLERANCE = 1e-6


def _to_nchw(x: np.ndarray, path: Path) -> np.ndarray:
    """Return a view of ``x`` in (N, C, H, W) order, per the layout rules in the module doc."""
    if x.ndim == 3:
        return x[:, None]
    if x.ndim == 4:
        channel_first = x.shape[1] in (1, 3)
        channel_last = x.shape[3] in (1, 3)
        if channel_first:
            return x
        if channel_last:
            return x.transpose(0, 3, 1, 2)
    raise dataset_error(
        path, f"array 'x' has shape {x.shape}; expected (N,H,W), (N,H,W,C) or (N,C,H,W) with C 1 or 3"
    )


def _scale_pixels(x: np.ndarray, path: Path) -> np.ndarray:
    """Return float32 pixels in 0..1 from any supported dtype, checking range and finiteness."""
    if x.dtype == np.bool_:
        return x.astype(np.float32)
    if x.dtype == np.uint8:
        return x.astype(np.float32) / np.float32(255.0)
    if x.dtype == np.uint16:
        return x.astype(np.float32) / np.float32(65535.0)
    if np.issubdtype(x.dtype, np.integer):
        low, high = int(x.min()), int(x.max())
        if low < 0 or high > 255:
            raise dataset_error(path, f"integer pixels must be in 0..255, found {low}..{high}")
        return x.astype(np.float32) / np.float32(255.0)
    if np.issubdtype(x.dtype, np.floating):
        finite = np.isfinite(x)
        if not finite.all():
            bad = int(x.size - np.count_nonzero(finite))
            first = int(np.argwhere(~finite)[0][0])
            raise dataset_error(path, f"array 'x' has {bad} NaN/Inf pixel values (first in image {first})")
        low, high = float(x.min()), float(x.max())
        if low < -_FLOAT_TOLERANCE or high > 1.0 + _FLOAT_TOLERANCE:
            raise dataset_error(
                path, f"float pixels must be in [0, 1], found {low:g}..{high:g} (save uint8 0..255 instead)"
            )
        return np.clip(x, 0.0, 1.0).astype(np.float32)
    raise dataset_error(path, f"array 'x' has unsupported dtype {x.dtype}")


def _labels(y: np.ndarray, count: int, path: Path) -> np.ndarray:
    """Return int64 labels (N,), checking shape, dtype and that they are whole numbers."""
    if y.ndim != 1 or y.shape[0] != count:
        raise dataset_error(path, f"array 'y' has shape {y.shape}, expected ({count},) to match 'x'")
    if np.issubdtype(y.dtype, np.integer):
        return y.astype(np.int64)
    if np.issubdtype(y.dtype, np.floating):
        if not np.isfinite(y).all() or not np.array_equal(y, np.round(y)):
            raise dataset_error(path, "array 'y' holds non-integer labels")
        return y.astype(np.int64)
    raise dataset_error(path, f"array 'y' has dtype {y.dtype}; integer labels expected")


def read_npz(path: Path) -> tuple[np.ndarray, np.ndarray, list[str] | None]:
    """Read an npz dataset: (x float32 (N, C, H, W) in 0..1, y int64 (N,), class names or None).

    Every problem (missing file or array, pickled objects, bad shape, dtype or values) is a
    DatasetError naming the file.
    """
    if not path.is_file():
        raise dataset_error(path, "npz dataset file does not exist or is not a file")
    problem = npz_claim_problem(path)
    if problem:  # checked before np.load, which would reserve whatever a header claims
        raise dataset_error(path, f"cannot read npz file ({problem})")
    try:
        with np.load(path, allow_pickle=False) as archive:
            missing = [key for key in ("x", "y") if key not in archive.files]
            if missing:
                raise dataset_error(path, f"missing array(s) {missing}; found {archive.files}")
            x_raw = archive["x"]
            y_raw = archive["y"]
            names_raw = archive["class_names"] if "class_names" in archive.files else None
    except (OSError, ValueError, EOFError, zipfile.BadZipFile) as exc:
        # Not a zip, a zip signature over a broken body, a corrupt member, or an object
        # array that would need pickle.
        raise dataset_error(path, f"cannot read npz file ({' '.join(str(exc).split())})") from exc
    if x_raw.ndim == 0 or x_raw.shape[0] == 0:
        raise dataset_error(path, f"array 'x' has no images (shape {x_raw.shape})")
    x = _scale_pixels(_to_nchw(x_raw, path), path)
    y = _labels(y_raw, x.shape[0], path)
    names: list[str] | None = None
    if names_raw is not None:
        if names_raw.ndim != 1 or names_raw.dtype.kind not in "US":
            raise dataset_error(path, "array 'class_names' must be a 1-d array of strings")
        names = [name.decode("utf-8", "replace") if isinstance(name, bytes) else str(name)
                 for name in names_raw.tolist()]
        if len(set(names)) != len(names):
            raise dataset_error(path, "array 'class_names' has duplicate names")
    return np.ascontiguousarray(x), y, names

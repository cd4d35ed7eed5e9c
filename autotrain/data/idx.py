"""The ``idx`` source: a folder of MNIST-format (IDX) files.

Layout (each file optionally gzipped with a ``.gz`` suffix; ``.`` may replace the ``-``
before ``idx``, as in ``train-images.idx3-ubyte``)::

    train-images-idx3-ubyte   train-labels-idx1-ubyte      (required)
    t10k-images-idx3-ubyte    t10k-labels-idx1-ubyte       (optional: the validation split)

An IDX file is a big-endian header, ``00 00 <type> <ndim>`` then ``ndim`` uint32 sizes, then
the values. Images must be unsigned bytes with 3 dims (magic 2051), labels unsigned bytes
with 1 dim (magic 2049). Every check failure is a DatasetError naming the file.
"""

from __future__ import annotations

import gzip
import math
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

import numpy as np

from autotrain.data.arrays import dataset_error

IMAGES_MAGIC = 2051  # 0x00000803: unsigned byte, 3 dims
LABELS_MAGIC = 2049  # 0x00000801: unsigned byte, 1 dim


@dataclass(frozen=True)
class IdxSplit:
    """One split's raw arrays: images uint8 (N, H, W), labels uint8 (N,), and their files."""

    images: np.ndarray
    labels: np.ndarray
    images_path: Path
    labels_path: Path


def _candidates(folder: Path, split: str, kind: str, ndim: int) -> list[Path]:
    """All accepted spellings of one file, in preference order (plain before gzipped)."""
    stems = [f"{split}-{kind}-idx{ndim}-ubyte", f"{split}-{kind}.idx{ndim}-ubyte"]
    return [folder / (stem + suffix) for suffix in ("", ".gz") for stem in stems]


def find_idx_file(folder: Path, split: str, kind: str) -> Path | None:
    """Return the first existing spelling of ``<split>-<kind>`` in ``folder``, or None."""
    ndim = 3 if kind == "images" else 1
    for candidate in _candidates(folder, split, kind, ndim):
        if candidate.is_file():
            return candidate
    return None


def _open(path: Path) -> BinaryIO:
    """Open an IDX file for reading, transparently gunzipping a ``.gz`` file."""
    if path.suffix == ".gz":
        return gzip.open(path, "rb")  # type: ignore[return-value]
    return open(path, "rb")


def _read_exact(stream: BinaryIO, count: int) -> bytes:
    """Read up to ``count`` bytes, looping because gzip streams may return short reads."""
    chunks: list[bytes] = []
    remaining = count
    while remaining > 0:
        chunk = stream.read(min(remaining, 1 << 24))
        if not chunk:
            break
        chunks.append(chunk)
        remaining -= len(chunk)
    return b"".join(chunks)


def read_idx(path: Path, expected_magic: int) -> np.ndarray:
    """Read one IDX file of unsigned bytes and return its array (shape from the header).

    Checks the magic number, that no size is zero, and that the data length matches the
    header exactly (a shorter file is truncated, a longer one has trailing bytes). The
    file is streamed, so a corrupt header cannot make it read more than it declares + 1.
    """
    ndim = expected_magic & 0xFF
    try:
        with _open(path) as stream:
            magic_bytes = _read_exact(stream, 4)
            if len(magic_bytes) < 4:
                raise dataset_error(path, f"file too short for an IDX header ({len(magic_bytes)} bytes)")
            magic = int.from_bytes(magic_bytes, "big")
            if magic != expected_magic:
                raise dataset_error(
                    path, f"wrong IDX magic number {magic} (0x{magic:08x}), expected {expected_magic}"
                )
            dims_bytes = _read_exact(stream, 4 * ndim)
            if len(dims_bytes) < 4 * ndim:
                raise dataset_error(path, f"truncated IDX header: {ndim} sizes expected")
            dims = tuple(int.from_bytes(dims_bytes[4 * i : 4 * i + 4], "big") for i in range(ndim))
            if 0 in dims:
                raise dataset_error(path, f"header sizes {dims} contain a zero: no data")
            expected = math.prod(dims)
            payload = _read_exact(stream, expected)
            extra = stream.read(1)
    except (OSError, EOFError, zlib.error) as exc:
        # gzip.BadGzipFile is an OSError; a truncated .gz raises EOFError.
        raise dataset_error(path, f"cannot read IDX file ({exc})") from exc
    if len(payload) < expected:
        raise dataset_error(
            path,
            f"truncated: header sizes {dims} need {expected} data bytes, file has {len(payload)}",
        )
    if extra:
        raise dataset_error(
            path, f"file is longer than its header sizes {dims} declare ({expected} data bytes)"
        )
    return np.frombuffer(payload, dtype=np.uint8).reshape(dims)


def read_idx_split(folder: Path, split: str) -> IdxSplit | None:
    """Read the images and labels of ``split`` in ``folder``, or return None if both are absent.

    Exactly one of the pair present, or counts that disagree, is a DatasetError.
    """
    images_path = find_idx_file(folder, split, "images")
    labels_path = find_idx_file(folder, split, "labels")
    if images_path is None and labels_path is None:
        return None
    if images_path is None:
        wanted = _candidates(folder, split, "images", 3)[0]
        raise dataset_error(wanted, f"missing: {labels_path.name} exists but its images file does not")
    if labels_path is None:
        wanted = _candidates(folder, split, "labels", 1)[0]
        raise dataset_error(wanted, f"missing: {images_path.name} exists but its labels file does not")
    images = read_idx(images_path, IMAGES_MAGIC)
    labels = read_idx(labels_path, LABELS_MAGIC)
    if images.shape[0] != labels.shape[0]:
        raise dataset_error(
            images_path,
            f"has {images.shape[0]} images but {labels_path.name} has {labels.shape[0]} labels",
        )
    return IdxSplit(images=images, labels=labels, images_path=images_path, labels_path=labels_path)


def read_idx_folder(folder: Path) -> tuple[IdxSplit, IdxSplit | None]:
    """Read the train split (required) and the t10k split (optional) of an IDX folder.

    Both splits must have the same image height and width.
    """
    if not folder.is_dir():
        raise dataset_error(folder, "IDX dataset folder does not exist or is not a folder")
    train = read_idx_split(folder, "train")
    if train is None:
        raise dataset_error(
            folder, "no train-images-idx3-ubyte / train-labels-idx1-ubyte (optionally .gz) found"
        )
    test = read_idx_split(folder, "t10k")
    if test is not None and test.images.shape[1:] != train.images.shape[1:]:
        raise dataset_error(
            test.images_path,
            f"image size {test.images.shape[1:]} differs from {train.images_path.name} "
            f"{train.images.shape[1:]}",
        )
    return train, test

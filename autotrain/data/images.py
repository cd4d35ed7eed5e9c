"""Image files: decoding with Pillow, ``load_image`` for prediction, and the imagefolder source.

Decoding contract (shared by training and ``autotrain predict`` so that both see the same
pixels): the first frame is decoded fully (a truncated file fails here, not later),
converted to "L" or "RGB" by Pillow according to ``in_channels`` (alpha is dropped, as
torchvision's loader does; 16-bit grey keeps its precision and is scaled by 1/65535),
resized to ``image_size`` x ``image_size`` with Pillow BILINEAR (aspect ratio not kept,
like torchvision's ``Resize((s, s))``), and returned as float32 (C, H, W) in 0..1.

imagefolder layout (torchvision's): ``root/<class>/**/<file>.<ext>``; classes are the
sorted names of the non-hidden folders directly under root; anything starting with "."
is ignored; files with other extensions are ignored (and counted).
"""

from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image

from autotrain.data.arrays import dataset_error

IMAGE_EXTENSIONS = frozenset({".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff"})
_SIXTEEN_BIT_MODES = frozenset({"I;16", "I;16L", "I;16B", "I;16N", "I"})
# Pillow releases the GIL while decoding and resizing, so a few threads speed up big folders.
_MAX_WORKERS = min(8, os.cpu_count() or 1)


class UndecodableImage(Exception):
    """A file that Pillow cannot turn into pixels; the message says why (one line)."""


def _decode(path: Path, image_size: int, in_channels: int) -> np.ndarray:
    """Decode one file into float32 (in_channels, image_size, image_size) in 0..1.

    Raises UndecodableImage for anything Pillow cannot read: an empty file, a file that is
    not an image, a truncated image, or one past Pillow's decompression-bomb limit.
    """
    if in_channels not in (1, 3):
        raise ValueError(f"in_channels must be 1 or 3, got {in_channels}")
    size = (image_size, image_size)
    try:
        with Image.open(path) as image:
            image.load()  # force the full decode now so truncation is caught here
            if image.mode in _SIXTEEN_BIT_MODES:
                # Pillow's "L" conversion would clip 16-bit values to 255; scale instead.
                grey = np.asarray(image, dtype=np.float32) / np.float32(65535.0)
                grey = np.clip(grey, 0.0, 1.0)
                resized = np.asarray(Image.fromarray(grey).resize(size, Image.BILINEAR))
                planes = resized[None].astype(np.float32)
                return np.repeat(planes, in_channels, axis=0) if in_channels == 3 else planes
            converted = image.convert("L" if in_channels == 1 else "RGB")
            resized = converted.resize(size, Image.BILINEAR)
            pixels = np.asarray(resized, dtype=np.float32) / np.float32(255.0)
    except (OSError, SyntaxError, ValueError, EOFError, Image.DecompressionBombError) as exc:
        # Pillow signals bad data with several types (UnidentifiedImageError is an OSError).
        reason = " ".join(str(exc).split()) or type(exc).__name__
        raise UndecodableImage(reason) from exc
    if pixels.ndim == 2:
        return pixels[None]
    return np.ascontiguousarray(pixels.transpose(2, 0, 1))


def load_image(path: str | os.PathLike[str], image_size: int, in_channels: int) -> np.ndarray:
    """Load one image for prediction: float32 (in_channels, image_size, image_size) in 0..1.

    Same decoding as the imagefolder source (see the module docstring), NOT normalised.
    Raises DatasetError naming the file if it is missing or cannot be decoded.
    """
    path = Path(path)
    if not path.is_file():
        raise dataset_error(path, "image file does not exist or is not a file")
    try:
        return _decode(path, image_size, in_channels)
    except UndecodableImage as exc:
        raise dataset_error(path, f"cannot decode image ({exc})") from exc


def _is_hidden(name: str) -> bool:
    return name.startswith(".")


def list_classes(root: Path) -> list[str]:
    """Sorted names of the non-hidden class folders directly under ``root``.

    A missing root, or one without class folders, is a DatasetError naming it.
    """
    if not root.is_dir():
        raise dataset_error(root, "imagefolder root does not exist or is not a folder")
    names = sorted(entry.name for entry in os.scandir(root)
                   if entry.is_dir() and not _is_hidden(entry.name))
    if not names:
        raise dataset_error(root, "no class folders: expected root/<class>/<image files>")
    return names


@dataclass
class ClassFiles:
    """The image files found for one class folder, and how many other files were ignored."""

    files: list[Path] = field(default_factory=list)
    ignored: int = 0


def list_class_files(class_dir: Path) -> ClassFiles:
    """All image files under ``class_dir`` (recursively, sorted), hidden entries skipped.

    Symbolic links to folders are followed, as torchvision does; a folder already visited
    (a link loop) is not walked twice.
    """
    found = ClassFiles()
    visited: set[str] = set()
    for current, dirnames, filenames in os.walk(class_dir, followlinks=True):
        real = os.path.realpath(current)
        if real in visited:
            dirnames[:] = []
            continue
        visited.add(real)
        # Sorting in place makes os.walk visit subfolders in a fixed order on every system.
        dirnames[:] = sorted(name for name in dirnames if not _is_hidden(name))
        for name in sorted(filenames):
            if _is_hidden(name):
                continue
            if os.path.splitext(name)[1].lower() in IMAGE_EXTENSIONS:
                found.files.append(Path(current) / name)
            else:
                found.ignored += 1
    return found


@dataclass
class DecodedImages:
    """Decoded pixels of an imagefolder selection, and what was left out.

    ``x`` float32 (N, C, S, S) in 0..1; ``y`` int64 indices into the selected classes;
    ``skipped`` one {"path", "reason"} dict per undecodable file; ``ignored`` the count of
    non-image files.
    """

    x: np.ndarray
    y: np.ndarray
    skipped: list[dict[str, str]]
    ignored: int


def decode_folder(root: Path, selected: list[str], image_size: int,
                  in_channels: int) -> DecodedImages:
    """Decode every image of the ``selected`` class folders; label = position in ``selected``.

    Undecodable files are skipped and listed, never silently dropped with a label shift
    (labels come from each file's own folder). A selected class folder with no image
    files, or with none that decodes, is a DatasetError naming that folder.
    """
    paths: list[Path] = []
    labels: list[int] = []
    ignored = 0
    for label, name in enumerate(selected):
        class_dir = root / name
        found = list_class_files(class_dir)
        ignored += found.ignored
        if not found.files:
            raise dataset_error(class_dir, f"class folder '{name}' has no image files "
                                f"({', '.join(sorted(IMAGE_EXTENSIONS))})")
        paths.extend(found.files)
        labels.extend([label] * len(found.files))

    x = np.empty((len(paths), in_channels, image_size, image_size), dtype=np.float32)
    ok = np.ones(len(paths), dtype=bool)
    skipped: list[dict[str, str]] = []

    def decode_one(path: Path) -> np.ndarray | str:
        try:
            return _decode(path, image_size, in_channels)
        except UndecodableImage as exc:
            return str(exc)

    with ThreadPoolExecutor(max_workers=_MAX_WORKERS) as pool:
        # map keeps the input order, so pixels and labels stay paired.
        for index, result in enumerate(pool.map(decode_one, paths)):
            if isinstance(result, str):
                ok[index] = False
                skipped.append({"path": str(paths[index]), "reason": result})
            else:
                x[index] = result

    y = np.asarray(labels, dtype=np.int64)
    counts = np.bincount(y[ok], minlength=len(selected))
    for label, name in enumerate(selected):
        if counts[label] == 0:
            raise dataset_error(root / name, f"class folder '{name}' has no image that decodes "
                                f"({int(np.sum(y == label))} files skipped)")
    if not ok.all():
        x, y = x[ok], y[ok]
    return DecodedImages(x=x, y=y, skipped=skipped, ignored=ignored)

"""Image files: decoding with Pillow, ``load_image`` for prediction, and the imagefolder source.

Decoding contract (shared by training and ``autotrain predict`` so that both see the same
pixels): the first frame is decoded fully (a truncated file fails here, not later),
converted to "L" or "RGB" by Pillow according to ``in_channels`` (alpha is dropped, as
torchvision's loader does; 16-bit grey keeps its precision and is scaled by 1/65535),
resized to ``image_size`` x ``image_size`` with Pillow BILINEAR (aspect ratio not kept,
like torchvision's ``Resize((s, s))``). Training stores the result as uint8 (C, H, W)
(``decode_u8``: an 8-bit image is exactly Pillow's resized bytes; a 16-bit one is resized
in float, then rounded to 8 bits) and reads it as ``v / 255`` in float32. ``load_image``
gives the same float32 (C, H, W) in 0..1, except that a 16-bit image keeps its precision
(not rounded to 8 bits: a difference of at most 0.5/255 from what training saw).

imagefolder layout (torchvision's): ``root/<class>/**/<file>.<ext>``; classes are the
sorted names of the non-hidden folders directly under root; anything starting with "."
is ignored; files with other extensions are ignored (and counted). A large folder is
decoded in a process pool (Pillow's per-file Python work holds the GIL), in a fixed order:
the rows come out the same whatever the pool size.
"""

from __future__ import annotations

import multiprocessing
import os
import signal
import threading
import time
from collections import deque
from concurrent.futures import Executor, ProcessPoolExecutor, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np

from autotrain.data.arrays import dataset_error

IMAGE_EXTENSIONS = frozenset({".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff"})
_SIXTEEN_BIT_MODES = frozenset({"I;16", "I;16L", "I;16B", "I;16N", "I"})
# Pillow releases the GIL while decoding and resizing, so threads help small folders; from
# _POOL_MIN files on, worker processes also run the per-file Python work in parallel. Measured
# on 2 cores, 64x64 PNGs: 5,000 files 1,300 img/s threads vs 800-1,060 processes (their
# start-up costs ~2 s); 40,000 files 1,209 vs 1,893: the crossover is near 7,000 files.
_MAX_WORKERS = min(8, os.cpu_count() or 1)
_POOL_MIN = 8192
_CHUNK = 32  # files per task handed to a worker


class UndecodableImage(Exception):
    """A file that Pillow cannot turn into pixels; the message says why (one line)."""


def decode_u8(path: str | Path, image_size: int, in_channels: int) -> np.ndarray:
    """Decode one file into uint8 (in_channels, image_size, image_size), the stored form.

    Raises UndecodableImage for anything Pillow cannot read: an empty file, a file that is
    not an image, a truncated image, or one past Pillow's decompression-bomb limit.
    """
    deep = _decode_sixteen_bit(path, image_size, in_channels)
    if isinstance(deep, np.ndarray):
        return np.rint(deep * np.float32(255.0)).astype(np.uint8)
    return deep[0]


def _decode(path: Path, image_size: int, in_channels: int) -> np.ndarray:
    """Decode one file into float32 (in_channels, image_size, image_size) in 0..1 (a 16-bit
    image unrounded; any other as ``decode_u8(...) / 255``)."""
    deep = _decode_sixteen_bit(path, image_size, in_channels)
    if isinstance(deep, np.ndarray):
        return deep
    return deep[0].astype(np.float32) / np.float32(255.0)


def _decode_sixteen_bit(path: str | Path, image_size: int,
                        in_channels: int) -> np.ndarray | tuple[np.ndarray]:
    """A 16-bit grey image as float32 planes in 0..1; any other as a 1-tuple of uint8 planes.

    Both are (in_channels, image_size, image_size); the tuple marks 8-bit data (exact bytes).
    """
    from PIL import Image  # here, not at import: only image folders need Pillow (45-64 ms of import)

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
                planes = np.clip(resized[None].astype(np.float32), 0.0, 1.0)
                return np.repeat(planes, in_channels, axis=0) if in_channels == 3 else planes
            converted = image.convert("L" if in_channels == 1 else "RGB")
            pixels = np.asarray(converted.resize(size, Image.BILINEAR), dtype=np.uint8)
    except (OSError, SyntaxError, ValueError, EOFError, Image.DecompressionBombError) as exc:
        # Pillow signals bad data with several types (UnidentifiedImageError is an OSError).
        reason = " ".join(str(exc).split()) or type(exc).__name__
        raise UndecodableImage(reason) from exc
    if pixels.ndim == 2:
        return (pixels[None],)
    return (np.ascontiguousarray(pixels.transpose(2, 0, 1)),)


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
    """The image files found for one class folder (path strings: a 40,000-file folder is
    listed at every start, and Path objects cost more than the listing), and how many other
    files were ignored."""

    files: list[str] = field(default_factory=list)
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
                found.files.append(os.path.join(current, name))
            else:
                found.ignored += 1
    return found


@dataclass
class FolderListing:
    """The image files of an imagefolder selection in dataset order, with their labels
    (position in the selected classes) and the count of non-image files ignored."""

    root: Path
    classes: list[str]
    paths: list[str]
    labels: list[int]
    ignored: int


def list_folder(root: Path, selected: list[str]) -> FolderListing:
    """List every image file of the ``selected`` class folders; label = position in ``selected``.

    A selected class folder with no image files is a DatasetError naming that folder.
    """
    paths: list[str] = []
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
    return FolderListing(root, list(selected), paths, labels, ignored)


def _decode_chunk(paths: list[str], image_size: int,
                  in_channels: int) -> tuple[np.ndarray, list[tuple[int, str]]]:
    """Decode ``paths`` into uint8 (k, C, S, S) for those that decode, plus (position,
    reason) for those that do not. Runs in a worker process or thread."""
    rows, failed = [], []
    for position, path in enumerate(paths):
        try:
            rows.append(decode_u8(path, image_size, in_channels))
        except UndecodableImage as exc:
            failed.append((position, str(exc)))
    stacked = np.stack(rows) if rows else np.empty((0, in_channels, image_size, image_size), np.uint8)
    return stacked, failed


def _follow_parent(parent: int) -> None:
    """Pool worker initializer: exit as soon as the process that started the pool is gone.

    A run killed with ``kill -9`` while decoding must not leave workers behind (they would
    wait on their task queue forever, holding the run's stdout and stderr open). Ctrl-C
    reaches the whole process group: workers ignore it and the run itself decides.
    """
    signal.signal(signal.SIGINT, signal.SIG_IGN)

    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(0.2)
        os._exit(1)

    threading.Thread(target=watch, name="autotrain-parent-watch", daemon=True).start()


def _executor(files: int, workers: int | None) -> tuple[Executor, int]:
    """The pool for ``files`` files (see decode_listing's ``workers``) and its size."""
    count = _MAX_WORKERS if workers is None else max(1, workers)
    if count > 1 and (files >= _POOL_MIN or workers is not None):
        # spawn: each worker is a fresh interpreter and a direct child of this process (so it
        # can tell when this process dies), never a fork of one whose other threads (BLAS, a
        # progress bar) might hold a lock at the moment of the fork.
        context = multiprocessing.get_context("spawn")
        return ProcessPoolExecutor(max_workers=count, mp_context=context, initializer=_follow_parent,
                                   initargs=(os.getpid(),)), count
    return ThreadPoolExecutor(max_workers=count), count


def decode_listing(listing: FolderListing, image_size: int, in_channels: int, sink,
                   progress: Callable[[int, int], None] | None = None,
                   workers: int | None = None) -> list[dict[str, str]]:
    """Decode every listed file, in listing order, into ``sink.append(uint8 rows, labels)``.

    Returns one {"path", "reason"} dict per undecodable file (skipped, never a label shift:
    labels come from each file's own folder). A class whose files all fail is a
    DatasetError naming its folder. ``progress(done, total)`` is called as files finish.
    ``workers``: None picks threads below _POOL_MIN files and a process pool of up to 8
    from there; a number forces a process pool of that size (1: one thread here).
    The rows are the same whatever the pool: each file decodes alone, results are taken in order.
    """
    paths, total = listing.paths, len(listing.paths)
    labels = np.asarray(listing.labels, dtype=np.int64)
    decoded = np.zeros(len(listing.classes), dtype=np.int64)
    skipped: list[dict[str, str]] = []
    starts = range(0, total, _CHUNK)
    executor, count = _executor(total, workers)
    with executor as pool:
        # A bounded window of tasks ahead: decoded chunks never pile up in memory.
        window: deque = deque()
        ahead = 4 * count
        pending = iter(starts)
        for start in pending:
            window.append((start, pool.submit(_decode_chunk, paths[start : start + _CHUNK],
                                              image_size, in_channels)))
            if len(window) >= ahead:
                break
        while window:
            start, future = window.popleft()
            rows, failed = future.result()
            nxt = next(pending, None)
            if nxt is not None:
                window.append((nxt, pool.submit(_decode_chunk, paths[nxt : nxt + _CHUNK],
                                                image_size, in_channels)))
            chunk_labels = labels[start : start + _CHUNK]
            keep = np.ones(chunk_labels.shape[0], dtype=bool)
            for position, reason in failed:
                keep[position] = False
                skipped.append({"path": str(paths[start + position]), "reason": reason})
            sink.append(rows, chunk_labels[keep])
            decoded += np.bincount(chunk_labels[keep], minlength=decoded.shape[0])
            if progress is not None:
                progress(min(start + _CHUNK, total), total)
    for label, name in enumerate(listing.classes):
        if decoded[label] == 0:
            raise dataset_error(listing.root / name, f"class folder '{name}' has no image that decodes "
                                f"({int(np.sum(labels == label))} files skipped)")
    return skipped

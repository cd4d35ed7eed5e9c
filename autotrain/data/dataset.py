"""``load_dataset``: every source to one shape of result, split and described.

All sources end the same way: NCHW images in 0..1 at ``image_size`` x ``image_size`` with
``in_channels`` channels (not normalised), int64 labels 0..k-1, a seeded train/validation
split, and per-channel mean/std of the training split only (so no validation pixel leaks
into the normalisation).

Two stores hold the images. The imagefolder decodes into uint8 rows (``cache.ImageRows``),
in RAM or in a memory-mapped cache file (``cache``: "auto", "off", or a path), and a split
is a view of row indices, never a copy. The digits, IDX and npz sources are held in RAM as
float32 arrays, as before: their values (digits 0..16 upsampled, resized IDX, float npz)
are not all multiples of 1/255, so a uint8 store would change them.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np

from autotrain.data.arrays import (
    channel_stats,
    convert_channels,
    dataset_error,
    grey_to_model_input,
    resize_stack,
)
from autotrain.data import cache as image_cache
from autotrain.data.cache import ImageRows
from autotrain.data.digits import DIGITS_CLASS_NAMES, DIGITS_MAX_VALUE, load_digits_raw
from autotrain.data.idx import read_idx_folder
from autotrain.data.images import decode_listing, list_classes, list_folder
from autotrain.data.npz import read_npz
from autotrain.errors import ConfigError

SOURCES = ("digits", "idx", "imagefolder", "npz")
DIGITS_WHERE = "built-in dataset 'digits'"


@dataclass
class DatasetSplits:
    """A loaded dataset, ready for BatchLoader.

    train_x, val_x: (N, C, S, S) pixel values 0..1, NOT normalised: float32 arrays, or
        for the imagefolder ``ImageRows`` (uint8 rows read as float32 by indexing or
        ``np.asarray``; the loader takes their uint8 rows directly).
    train_y, val_y: int64 (N,), labels 0..len(class_names)-1.
    class_names: the original name of each label ("5" for digit 5 even when relabelled 0).
    mean, std: per-channel statistics of train_x (population std; 1.0 for a flat channel).
    info: JSON-serialisable facts about the load: source, path, counts, where the
        validation split came from, skipped undecodable files and why.
    """

    train_x: np.ndarray | ImageRows
    train_y: np.ndarray
    val_x: np.ndarray | ImageRows
    val_y: np.ndarray
    class_names: list[str]
    mean: list[float]
    std: list[float]
    info: dict[str, Any] = field(default_factory=dict)

    @property
    def num_classes(self) -> int:
        """Number of classes (the model's output width)."""
        return len(self.class_names)


def split_indices(count: int, val_fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Seeded random split of ``range(count)`` into sorted (train, val) int64 index arrays.

    The validation size is ``round(count * val_fraction)``, at least 1 and at most
    ``count - 1`` when ``val_fraction > 0``; ``val_fraction == 0`` gives an empty
    validation split. The same (count, val_fraction, seed) always gives the same split.
    """
    if not 0.0 <= val_fraction < 1.0:
        raise ConfigError(f"val_fraction must be in [0, 1), got {val_fraction}")
    everything = np.arange(count, dtype=np.int64)
    if val_fraction == 0.0 or count == 0:
        return everything, np.empty(0, dtype=np.int64)
    n_val = min(max(int(round(count * val_fraction)), 1), max(count - 1, 0))
    order = np.random.default_rng(seed).permutation(count)
    return np.sort(order[n_val:]), np.sort(order[:n_val])


def _check_arguments(source: str, path: str | os.PathLike[str] | None, image_size: int,
                     in_channels: int, num_classes: int, val_fraction: float, seed: int) -> None:
    """Reject argument values no dataset could satisfy (a config problem, exit 2)."""
    problems = []
    if source not in SOURCES:
        problems.append(f"data source must be one of {', '.join(SOURCES)}, got '{source}'")
    elif source != "digits" and not path:
        problems.append(f"data path is required for source '{source}'")
    if isinstance(image_size, bool) or not isinstance(image_size, int) or image_size < 1:
        problems.append(f"image_size must be a positive integer, got {image_size!r}")
    if in_channels not in (1, 3) or isinstance(in_channels, bool):
        problems.append(f"in_channels must be 1 or 3, got {in_channels!r}")
    if isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 1:
        problems.append(f"num_classes must be a positive integer, got {num_classes!r}")
    if not isinstance(val_fraction, (int, float)) or not 0.0 <= val_fraction < 1.0:
        problems.append(f"val_fraction must be in [0, 1), got {val_fraction!r}")
    if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
        problems.append(f"seed must be a non-negative integer, got {seed!r}")
    if problems:
        raise ConfigError(problems)


def _shown(names: list[str], limit: int = 10) -> str:
    """A short, one-line rendering of class names for messages."""
    return ", ".join(names[:limit]) + (", ..." if len(names) > limit else "")


def resolve_classes(classes: Sequence[int | str] | None, names: list[str],
                    where: object) -> list[int]:
    """Map a class selection to indices into ``names``, in the order given.

    None selects every class in order. A string must equal a class name. An int ``c``
    selects the class named ``str(c)`` when one exists (so folder "7" is class 7 even when
    sorting puts it elsewhere), otherwise the class at index ``c``. A class the dataset
    does not have is a DatasetError naming ``where``; an empty, duplicated or mistyped
    selection is a ConfigError.
    """
    if classes is None:
        return list(range(len(names)))
    if len(classes) == 0:
        raise ConfigError("classes must list at least one class (or be omitted for all)")
    position = {name: index for index, name in enumerate(names)}
    chosen: list[int] = []
    for item in classes:
        if isinstance(item, bool) or not isinstance(item, (int, str)):
            raise ConfigError(f"classes entries must be class names or integers, got {item!r}")
        key = str(item)
        if key in position:
            index = position[key]
        elif isinstance(item, int) and 0 <= item < len(names):
            index = item
        else:
            raise dataset_error(where, f"class {item!r} is not in the dataset "
                                f"(classes: {_shown(names, 20)})")
        if index in chosen:
            raise ConfigError(f"classes lists class {names[index]!r} twice")
        chosen.append(index)
    return chosen


def _check_class_count(selected: list[int], names: list[str], classes: object,
                       num_classes: int, where: object, noun: str = "classes") -> None:
    """The model's num_classes must equal the number of classes the data will have."""
    if len(selected) == num_classes:
        return
    if classes is None:
        raise dataset_error(where, f"found {len(names)} {noun} ({_shown(names)}) "
                            f"but num_classes is {num_classes}")
    raise dataset_error(where, f"classes selects {len(selected)} classes but num_classes is {num_classes}")


def _label_names(labels: Sequence[np.ndarray], wheres: Sequence[object],
                 given: list[str] | None, num_classes: int, selecting: bool) -> list[str]:
    """Class names for integer labels, after checking the labels' range.

    Negative labels are always an error. With ``given`` names, labels must index them.
    Without, the names are "0".."max"; when no class subset is selected every label must
    also lie in [0, num_classes), so the message can name the file and the offending label.
    """
    highest = -1
    for labels, where in zip(labels, wheres):
        if labels.size == 0:
            continue
        low, high = int(labels.min()), int(labels.max())
        if low < 0:
            raise dataset_error(where, f"negative label {low}; labels must be 0..num_classes-1")
        if given is not None and high >= len(given):
            raise dataset_error(where, f"label {high} has no entry in class_names ({len(given)} names)")
        if given is None and not selecting and high >= num_classes:
            raise dataset_error(where, f"label {high} is outside [0, {num_classes}) "
                                f"(num_classes is {num_classes})")
        highest = max(highest, high)
    if given is not None:
        return given
    return [str(label) for label in range(highest + 1)]


def _relabel(labels: np.ndarray, selected: list[int]) -> tuple[np.ndarray, np.ndarray]:
    """Return (mask of kept samples, new int64 labels of the kept samples)."""
    lookup = np.full(max(int(labels.max(initial=0)) + 1, max(selected) + 1), -1, dtype=np.int64)
    lookup[np.asarray(selected, dtype=np.int64)] = np.arange(len(selected), dtype=np.int64)
    new = lookup[labels.astype(np.int64)]
    keep = new >= 0
    return keep, new[keep]


def _require_samples(labels: np.ndarray, names: list[str], selected: list[int], where: object) -> None:
    """Every selected class must have at least one training sample."""
    counts = np.bincount(labels, minlength=len(selected))
    empty = [names[selected[label]] for label in range(len(selected)) if counts[label] == 0]
    if empty:
        raise dataset_error(where, f"class(es) {', '.join(empty)} have no samples")


@dataclass
class _Pooled:
    """Images ready for the model, before the train/validation split."""

    x: np.ndarray | ImageRows
    y: np.ndarray
    class_names: list[str]
    fixed_val: tuple[np.ndarray, np.ndarray] | None = None
    info: dict[str, Any] = field(default_factory=dict)


def _from_digits(image_size: int, in_channels: int, num_classes: int,
                 classes: Sequence[int | str] | None) -> _Pooled:
    raw_x, raw_y = load_digits_raw()
    names = list(DIGITS_CLASS_NAMES)
    selected = resolve_classes(classes, names, DIGITS_WHERE)
    _check_class_count(selected, names, classes, num_classes, DIGITS_WHERE)
    keep, y = _relabel(raw_y, selected)
    x = grey_to_model_input(raw_x[keep], DIGITS_MAX_VALUE, image_size, in_channels)
    return _Pooled(x=x, y=y, class_names=[names[i] for i in selected],
                   info={"original_size": [8, 8]})


def _from_idx(folder: Path, image_size: int, in_channels: int, num_classes: int,
              val_fraction: float, classes: Sequence[int | str] | None) -> _Pooled:
    train, test = read_idx_folder(folder)
    parts = [train] + ([test] if test is not None else [])
    names = _label_names([p.labels for p in parts], [p.labels_path for p in parts], None,
                         num_classes, selecting=classes is not None)
    selected = resolve_classes(classes, names, folder)
    _check_class_count(selected, names, classes, num_classes, train.labels_path)

    keep, y = _relabel(train.labels, selected)
    _require_samples(y, names, selected, train.labels_path)
    x = grey_to_model_input(train.images[keep], 255, image_size, in_channels)
    info: dict[str, Any] = {
        "files": [str(p) for part in parts for p in (part.images_path, part.labels_path)],
        "original_size": list(train.images.shape[1:]),
    }
    fixed_val = None
    if test is not None and val_fraction > 0:
        val_keep, val_y = _relabel(test.labels, selected)
        val_x = grey_to_model_input(test.images[val_keep], 255, image_size, in_channels)
        fixed_val = (val_x, val_y)
    return _Pooled(x=x, y=y, class_names=[names[i] for i in selected], fixed_val=fixed_val, info=info)


def _file_facts(listing) -> list[list]:
    """[relative name, label, size, mtime_ns] of each listed file: what the cache key sees."""
    facts = []
    prefix = os.path.join(str(listing.root), "")  # root + separator (os.path.relpath is slow)
    for path, label in zip(listing.paths, listing.labels):
        stat = os.stat(path)
        name = path[len(prefix):] if path.startswith(prefix) else os.path.relpath(path, listing.root)
        facts.append([name, label, stat.st_size, stat.st_mtime_ns])
    return facts


def _from_imagefolder(root: Path, image_size: int, in_channels: int, num_classes: int,
                      classes: Sequence[int | str] | None, cache: str | os.PathLike[str] | None,
                      progress: Callable[[int, int], None] | None, notify: Callable[[str], None] | None,
                      ) -> _Pooled:
    names = list_classes(root)
    selected = resolve_classes(classes, names, root)
    _check_class_count(selected, names, classes, num_classes, root, noun="class folders")
    chosen = [names[i] for i in selected]
    listing = list_folder(root, chosen)
    made_from = {"source": "imagefolder", "path": str(root.resolve()), "image_size": image_size,
                 "in_channels": in_channels, "classes": chosen}
    key = image_cache.fingerprint(dict(made_from, files=_file_facts(listing))) \
        if cache is not None and os.fspath(cache) != "off" else ""

    def build(sink) -> dict[str, Any]:
        skipped = decode_listing(listing, image_size, in_channels, sink, progress)
        return {"skipped_files": skipped, "num_ignored_files": listing.ignored}

    cached, where = image_cache.load_or_build(
        cache, f"imagefolder-{_safe_name(root)}-{image_size}px-{in_channels}ch", key, made_from,
        len(listing.paths), in_channels, image_size, build, notify)
    info = {"skipped_files": cached.extra.get("skipped_files", []),
            "num_ignored_files": cached.extra.get("num_ignored_files", listing.ignored),
            "cache": where.as_dict()}
    return _Pooled(x=cached.rows, y=cached.labels, class_names=chosen, info=info)


def _safe_name(root: Path) -> str:
    """The folder's name, reduced to characters safe in a file name (for the cache file)."""
    name = root.resolve().name or "root"
    return "".join(c if c.isalnum() or c in "-_" else "_" for c in name)[:40]


def _take(x: np.ndarray | ImageRows, positions: np.ndarray) -> np.ndarray | ImageRows:
    """Rows ``positions`` of a pooled store: a view of an ImageRows, a copy of an array."""
    return x.subset(positions) if isinstance(x, ImageRows) else x[positions]


def _from_npz(path: Path, image_size: int, in_channels: int, num_classes: int,
              classes: Sequence[int | str] | None) -> _Pooled:
    x_raw, y_raw, given = read_npz(path)
    names = _label_names([y_raw], [path], given, num_classes, selecting=classes is not None)
    selected = resolve_classes(classes, names, path)
    _check_class_count(selected, names, classes, num_classes, path)
    keep, y = _relabel(y_raw, selected)
    _require_samples(y, names, selected, path)
    x = convert_channels(x_raw[keep], in_channels, path)
    x = resize_stack(x, image_size)
    return _Pooled(x=x, y=y, class_names=[names[i] for i in selected],
                   info={"original_size": list(x_raw.shape[2:])})


def load_dataset(source: str, path: str | os.PathLike[str] | None, image_size: int,
                 in_channels: int, num_classes: int, val_fraction: float = 0.2,
                 classes: list[int] | list[str] | None = None, seed: int = 0, cache: str | os.PathLike[str] | None = None,
                 progress: Callable[[int, int], None] | None = None,
                 notify: Callable[[str], None] | None = None) -> DatasetSplits:
    """Load ``source`` and return seeded train/validation splits with train-only statistics.

    source: "digits" (built in; ``path`` is ignored), "idx" (a folder of MNIST-format
        files; its t10k files, when present, are the validation split), "imagefolder"
        (root/<class>/**/<image>), or "npz" (a file with arrays x and y).
    image_size, in_channels: every image is resized to image_size x image_size and
        converted to 1 (grey) or 3 (RGB) channels.
    num_classes: must equal the number of classes the data ends up with.
    val_fraction: share of the pooled samples held out for validation, in [0, 1); 0
        gives empty validation arrays of shape (0, C, S, S) and (0,).
    classes: optional subset, relabelled 0..k-1 in the given order (see resolve_classes).
    seed: seeds the split (np.random.default_rng(seed)).
    cache: where the imagefolder's decoded uint8 rows live: None or "off" (RAM), "auto"
        (a file under ``cache.default_cache_dir()``), or a path (see ``cache.cache_file``);
        other sources ignore it. ``info["cache"]`` says which file and whether it was read,
        built or rebuilt.
    progress: ``progress(done, total)`` while image files decode; ``notify(text)``: one-line
        warnings (a cache rebuilt, a wait for another process building it).

    Raises DatasetError (exit 4, one line naming the file or folder) for any data problem,
    ConfigError (exit 2) for argument values no dataset could satisfy.
    """
    _check_arguments(source, path, image_size, in_channels, num_classes, val_fraction, seed)
    location = Path(path) if path and source != "digits" else None
    if source == "digits":
        pooled = _from_digits(image_size, in_channels, num_classes, classes)
        where: object = DIGITS_WHERE
    elif source == "idx":
        pooled = _from_idx(location, image_size, in_channels, num_classes, val_fraction, classes)
        where = location
    elif source == "imagefolder":
        pooled = _from_imagefolder(location, image_size, in_channels, num_classes, classes,
                                   cache, progress, notify)
        where = location
    else:
        pooled = _from_npz(location, image_size, in_channels, num_classes, classes)
        where = location

    if pooled.fixed_val is not None:
        train_x, train_y = pooled.x, pooled.y
        val_x, val_y = pooled.fixed_val
        val_source = "t10k files"
    else:
        if val_fraction > 0 and len(pooled.y) < 2:
            raise dataset_error(where, f"only {len(pooled.y)} sample(s): too few to split off validation")
        train_idx, val_idx = split_indices(len(pooled.y), val_fraction, seed)
        train_x, train_y = _take(pooled.x, train_idx), pooled.y[train_idx]
        val_x, val_y = _take(pooled.x, val_idx), pooled.y[val_idx]
        val_source = f"random split (val_fraction {val_fraction}, seed {seed})" if len(val_idx) else "none"
    if len(train_y) == 0:
        raise dataset_error(where, "no training samples")

    mean, std = train_x.channel_stats() if isinstance(train_x, ImageRows) else channel_stats(train_x)
    info: dict[str, Any] = {
        "source": source,
        "path": str(location) if location is not None else None,
        "num_train": int(len(train_y)),
        "num_val": int(len(val_y)),
        "val_source": val_source,
        "train_class_counts": np.bincount(train_y, minlength=len(pooled.class_names)).tolist(),
        "skipped_files": [],
    }
    info.update(pooled.info)
    if not isinstance(train_x, ImageRows):
        train_x = np.ascontiguousarray(train_x, dtype=np.float32)
        val_x = np.ascontiguousarray(val_x, dtype=np.float32)
    return DatasetSplits(
        train_x=train_x,
        train_y=train_y.astype(np.int64, copy=False),
        val_x=val_x,
        val_y=val_y.astype(np.int64, copy=False),
        class_names=list(pooled.class_names),
        mean=mean,
        std=std,
        info=info,
    )


"""Seeded mini-batches: shuffle, augment (train only), normalise, all vectorised over the batch.

Reproducibility contract: the sample order of epoch ``e`` and the augmentation of batch
``b`` in it depend only on (seed, e) and (seed, e, b). Nothing carries over from earlier
epochs or batches, so a run resumed at (epoch e, batch b) sees exactly the batches an
uninterrupted run would have seen: call ``loader.epoch(e, start_batch=b)``.

Sharding (data-parallel training): ``batch(e, b, part=slice(lo, hi))`` is rows lo:hi of
global batch b, bit for bit: its augmentation numbers are drawn for the whole global batch
and then sliced, so a process computing a shard sees exactly what one process sees.

The images come as a float array or as uint8 ``ImageRows`` (RAM or a memory-mapped cache);
uint8 rows are gathered, augmented as uint8 (cropping pads with 0, flipping moves bytes:
both exact) and only then turned into float32 and normalised, one batch at a time.
"""

from __future__ import annotations

import math
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Callable, Iterator, Sequence

import numpy as np
from numpy.lib.stride_tricks import sliding_window_view

from autotrain.data.cache import ImageRows, to_unit_float

# Stream tags inside one (seed, epoch): independent generators for order and augmentation.
_ORDER_STREAM = 0
_AUGMENT_STREAM = 1


@dataclass(frozen=True)
class AugmentSpec:
    """Training-time augmentation; the default does nothing.

    crop_padding: pad each side with this many zero pixels (black, before normalisation,
        as torchvision's ``RandomCrop(size, padding=p)``), then crop a random window of the
        original size; 0 turns cropping off.
    hflip: mirror left-right with probability 0.5 (leave off for digits and text).
    """

    crop_padding: int = 0
    hflip: bool = False

    def __post_init__(self) -> None:
        if isinstance(self.crop_padding, bool) or not isinstance(self.crop_padding, int) \
                or self.crop_padding < 0:
            raise ValueError(f"crop_padding must be a non-negative integer, got {self.crop_padding!r}")

    @property
    def active(self) -> bool:
        """True when this spec changes any image."""
        return self.crop_padding > 0 or self.hflip


def random_crop(images: np.ndarray, padding: int, offset_y: np.ndarray,
                offset_x: np.ndarray) -> np.ndarray:
    """Zero-pad NCHW ``images`` by ``padding`` and cut each sample's window at its offset.

    Sample i of the result is ``padded[i, :, offset_y[i]:offset_y[i]+H, offset_x[i]:offset_x[i]+W]``
    with offsets in [0, 2 * padding]; offset ``padding`` is the unshifted image. One gather
    over a sliding-window view, no loop over samples.
    """
    if padding == 0:
        return images.copy()
    height, width = images.shape[2:]
    padded = np.pad(images, ((0, 0), (0, 0), (padding, padding), (padding, padding)))
    windows = sliding_window_view(padded, (height, width), axis=(2, 3))  # (N, C, oy, ox, H, W)
    batch = np.arange(images.shape[0])
    # Advanced indices split by a slice put the batch axis first: the result is (N, C, H, W).
    return np.ascontiguousarray(windows[batch, :, offset_y, offset_x])


def horizontal_flip(images: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """Mirror left-right the samples of NCHW ``images`` where ``mask`` is True, in place."""
    images[mask] = images[mask][..., ::-1]
    return images


def normalize_own(images: np.ndarray, mean: Sequence[float], std: Sequence[float]) -> np.ndarray:
    """(images - mean) / std per channel of NCHW ``images``, as float32: the one definition
    training, evaluation and prediction share (subtract the mean, multiply by float32(1/std)).
    ``images`` must be an array nobody else holds: a float32 one is normalised in place."""
    out = images.astype(np.float32, copy=False)
    out -= np.asarray(mean, dtype=np.float32).reshape(1, -1, 1, 1)
    out *= (1.0 / np.asarray(std, dtype=np.float64)).astype(np.float32).reshape(1, -1, 1, 1)
    return out


class BatchLoader:
    """Iterate (x, y) batches of a dataset split, one epoch at a time.

    x: float (N, C, H, W) pixels in 0..1, or ``ImageRows`` (uint8, read as v / 255), not
    normalised; y: int (N,) labels.
    Each batch is (float32 (B, C, H, W) normalised as (x - mean) / std per channel, int64
    (B,)). With ``shuffle`` the order is a permutation drawn from (seed, epoch); without,
    it is 0..N-1. Every sample appears exactly once per epoch, except the last partial
    batch which ``drop_last`` leaves out. ``augment`` is applied before normalisation;
    give it only to the training loader. ``prefetch``: ``epoch()`` prepares the next batch
    in a background thread while the caller works on the current one (same batches).
    """

    def __init__(self, x: np.ndarray | ImageRows, y: np.ndarray, batch_size: int, mean: Sequence[float],
                 std: Sequence[float], shuffle: bool = True, seed: int = 0,
                 augment: AugmentSpec | None = None, drop_last: bool = False,
                 prefetch: bool = False) -> None:
        if x.ndim != 4:
            raise ValueError(f"x must be NCHW, got shape {x.shape}")
        if y.shape != (x.shape[0],):
            raise ValueError(f"y shape {y.shape} does not match {x.shape[0]} samples")
        if batch_size < 1:
            raise ValueError(f"batch_size must be positive, got {batch_size}")
        if len(mean) != x.shape[1] or len(std) != x.shape[1]:
            raise ValueError(f"mean/std need {x.shape[1]} values, got {len(mean)} and {len(std)}")
        if any(s <= 0 for s in std):
            raise ValueError(f"std values must be positive, got {list(std)}")
        if seed < 0:
            raise ValueError(f"seed must be non-negative, got {seed}")
        self.x = x
        self.y = y
        self.batch_size = int(batch_size)
        self.shuffle = shuffle
        self.seed = int(seed)
        self.augment = augment if augment is not None and augment.active else None
        self.drop_last = drop_last
        self.prefetch = prefetch
        self._order: tuple[int, np.ndarray] | None = None
        # Shaped for broadcasting over (B, C, H, W); multiply by 1/std rather than divide.
        self.mean, self.std = list(mean), list(std)

    @property
    def num_samples(self) -> int:
        """Samples in the split (including any that drop_last leaves out)."""
        return int(self.x.shape[0])

    def __len__(self) -> int:
        """Batches per epoch."""
        if self.drop_last:
            return self.num_samples // self.batch_size
        return math.ceil(self.num_samples / self.batch_size)

    def _generator(self, *key: int) -> np.random.Generator:
        """A generator that depends on (seed, *key) only (SeedSequence spawn keys)."""
        return np.random.default_rng(np.random.SeedSequence(self.seed, spawn_key=key))

    def order(self, epoch: int) -> np.ndarray:
        """The sample indices of ``epoch`` in visiting order (before drop_last)."""
        if epoch < 0:
            raise ValueError(f"epoch must be non-negative, got {epoch}")
        if not self.shuffle:
            return np.arange(self.num_samples, dtype=np.int64)
        memo = self._order  # one epoch's permutation, kept: batch_indices asks once a batch
        if memo is None or memo[0] != epoch:
            permutation = self._generator(epoch, _ORDER_STREAM).permutation(self.num_samples)
            permutation.flags.writeable = False  # shared by every caller until the epoch changes
            memo = self._order = (epoch, permutation)
        return memo[1]

    def batch_indices(self, epoch: int, batch_index: int) -> np.ndarray:
        """The sample indices of global batch ``batch_index`` of ``epoch``, in batch order."""
        if not 0 <= batch_index < len(self):
            raise IndexError(f"batch {batch_index} is outside 0..{len(self) - 1}")
        start = batch_index * self.batch_size
        return self.order(epoch)[start : start + self.batch_size]

    def _augment(self, images: np.ndarray, epoch: int, batch_index: int, part: slice) -> np.ndarray:
        """Augment rows ``part`` of global batch ``batch_index`` (``images`` holds just those
        rows): the random numbers are drawn for the whole global batch, then sliced."""
        spec = self.augment
        rng = self._generator(epoch, _AUGMENT_STREAM, batch_index)
        count = len(self.batch_indices(epoch, batch_index))
        if spec.crop_padding > 0:
            offset_y = rng.integers(0, 2 * spec.crop_padding + 1, size=count)[part]
            offset_x = rng.integers(0, 2 * spec.crop_padding + 1, size=count)[part]
            images = random_crop(images, spec.crop_padding, offset_y, offset_x)
        if spec.hflip:
            images = horizontal_flip(images, (rng.random(count) < 0.5)[part])
        return images

    def batch(self, epoch: int, batch_index: int,
              part: slice | None = None) -> tuple[np.ndarray, np.ndarray]:
        """(x, y) of global batch ``batch_index`` of ``epoch``, or of its rows ``part``
        (a slice with step 1) when given: exactly those rows of the whole batch."""
        indices = self.batch_indices(epoch, batch_index)
        part = slice(None) if part is None else part
        if part.step not in (None, 1):
            raise ValueError(f"part must be a contiguous slice, got {part}")
        indices = indices[part]
        if isinstance(self.x, ImageRows):
            images = self.x.take(indices)
        else:
            images = self.x[indices]
        if self.augment is not None:
            images = self._augment(images, epoch, batch_index, part)
        if images.dtype == np.uint8:
            images = to_unit_float(images)
        # The batch is a copy (fancy indexing; the dataset is never modified): normalise in place.
        return normalize_own(images, self.mean, self.std), self.y[indices].astype(np.int64, copy=False)

    def epoch(self, epoch: int, start_batch: int = 0,
              part_of: Callable[[int], slice] | None = None) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        """Yield the batches of ``epoch``, starting at batch ``start_batch`` (for resume).
        ``part_of`` (data parallel): given a global batch's size, the rows of it to yield."""
        batches = range(start_batch, len(self))

        def load(batch_index: int):
            part = None if part_of is None else part_of(len(self.batch_indices(epoch, batch_index)))
            return self.batch(epoch, batch_index, part)

        if not self.prefetch or len(batches) < 2:
            for batch_index in batches:
                yield load(batch_index)
            return
        self.order(epoch)  # computed once here, not raced for by the worker thread
        with ThreadPoolExecutor(max_workers=1, thread_name_prefix="autotrain-prefetch") as worker:
            upcoming = worker.submit(load, batches[0])
            for batch_index in batches[1:]:
                current = upcoming.result()
                upcoming = worker.submit(load, batch_index)
                yield current
            yield upcoming.result()

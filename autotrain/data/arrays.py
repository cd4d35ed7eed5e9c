"""Array helpers shared by every dataset source: resizing, channel conversion, statistics.

Everything here works on whole stacks of images at once (no Python loop per image or per
pixel) and keeps float32 NCHW, the layout the rest of autotrain uses.
"""

from __future__ import annotations

import numpy as np

from autotrain.errors import DatasetError

# Pillow's "L" conversion weights (ITU-R 601-2 luma), so that an RGB array turned grey here
# matches an RGB image turned grey by Pillow in the imagefolder source.
LUMA_WEIGHTS = np.array([0.299, 0.587, 0.114], dtype=np.float32)

# Elements handled per step on big stacks (about 16 MB of float32): bounds the size of the
# temporaries without a Python loop over single images.
_CHUNK_ELEMENTS = 1 << 22


def _step(item_elements: int) -> int:
    """Number of items (images or planes) per chunk so that a chunk stays near _CHUNK_ELEMENTS."""
    return max(1, _CHUNK_ELEMENTS // max(1, item_elements))


def dataset_error(where: object, problem: str) -> DatasetError:
    """Build a DatasetError whose one-line message starts with the file or folder at fault.

    Newlines (from an exception text or an odd file name) are escaped so the message stays
    one line, as the CLI contract requires.
    """
    message = f"{where}: {problem}"
    return DatasetError(message.replace("\r", "\\r").replace("\n", "\\n"))


def bilinear_matrix(in_size: int, out_size: int) -> np.ndarray:
    """Return the (out_size, in_size) float64 matrix of Pillow's BILINEAR resampling.

    Row i holds the weights of the input pixels that make output pixel i, computed as
    Pillow's ``precompute_coeffs`` does: a triangle filter centred at ``(i + 0.5) * scale``
    and widened by the scale when shrinking (so downscaling is antialiased), each row
    normalised to sum 1. Applying it on both axes reproduces ``Image.resize(...,
    Image.BILINEAR)`` on a float ("F") image to float32 rounding.
    """
    if in_size < 1 or out_size < 1:
        raise ValueError(f"sizes must be positive, got {in_size} -> {out_size}")
    scale = in_size / out_size
    filter_scale = max(scale, 1.0)
    centers = (np.arange(out_size, dtype=np.float64) + 0.5) * scale
    taps = np.arange(in_size, dtype=np.float64) + 0.5
    distance = (taps[None, :] - centers[:, None]) / filter_scale
    weights = np.clip(1.0 - np.abs(distance), 0.0, None)
    return weights / weights.sum(axis=1, keepdims=True)


def resize_stack(images: np.ndarray, size: int) -> np.ndarray:
    """Resize float images (..., H, W) to (..., size, size) with Pillow-equivalent bilinear.

    One matrix product per axis for the whole stack; returns float32. An image already
    ``size`` x ``size`` is returned unchanged (as float32).
    """
    height, width = images.shape[-2:]
    images = images.astype(np.float32, copy=False)
    if (height, width) == (size, size):
        return images
    rows = bilinear_matrix(height, size).astype(np.float32)
    cols_t = bilinear_matrix(width, size).T.astype(np.float32).copy()
    out = np.empty(images.shape[:-2] + (size, size), dtype=np.float32)
    flat_in = images.reshape((-1, height, width))
    flat_out = out.reshape((-1, size, size))
    step = _step(max(height, size) * max(width, size))
    for start in range(0, flat_in.shape[0], step):
        flat_out[start : start + step] = rows @ flat_in[start : start + step] @ cols_t
    return out


def convert_channels(images: np.ndarray, in_channels: int, where: object) -> np.ndarray:
    """Return float32 NCHW ``images`` with ``in_channels`` channels.

    Grey to RGB repeats the channel; RGB to grey uses Pillow's luma weights. Any other
    channel count is a DatasetError naming ``where``.
    """
    channels = images.shape[1]
    if channels == in_channels:
        return images
    if channels == 1 and in_channels == 3:
        return np.repeat(images, 3, axis=1)
    if channels == 3 and in_channels == 1:
        grey = np.tensordot(LUMA_WEIGHTS, images, axes=([0], [1]))
        return grey[:, None].astype(np.float32, copy=False)
    raise dataset_error(where, f"cannot convert {channels}-channel images to {in_channels} channels")


def grey_to_model_input(images: np.ndarray, max_value: float, image_size: int,
                        in_channels: int) -> np.ndarray:
    """Turn a grey stack (N, H, W) of values 0..max_value into float32 (N, C, S, S) in 0..1.

    Used by the digits and IDX sources: scale, resize, then repeat the grey channel when
    three channels are asked for (resizing first keeps the work on one channel).
    """
    out = np.empty((images.shape[0], 1, image_size, image_size), dtype=np.float32)
    step = _step(images.shape[1] * images.shape[2])
    for start in range(0, images.shape[0], step):
        chunk = images[start : start + step].astype(np.float32) / np.float32(max_value)
        out[start : start + step, 0] = resize_stack(chunk, image_size)
    return convert_channels(out, in_channels, "grey images")


def channel_stats(images: np.ndarray) -> tuple[list[float], list[float]]:
    """Per-channel mean and population std of float NCHW ``images``, accumulated in float64.

    Works chunk by chunk so a large training set needs no float64 copy of itself. A
    channel with no spread (std below 1e-6, e.g. a blank dataset) gets std 1.0 so that
    normalising never divides by zero. An empty stack gives mean 0 and std 1.
    """
    count = images.shape[0] * images.shape[2] * images.shape[3] if images.ndim == 4 else 0
    channels = images.shape[1]
    if count == 0:
        return [0.0] * channels, [1.0] * channels
    step = _step(images[0].size)
    total = np.zeros(channels, dtype=np.float64)
    for start in range(0, images.shape[0], step):
        total += images[start : start + step].sum(axis=(0, 2, 3), dtype=np.float64)
    mean = total / count
    squares = np.zeros(channels, dtype=np.float64)
    centre = mean[None, :, None, None]
    for start in range(0, images.shape[0], step):
        diff = images[start : start + step].astype(np.float64) - centre
        squares += np.einsum("nchw,nchw->c", diff, diff)
    std = np.sqrt(squares / count)
    std = np.where(std < 1e-6, 1.0, std)
    return [float(m) for m in mean], [float(s) for s in std]

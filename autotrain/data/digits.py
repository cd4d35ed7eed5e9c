"""The built-in ``digits`` dataset: UCI optdigits, 5,620 grey 8x8 images of digits 0..9.

The arrays ship inside the package as ``digits.npz`` (built by scripts/make_digits_npz.py;
attribution and provenance in DIGITS_LICENSE.txt, CC BY 4.0) and are found through
importlib.resources, so loading works from any working directory and from an installed
wheel.
"""

from __future__ import annotations

import functools
from importlib import resources

import numpy as np

from autotrain.data.arrays import dataset_error

DIGITS_RESOURCE = "digits.npz"
DIGITS_CLASS_NAMES = [str(digit) for digit in range(10)]
DIGITS_MAX_VALUE = 16  # each pixel counts the "on" bits of a 4x4 block of a 32x32 bitmap
DIGITS_COUNT = 5620


@functools.lru_cache(maxsize=1)
def load_digits_raw() -> tuple[np.ndarray, np.ndarray]:
    """Return the pooled digits as read-only arrays: x uint8 (5620, 8, 8) in 0..16, y uint8.

    The .tra rows come first, then the .tes rows (the file's ``split`` array records which
    is which; autotrain pools them and splits by ``val_fraction``). Raises DatasetError
    naming the packaged file if it is missing or not the expected shape (a broken install).
    """
    resource = resources.files("autotrain.data").joinpath(DIGITS_RESOURCE)
    where = f"autotrain/data/{DIGITS_RESOURCE} (built-in digits)"
    try:
        with resources.as_file(resource) as path, np.load(path, allow_pickle=False) as archive:
            x = np.array(archive["x"], dtype=np.uint8)
            y = np.array(archive["y"], dtype=np.uint8)
    except (OSError, KeyError, ValueError) as exc:
        raise dataset_error(where, f"cannot read the packaged dataset ({exc})") from exc
    if x.shape != (DIGITS_COUNT, 8, 8) or y.shape != (DIGITS_COUNT,):
        raise dataset_error(where, f"unexpected shapes x {x.shape}, y {y.shape}")
    # The cache hands the same arrays to every caller, so nobody may write into them.
    x.flags.writeable = False
    y.flags.writeable = False
    return x, y

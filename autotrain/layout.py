"""Memory-layout views shared by the optimizer and the communicator.

Gradients and parameters are dense blocks in some axis order (the convolution weights are
channels-last). Walking them in memory order makes element-wise work a plain block pass,
whatever the logical order.
"""

from __future__ import annotations

import numpy as np


def flat_view(a: np.ndarray) -> np.ndarray | None:
    """A 1-D view of ``a`` in memory order, or None when ``a`` is not one dense block."""
    if a.flags.c_contiguous:
        return a.reshape(-1)
    order = np.argsort(a.strides, kind="stable")[::-1]
    v = a.transpose(order)
    return v.reshape(-1) if v.flags.c_contiguous else None


def view_like(block: np.ndarray, a: np.ndarray) -> np.ndarray:
    """``block`` (1-D, contiguous, ``a.size`` elements of ``a``'s dtype, filled from
    ``flat_view(a)``) seen with ``a``'s shape and strides: the inverse of ``flat_view``."""
    return np.ndarray(a.shape, a.dtype, buffer=block, strides=a.strides)

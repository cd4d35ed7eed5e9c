"""Tensor factories and the global random generator (torch.manual_seed's counterpart)."""

from __future__ import annotations

import numpy as np

from .tensor import Tensor, dims_arg

_rng = np.random.default_rng()


def manual_seed(seed: int) -> np.random.Generator:
    """Reseed the generator behind rand/randn and the layers' initialisation."""
    global _rng
    _rng = np.random.default_rng(seed)
    return _rng


def generator() -> np.random.Generator:
    """The global generator (parameter initialisation draws from it)."""
    return _rng


def tensor(data, dtype=None, requires_grad: bool = False) -> Tensor:
    """A new leaf holding a copy of ``data``.

    Python floats (and nested lists of them) become float32, torch's default dtype; Python
    ints become int64 and bools bool, as in torch. An ndarray keeps its dtype.
    """
    if isinstance(data, Tensor):
        data = data.data
    if isinstance(data, (np.ndarray, np.generic)):
        arr = np.array(data, dtype=dtype, copy=True)
    else:
        arr = np.array(data, dtype=dtype)
        if dtype is None and arr.dtype == np.float64:
            arr = arr.astype(np.float32)
    return Tensor(arr, requires_grad=requires_grad)


def from_numpy(array: np.ndarray) -> Tensor:
    """A leaf sharing ``array``'s memory and dtype."""
    return Tensor(array)


def zeros(*size, dtype=np.float32, requires_grad: bool = False) -> Tensor:
    return Tensor(np.zeros(dims_arg(size), dtype=dtype), requires_grad=requires_grad)


def ones(*size, dtype=np.float32, requires_grad: bool = False) -> Tensor:
    return Tensor(np.ones(dims_arg(size), dtype=dtype), requires_grad=requires_grad)


def rand(*size, dtype=np.float32, requires_grad: bool = False) -> Tensor:
    """Uniform on [0, 1)."""
    return Tensor(_rng.random(dims_arg(size), dtype=np.float64).astype(dtype), requires_grad=requires_grad)


def randn(*size, dtype=np.float32, requires_grad: bool = False) -> Tensor:
    """Standard normal."""
    return Tensor(_rng.standard_normal(dims_arg(size)).astype(dtype), requires_grad=requires_grad)


def zeros_like(t: Tensor, requires_grad: bool = False) -> Tensor:
    return Tensor(np.zeros_like(t.data), requires_grad=requires_grad)


def ones_like(t: Tensor, requires_grad: bool = False) -> Tensor:
    return Tensor(np.ones_like(t.data), requires_grad=requires_grad)

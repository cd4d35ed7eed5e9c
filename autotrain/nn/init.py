"""Parameter initialisers with torch.nn.init's formulas, drawing from autotrain's generator.

They write into the tensor's existing array, so a channels-last weight stays channels-last.
"""

from __future__ import annotations

import math

import numpy as np

from ..autograd.factory import generator
from ..autograd.tensor import Tensor


def _fans(t: Tensor) -> tuple[int, int]:
    receptive = int(np.prod(t.shape[2:])) if t.ndim > 2 else 1
    return t.shape[1] * receptive, t.shape[0] * receptive


def kaiming_normal_(t: Tensor, mode: str = "fan_in", nonlinearity: str = "relu") -> Tensor:
    """N(0, std^2) with std = gain / sqrt(fan), gain sqrt(2) for relu."""
    fan_in, fan_out = _fans(t)
    gain = math.sqrt(2.0) if nonlinearity == "relu" else 1.0
    std = gain / math.sqrt(fan_in if mode == "fan_in" else fan_out)
    t.data[...] = generator().standard_normal(t.shape) * std
    return t


def uniform_(t: Tensor, a: float, b: float) -> Tensor:
    t.data[...] = generator().uniform(a, b, t.shape)
    return t


def default_init_(weight: Tensor, bias: Tensor | None) -> None:
    """torch's default for Linear and Conv2d: kaiming_uniform(a=sqrt(5)), i.e. U(+-1/sqrt(fan_in)),
    for the weight and U(+-1/sqrt(fan_in)) for the bias."""
    fan_in, _ = _fans(weight)
    bound = 1.0 / math.sqrt(fan_in) if fan_in > 0 else 0.0
    uniform_(weight, -bound, bound)
    if bias is not None:
        uniform_(bias, -bound, bound)


def constant_(t: Tensor, value: float) -> Tensor:
    t.data[...] = value
    return t

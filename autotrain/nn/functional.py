"""Functional forms of the layers: composites of primitives, plus the three fused kernels."""

from __future__ import annotations

import numpy as np

from ..autograd import nn_ops, ops
from ..autograd.tensor import Tensor


def _pair(v) -> tuple[int, int]:
    return (int(v), int(v)) if np.isscalar(v) else (int(v[0]), int(v[1]))


def relu(x: Tensor) -> Tensor:
    return ops.Relu.apply(x)


def add_relu(a: Tensor, b: Tensor) -> Tensor:
    """``relu(a + b)`` (a residual block's end) in one kernel; NumPy broadcasting applies."""
    return ops.AddRelu.apply(a, b)


def linear(x: Tensor, weight: Tensor, bias: Tensor | None = None) -> Tensor:
    """y = x W^T + b, as torch.nn.functional.linear."""
    y = x @ weight.T
    return y if bias is None else y + bias


def conv2d(x: Tensor, weight: Tensor, bias: Tensor | None = None, stride=1, padding=0, dilation=1,
           groups: int = 1) -> Tensor:
    """2-D convolution (cross-correlation) over NCHW input; groups=1 only."""
    if groups != 1:
        raise NotImplementedError("conv2d: only groups=1 is supported")
    if x.ndim != 4 or weight.ndim != 4 or x.shape[1] != weight.shape[1]:
        raise RuntimeError(f"conv2d: input {x.shape} does not fit weight {weight.shape} (expected N, {weight.shape[1]}, H, W)")
    args = (x, weight) if bias is None else (x, weight, bias)
    return nn_ops.Conv2d.apply(*args, stride=_pair(stride), padding=_pair(padding), dilation=_pair(dilation))


def max_pool2d(x: Tensor, kernel_size, stride=None, padding=0) -> Tensor:
    k = _pair(kernel_size)
    s = k if stride is None else _pair(stride)
    return nn_ops.MaxPool2d.apply(x, kernel_size=k, stride=s, padding=_pair(padding))


def adaptive_avg_pool2d(x: Tensor, output_size) -> Tensor:
    """Average over equal windows; each input side must be a multiple of the output side."""
    oh, ow = _pair(output_size)
    n, c, h, w = x.shape
    if h % oh or w % ow:
        raise NotImplementedError(f"adaptive_avg_pool2d: input {h}x{w} is not a multiple of {oh}x{ow}")
    if (oh, ow) == (1, 1):
        return x.mean(axis=(2, 3), keepdims=True)
    return x.reshape(n, c, oh, h // oh, ow, w // ow).mean(axis=(3, 5))


def batch_norm(x: Tensor, running_mean: Tensor | None, running_var: Tensor | None,
               weight: Tensor | None = None, bias: Tensor | None = None, training: bool = False,
               momentum: float = 0.1, eps: float = 1e-5, reduce=None) -> Tensor:
    """Batch normalisation over all axes but 1 (see nn_ops.BatchNorm for the convention).

    In training mode the running statistics, when given, are updated in place. ``reduce``
    (a function summing a float64 vector over the processes of a data-parallel job) makes
    the batch statistics those of the global batch (synchronised BatchNorm).
    """
    return _batch_norm(x, running_mean, running_var, weight, bias, training, momentum, eps, False, reduce)


def batch_norm_relu(x: Tensor, running_mean: Tensor | None, running_var: Tensor | None,
                    weight: Tensor | None = None, bias: Tensor | None = None, training: bool = False,
                    momentum: float = 0.1, eps: float = 1e-5, reduce=None) -> Tensor:
    """``relu(batch_norm(...))`` in one kernel: the same values and gradients, one
    activation-sized array fewer in forward and in backward."""
    return _batch_norm(x, running_mean, running_var, weight, bias, training, momentum, eps, True, reduce)


def _batch_norm(x, running_mean, running_var, weight, bias, training, momentum, eps, relu, reduce=None) -> Tensor:
    c = x.shape[1]
    if weight is None:
        weight = Tensor(np.ones(c, dtype=x.dtype))
    if bias is None:
        bias = Tensor(np.zeros(c, dtype=x.dtype))
    if not training and (running_mean is None or running_var is None):
        raise RuntimeError("batch_norm: running_mean and running_var are required in eval mode")
    return nn_ops.BatchNorm.apply(
        x, weight, bias,
        running_mean=None if running_mean is None else running_mean.data,
        running_var=None if running_var is None else running_var.data,
        training=training, momentum=momentum, eps=eps, relu=relu, reduce=reduce)


def log_softmax(x: Tensor, dim: int = -1) -> Tensor:
    """x - logsumexp(x); the max is subtracted as a constant for stability (the gradient of a
    shift that is constant per row cancels, so detaching it is exact)."""
    shift = Tensor(x.data.max(axis=dim, keepdims=True))
    z = x - shift
    return z - z.exp().sum(axis=dim, keepdims=True).log()


def softmax(x: Tensor, dim: int = -1) -> Tensor:
    return log_softmax(x, dim).exp()


def _reduce(loss: Tensor, reduction: str) -> Tensor:
    if reduction == "mean":
        return loss.mean()
    if reduction == "sum":
        return loss.sum()
    if reduction == "none":
        return loss
    raise ValueError(f"reduction must be 'mean', 'sum' or 'none', got {reduction!r}")


def nll_loss(logp: Tensor, target, reduction: str = "mean") -> Tensor:
    t = target.data if isinstance(target, Tensor) else np.asarray(target)
    if t.ndim != 1 or t.shape[0] != logp.shape[0]:
        raise RuntimeError(f"nll_loss: target shape {t.shape} does not fit input {logp.shape}")
    if t.size and (t.min() < 0 or t.max() >= logp.shape[1]):
        raise IndexError(f"nll_loss: target {int(t.min())}..{int(t.max())} out of bounds for {logp.shape[1]} classes")
    return _reduce(-logp[np.arange(t.shape[0]), t.astype(np.intp)], reduction)


def cross_entropy(logits: Tensor, target, reduction: str = "mean") -> Tensor:
    """Mean negative log-likelihood of integer class targets under softmax(logits)."""
    return nll_loss(log_softmax(logits, dim=1), target, reduction)


def mse_loss(x: Tensor, target: Tensor, reduction: str = "mean") -> Tensor:
    d = x - target
    return _reduce(d * d, reduction)


def flatten(x: Tensor, start_dim: int = 1, end_dim: int = -1) -> Tensor:
    return x.flatten(start_dim, end_dim)

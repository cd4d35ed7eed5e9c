"""Primitive operations: forward and backward side by side, one small class each.

Every other differentiable operation (mean, linear, log_softmax, cross_entropy, ...) is a
composite of these and needs no backward of its own. Gradients returned here may keep a
broadcast shape: the engine's ``unbroadcast`` sums them back to each input's shape.
"""

from __future__ import annotations

import numpy as np

from .function import Function


class Add(Function):
    @staticmethod
    def forward(ctx, a, b):
        return a + b

    @staticmethod
    def backward(ctx, g):
        return g, g


class Sub(Function):
    @staticmethod
    def forward(ctx, a, b):
        return a - b

    @staticmethod
    def backward(ctx, g):
        return g, (-g if ctx.needs_input_grad[1] else None)


class Mul(Function):
    @staticmethod
    def forward(ctx, a, b):
        ctx.save_for_backward(a if ctx.needs_input_grad[1] else None,
                              b if ctx.needs_input_grad[0] else None)
        return a * b

    @staticmethod
    def backward(ctx, g):
        a, b = ctx.saved
        return (g * b if b is not None else None), (g * a if a is not None else None)


class Div(Function):
    @staticmethod
    def forward(ctx, a, b):
        out = a / b
        ctx.save_for_backward(b, out)
        return out

    @staticmethod
    def backward(ctx, g):
        b, out = ctx.saved
        ga = g / b
        return ga, (-ga * out if ctx.needs_input_grad[1] else None)


class Neg(Function):
    @staticmethod
    def forward(ctx, a):
        return -a

    @staticmethod
    def backward(ctx, g):
        return (-g,)


class Pow(Function):
    """``a ** exponent`` for a constant (non-differentiable) Python number."""

    @staticmethod
    def forward(ctx, a, exponent):
        ctx.save_for_backward(a)
        ctx.exponent = exponent
        return a ** exponent

    @staticmethod
    def backward(ctx, g):
        (a,) = ctx.saved
        n = ctx.exponent
        if n == 0:  # d(a^0)/da = 0 everywhere, also at a = 0 where n * a^-1 would be nan
            return (np.zeros_like(g),)
        return (g * (n * a ** (n - 1)).astype(a.dtype, copy=False),)


class PowTensor(Function):
    """``a ** b`` with both operands tensors (b broadcast like any binary op)."""

    backward_name = "PowBackward1"

    @staticmethod
    def forward(ctx, a, b):
        out = np.power(a, b)
        ctx.save_for_backward(a, b, out)
        return out

    @staticmethod
    def backward(ctx, g):
        a, b, out = ctx.saved
        ga = gb = None
        if ctx.needs_input_grad[0]:
            ga = g * np.where(b == 0, 0, b * np.power(a, b - 1))
        if ctx.needs_input_grad[1]:
            # As torch: the gradient in b is defined as 0 where a == 0 and b >= 0.
            with np.errstate(divide="ignore", invalid="ignore"):
                gb = g * np.where((a == 0) & (b >= 0), 0, out * np.log(a))
        return ga, gb


class Exp(Function):
    @staticmethod
    def forward(ctx, a):
        out = np.exp(a)
        ctx.save_for_backward(out)
        return out

    @staticmethod
    def backward(ctx, g):
        (out,) = ctx.saved
        return (g * out,)


class Log(Function):
    @staticmethod
    def forward(ctx, a):
        ctx.save_for_backward(a)
        return np.log(a)

    @staticmethod
    def backward(ctx, g):
        (a,) = ctx.saved
        return (g / a,)


def all_finite(a: np.ndarray) -> bool:
    """Whether ``a`` holds no inf or NaN, by one summing pass (no boolean array): any of them
    makes the sum non-finite. A finite array whose sum overflows also answers False, which
    only sends the caller to its exact path."""
    return bool(np.isfinite(np.add.reduce(a, axis=None)))


def select_grad(g: np.ndarray, mask: np.ndarray, out: np.ndarray | None = None,
                finite: bool | None = None) -> np.ndarray:
    """``g`` where ``mask``, exactly 0 elsewhere (into ``out`` when given).

    Multiplying by the mask is the fast form, and a ufunc keeps the channels-last memory order
    of its inputs; but inf * 0 is NaN, so a gradient that is not all finite takes np.where.
    ``finite`` (whether ``g`` is all finite) saves the check when the caller knows it.
    """
    if finite is None:
        finite = all_finite(g)
    if finite:
        return np.multiply(g, mask, out=out, dtype=g.dtype)
    picked = np.where(mask, g, np.zeros((), dtype=g.dtype))
    if out is None:
        return picked
    out[...] = picked
    return out


def relu_grad(g: np.ndarray, out: np.ndarray) -> np.ndarray:
    """ReLU's backward from its output, as torch's threshold_backward: ``g`` where out > 0 or
    out is NaN, 0 where out <= 0 (exactly 0 at the kink). Always a new array."""
    # empty_like keeps out's memory layout (channels-last): the product keeps it too.
    passes = np.less_equal(out, 0, out=np.empty_like(out, dtype=bool))
    return select_grad(g, np.logical_not(passes, out=passes))  # in place: one mask array


class Relu(Function):
    @staticmethod
    def forward(ctx, a):
        out = np.maximum(a, 0)  # NaN stays NaN, as in torch
        ctx.save_for_backward(out)
        return out

    @staticmethod
    def backward(ctx, g):
        (out,) = ctx.saved
        return (relu_grad(g, out),)


class AddRelu(Function):
    """``relu(a + b)`` (a residual connection): the sum is clipped in place, and both inputs
    get the one masked gradient, as Add would hand g to both (the engine sums it back to a
    broadcast input's shape)."""

    @staticmethod
    def forward(ctx, a, b):
        out = np.add(a, b)
        np.maximum(out, 0, out=out)
        ctx.save_for_backward(out)
        return out

    @staticmethod
    def backward(ctx, g):
        (out,) = ctx.saved
        gm = relu_grad(g, out)
        return gm, gm


class MatMul(Function):
    """``a @ b`` with NumPy's rules: 1-D operands are promoted, batch dims broadcast."""

    @staticmethod
    def forward(ctx, a, b):
        ctx.save_for_backward(a, b)
        return a @ b

    @staticmethod
    def backward(ctx, g):
        a, b = ctx.saved
        # Batch dimensions come back broadcast; the engine sums them to each input's shape.
        if a.ndim == 1 and b.ndim == 1:
            return g * b, g * a
        if a.ndim == 1:  # (k,) @ (..., k, n) -> (..., n)
            ga = (g[..., None, :] @ np.swapaxes(b, -1, -2))[..., 0, :]
            gb = a[:, None] * g[..., None, :]
        elif b.ndim == 1:  # (..., m, k) @ (k,) -> (..., m)
            ga = g[..., :, None] * b
            gb = (np.swapaxes(a, -1, -2) @ g[..., :, None])[..., 0]
        else:
            ga = g @ np.swapaxes(b, -1, -2) if ctx.needs_input_grad[0] else None
            gb = np.swapaxes(a, -1, -2) @ g if ctx.needs_input_grad[1] else None
        return ga, gb


class Sum(Function):
    @staticmethod
    def forward(ctx, a, axis=None, keepdims=False):
        ctx.shape, ctx.axis, ctx.keepdims = a.shape, axis, keepdims
        return np.asarray(a.sum(axis=axis, keepdims=keepdims))

    @staticmethod
    def backward(ctx, g):
        if ctx.axis is not None and not ctx.keepdims:
            g = np.expand_dims(g, ctx.axis)
        return (np.broadcast_to(g, ctx.shape),)


class Reshape(Function):
    @staticmethod
    def forward(ctx, a, shape):
        ctx.shape = a.shape
        return a.reshape(shape)

    @staticmethod
    def backward(ctx, g):
        return (g.reshape(ctx.shape),)


class Permute(Function):
    @staticmethod
    def forward(ctx, a, axes):
        ctx.axes = axes
        return a.transpose(axes)

    @staticmethod
    def backward(ctx, g):
        return (g.transpose(np.argsort(ctx.axes)),)


class Cast(Function):
    """A dtype conversion; the gradient goes back in the input's dtype."""

    @staticmethod
    def forward(ctx, a, dtype):
        ctx.in_dtype = a.dtype
        return a.astype(dtype)

    @staticmethod
    def backward(ctx, g):
        return (g.astype(ctx.in_dtype),)


class GetItem(Function):
    """Indexing: basic (slices, ints) or advanced (integer/boolean arrays)."""

    @staticmethod
    def forward(ctx, a, index):
        ctx.shape, ctx.index = a.shape, index
        return np.asarray(a[index])

    @staticmethod
    def backward(ctx, g):
        grad = np.zeros(ctx.shape, dtype=g.dtype)
        if _is_basic_index(ctx.index):
            grad[ctx.index] = g
        else:
            # Repeated indices must add up, which plain assignment would not do.
            np.add.at(grad, ctx.index, g)
        return (grad,)


def _is_basic_index(index) -> bool:
    items = index if isinstance(index, tuple) else (index,)
    return all(isinstance(i, (int, np.integer, slice)) or i is None or i is Ellipsis for i in items)

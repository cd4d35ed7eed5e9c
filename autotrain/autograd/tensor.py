"""Tensor: an ndarray with the autograd attributes of torch.Tensor.

The class holds data and graph bookkeeping only; each operator is one line that applies a
primitive from ``ops`` (or composes a few), so the math lives next to its backward there.
"""

from __future__ import annotations

import numpy as np

from . import ops
from .function import Function, run_backward

_DEFAULT_DTYPES = (np.dtype(np.float32), np.dtype(np.int64), np.dtype(np.bool_))


def _axis(axis, dim):
    """torch spells it ``dim``, NumPy ``axis``: accept either."""
    axis = dim if axis is None else axis
    return tuple(axis) if isinstance(axis, list) else axis


class Tensor:
    """An n-dimensional array that can record the operations applied to it.

    ``requires_grad`` leaves accumulate gradients in ``.grad`` when ``backward`` runs on a
    result; a non-leaf carries the ``grad_fn`` node that made it.
    """

    __array_priority__ = 1000  # so that ndarray OP Tensor defers to Tensor's reflected operator
    __hash__ = object.__hash__  # == is elementwise, so hash by identity as torch does

    def __init__(self, data, requires_grad: bool = False):
        self.data = data if isinstance(data, np.ndarray) else np.asarray(data)
        self.grad: Tensor | None = None
        self.grad_fn: Function | None = None
        self._requires_grad = False
        self.requires_grad = requires_grad

    @classmethod
    def _wrap(cls, data: np.ndarray, grad_fn: Function | None = None) -> "Tensor":
        """A result of an operation: not a leaf when ``grad_fn`` is given."""
        t = Tensor.__new__(Tensor)
        t.data = data if isinstance(data, np.ndarray) else np.asarray(data)
        t.grad = None
        t.grad_fn = grad_fn
        t._requires_grad = grad_fn is not None
        return t

    # --- autograd attributes --------------------------------------------------------------------
    @property
    def requires_grad(self) -> bool:
        return self._requires_grad

    @requires_grad.setter
    def requires_grad(self, value: bool) -> None:
        if self.grad_fn is not None:
            raise RuntimeError(
                "you can only change requires_grad flags of leaf variables. If you want to use "
                "a computed variable in a subgraph that doesn't require differentiation use "
                "var_no_grad = var.detach()."
            )
        if value and not np.issubdtype(self.data.dtype, np.floating):
            raise RuntimeError(
                f"only Tensors of floating point dtype can require gradients (got {self.dtype})"
            )
        self._requires_grad = bool(value)

    def requires_grad_(self, requires_grad: bool = True) -> "Tensor":
        self.requires_grad = requires_grad
        return self

    @property
    def is_leaf(self) -> bool:
        return self.grad_fn is None

    def detach(self) -> "Tensor":
        """A new leaf sharing this tensor's data, outside any graph."""
        return Tensor._wrap(self.data)

    def backward(self, gradient=None, retain_graph: bool = False) -> None:
        """Accumulate d(self)/d(leaf) . gradient into every leaf's ``.grad``."""
        if not self.requires_grad:
            raise RuntimeError("element 0 of tensors does not require grad and does not have a grad_fn")
        if gradient is None:
            if self.data.size != 1:
                raise RuntimeError("grad can be implicitly created only for scalar outputs")
            grad = np.ones_like(self.data)
        else:
            grad = gradient.data if isinstance(gradient, Tensor) else np.asarray(gradient)
            if grad.shape != self.shape:
                raise RuntimeError(
                    f"Mismatch in shape: grad_output[0] has a shape of {grad.shape} and "
                    f"output[0] has a shape of {self.shape}."
                )
            grad = grad.astype(self.dtype, copy=False)
        if self.grad_fn is None:
            self._accumulate_grad(grad)
        else:
            run_backward(self.grad_fn, grad, retain_graph=retain_graph)

    def _accumulate_grad(self, g: np.ndarray, owned: bool = False) -> None:
        """Add ``g`` into ``.grad``. The first time, take ``g`` as it is when the engine says
        nobody else holds it (``owned``) and it has this tensor's dtype and memory layout;
        else copy it into an array laid out like ``.data`` (as torch's AccumulateGrad), so
        element-wise consumers such as the optimizer walk both in the same order."""
        if self.grad is None:
            if owned and g.dtype == self.dtype and g.strides == self.data.strides:
                self.grad = Tensor(g)
            else:
                grad = np.empty_like(self.data)  # order "K": the layout of .data
                np.copyto(grad, g, casting="unsafe")
                self.grad = Tensor(grad)
        else:
            self.grad.data += g

    # --- array attributes -----------------------------------------------------------------------
    @property
    def shape(self) -> tuple:
        return self.data.shape

    @property
    def dtype(self):
        return self.data.dtype

    @property
    def ndim(self) -> int:
        return self.data.ndim

    def dim(self) -> int:
        return self.data.ndim

    def size(self, d: int | None = None):
        return self.data.shape if d is None else self.data.shape[d]

    def numel(self) -> int:
        return int(self.data.size)

    def __len__(self) -> int:
        return len(self.data)

    def numpy(self) -> np.ndarray:
        if self.requires_grad:
            raise RuntimeError("Can't call numpy() on Tensor that requires grad. Use tensor.detach().numpy() instead.")
        return self.data

    def item(self):
        if self.data.size != 1:
            raise RuntimeError(f"a Tensor with {self.data.size} elements cannot be converted to Scalar")
        return self.data.item()

    def tolist(self):
        return self.data.tolist()

    def __bool__(self) -> bool:
        return bool(self.item())

    def __float__(self) -> float:
        return float(self.item())

    def double(self) -> "Tensor":
        return self.to(np.float64)

    def float(self) -> "Tensor":
        return self.to(np.float32)

    def to(self, dtype) -> "Tensor":
        """A copy in ``dtype``; differentiable like any other op."""
        if np.dtype(dtype) == self.dtype:
            return self
        return ops.Cast.apply(self, dtype=np.dtype(dtype))

    def __repr__(self) -> str:
        body = np.array2string(self.data, separator=", ", prefix="tensor(", formatter=_formatter(self.data))
        extras = []
        if self.dtype not in _DEFAULT_DTYPES:
            extras.append(f"dtype={self.dtype}")
        if self.grad_fn is not None:
            extras.append(f"grad_fn=<{self.grad_fn.name()}>")
        elif self.requires_grad:
            extras.append("requires_grad=True")
        return "tensor(" + ", ".join([body] + extras) + ")"

    # --- arithmetic -----------------------------------------------------------------------------
    def _other(self, x) -> "Tensor":
        """A Python number takes this tensor's dtype (it does not promote, as in torch)."""
        if isinstance(x, Tensor):
            return x
        if isinstance(x, (int, float, bool)) and np.issubdtype(self.dtype, np.floating):
            return Tensor._wrap(np.asarray(x, dtype=self.dtype))
        return Tensor._wrap(np.asarray(x))

    def __add__(self, o): return ops.Add.apply(self, self._other(o))
    def __radd__(self, o): return ops.Add.apply(self._other(o), self)
    def __sub__(self, o): return ops.Sub.apply(self, self._other(o))
    def __rsub__(self, o): return ops.Sub.apply(self._other(o), self)
    def __mul__(self, o): return ops.Mul.apply(self, self._other(o))
    def __rmul__(self, o): return ops.Mul.apply(self._other(o), self)
    def __truediv__(self, o): return ops.Div.apply(self, self._other(o))
    def __rtruediv__(self, o): return ops.Div.apply(self._other(o), self)
    def __neg__(self): return ops.Neg.apply(self)
    def __matmul__(self, o): return ops.MatMul.apply(self, self._other(o))
    def __rmatmul__(self, o): return ops.MatMul.apply(self._other(o), self)
    def __getitem__(self, index): return ops.GetItem.apply(self, index=_index(index))

    def __pow__(self, exponent):
        if isinstance(exponent, Tensor):
            return ops.PowTensor.apply(self, exponent)
        return ops.Pow.apply(self, exponent=exponent)

    def __rpow__(self, base):
        return ops.PowTensor.apply(self._other(base), self)

    def pow(self, exponent): return self ** exponent
    def exp(self): return ops.Exp.apply(self)
    def log(self): return ops.Log.apply(self)
    def relu(self): return ops.Relu.apply(self)
    def abs(self): return self * Tensor._wrap(np.sign(self.data))
    def sqrt(self): return self ** 0.5

    # --- comparisons: elementwise, boolean, never differentiable --------------------------------
    def _cmp(self, o, fn) -> "Tensor":
        return Tensor._wrap(fn(self.data, o.data if isinstance(o, Tensor) else o))

    def __eq__(self, o): return self._cmp(o, np.equal)
    def __ne__(self, o): return self._cmp(o, np.not_equal)
    def __lt__(self, o): return self._cmp(o, np.less)
    def __le__(self, o): return self._cmp(o, np.less_equal)
    def __gt__(self, o): return self._cmp(o, np.greater)
    def __ge__(self, o): return self._cmp(o, np.greater_equal)

    def all(self) -> "Tensor": return Tensor._wrap(np.asarray(self.data.all()))
    def any(self) -> "Tensor": return Tensor._wrap(np.asarray(self.data.any()))

    def argmax(self, axis=None, dim=None) -> "Tensor":
        return Tensor._wrap(np.asarray(self.data.argmax(axis=_axis(axis, dim))))

    # --- reductions and shape -------------------------------------------------------------------
    def sum(self, axis=None, keepdims=False, *, dim=None, keepdim=None) -> "Tensor":
        keep = keepdims if keepdim is None else keepdim
        return ops.Sum.apply(self, axis=_axis(axis, dim), keepdims=keep)

    def mean(self, axis=None, keepdims=False, *, dim=None, keepdim=None) -> "Tensor":
        ax = _axis(axis, dim)
        axes = range(self.ndim) if ax is None else (ax if isinstance(ax, tuple) else (ax,))
        count = int(np.prod([self.shape[a] for a in axes]))
        return self.sum(ax, keepdims if keepdim is None else keepdim) / count

    def reshape(self, *shape) -> "Tensor":
        shape = dims_arg(shape)
        return ops.Reshape.apply(self, shape=shape)

    view = reshape

    def flatten(self, start_dim: int = 0, end_dim: int = -1) -> "Tensor":
        end = end_dim % self.ndim if self.ndim else 0
        shape = self.shape[:start_dim] + (-1,) + self.shape[end + 1:]
        return self.reshape(shape)

    def permute(self, *dims) -> "Tensor":
        dims = dims_arg(dims)
        return ops.Permute.apply(self, axes=tuple(d % self.ndim for d in dims))

    def transpose(self, dim0: int = 0, dim1: int = 1) -> "Tensor":
        axes = list(range(self.ndim))
        axes[dim0], axes[dim1] = axes[dim1], axes[dim0]
        return self.permute(axes)

    @property
    def T(self) -> "Tensor":
        return self.permute(tuple(reversed(range(self.ndim))))


def _formatter(a: np.ndarray) -> dict:
    """torch's print style. Bools: True padded to the width of False only when a False is
    present. Floats: whole values as ``2.`` (NumPy's own style), others with 4 decimals, or
    scientific notation when magnitudes span more than 1000x or leave [1e-4, 1e8)."""
    width = 5 if a.dtype == np.bool_ and not a.all() else 4
    fmt: dict = {"bool": lambda v: str(v).rjust(width)}
    if not np.issubdtype(a.dtype, np.floating) or a.size == 0:
        return fmt
    finite = np.abs(a[np.isfinite(a)])
    if finite.size == 0 or (np.all(finite == np.round(finite)) and finite.max() < 1e8):
        return fmt
    nonzero = finite[finite > 0]
    if nonzero.size and (nonzero.max() / nonzero.min() > 1000 or nonzero.max() >= 1e8 or nonzero.min() < 1e-4):
        fmt["float_kind"] = lambda v: f"{v:.4e}"
    else:
        fmt["float_kind"] = lambda v: f"{v:.4f}"
    return fmt


def _index(index):
    """Tensor indices become arrays, so that ``t[idx_tensor]`` works as in torch."""
    if isinstance(index, Tensor):
        return index.data
    if isinstance(index, tuple):
        return tuple(i.data if isinstance(i, Tensor) else i for i in index)
    return index


def zero_grads(tensors, set_to_none: bool = True) -> None:
    """Forget (``set_to_none``, torch's default) or zero in place the ``.grad`` of each tensor:
    Module.zero_grad and SGD.zero_grad."""
    for t in tensors:
        if set_to_none:
            t.grad = None
        elif t.grad is not None:
            t.grad.data[...] = 0


def dims_arg(args: tuple) -> tuple:
    """torch's two spellings of a shape or dims argument: ``f(2, 3)`` and ``f((2, 3))``."""
    return tuple(args[0]) if len(args) == 1 and isinstance(args[0], (tuple, list)) else tuple(args)

"""Function: the unit of differentiation, grad mode, and the backward engine.

A ``Function`` subclass defines ``forward(ctx, *arrays, **params) -> ndarray`` and
``backward(ctx, grad) -> tuple of input gradients`` side by side, as torch.autograd.Function
does. ``Function.apply`` runs the forward on raw NumPy arrays and, only when grad mode is on
and an input requires grad, records the instance as the output's ``grad_fn``: the instance is
both the context (saved arrays) and the graph node (edges to the inputs' nodes).

The graph holds *nodes*, not tensors: an edge to an input is that input's ``grad_fn``, or the
leaf tensor itself when it is a leaf that requires grad, or None. So intermediate activations
live only as long as some backward needs them (what PyTorch's edges to AccumulateGrad give).
"""

from __future__ import annotations

import contextlib
import functools
import threading

import numpy as np

_state = threading.local()

_FREED_MESSAGE = (
    "Trying to backward through the graph a second time (or directly access saved tensors "
    "after they have already been freed). Saved intermediate values of the graph are freed "
    "when you call .backward(). Specify retain_graph=True if you need to backward through "
    "the graph a second time."
)


def is_grad_enabled() -> bool:
    """Whether new operations record a graph (torch.is_grad_enabled)."""
    return getattr(_state, "enabled", True)


def set_grad_enabled(mode: bool) -> None:
    _state.enabled = bool(mode)


class _GradMode(contextlib.ContextDecorator):
    """Base for no_grad / enable_grad: a context manager that is also a decorator."""

    mode = True

    def __new__(cls, func=None):
        # ``@no_grad`` without parentheses, as torch allows: decorate ``func`` directly.
        self = super().__new__(cls)
        return self if func is None else self(func)

    def __enter__(self):
        self.prev = is_grad_enabled()
        set_grad_enabled(self.mode)
        return self

    def __exit__(self, *exc):
        set_grad_enabled(self.prev)
        return False

    def __call__(self, func):
        # A fresh instance per call, so that nested and recursive use keep their own `prev`.
        @functools.wraps(func)
        def wrapper(*args, **kwargs):
            with type(self)():
                return func(*args, **kwargs)

        return wrapper


class no_grad(_GradMode):
    """Operations inside record no graph; their outputs do not require grad."""

    mode = False


class enable_grad(_GradMode):
    """Turns graph recording back on inside a ``no_grad`` region."""

    mode = True


class Function:
    """One differentiable operation: ``forward`` and ``backward`` on NumPy arrays.

    Subclasses implement::

        @staticmethod
        def forward(ctx, *arrays, **params) -> np.ndarray
        @staticmethod
        def backward(ctx, grad) -> tuple[np.ndarray | None, ...]   # one per array input

    ``backward`` may return a gradient with broadcast (larger) shape: the engine sums it back
    to the input's shape (``unbroadcast``), the one place where broadcasting is undone. It may
    return None for an input whose ``ctx.needs_input_grad[i]`` is False.
    """

    def __init__(self):
        self.parents: tuple = ()
        self.input_shapes: tuple = ()
        self.needs_input_grad: tuple = ()
        self.saved: tuple = ()
        self.freed = False

    # --- context API used by forward/backward -------------------------------------------------
    def save_for_backward(self, *arrays) -> None:
        self.saved = arrays

    @property
    def saved_tensors(self) -> tuple:
        if self.freed:
            raise RuntimeError(_FREED_MESSAGE)
        return self.saved

    def release(self) -> None:
        """Drop what forward saved. As in torch, a later backward through this node raises
        only if it had saved arrays (an add, which saves nothing, can run again)."""
        self.freed = any(a is not None for a in self.saved)
        self.saved = ()

    # --- graph ----------------------------------------------------------------------------------
    backward_name: str | None = None  # torch's name when it is not <Class>Backward0

    def name(self) -> str:
        return self.backward_name or f"{type(self).__name__}Backward0"

    def __repr__(self) -> str:
        return f"<{self.name()}>"

    @property
    def next_functions(self) -> tuple:
        """The input edges, as in torch: ((node_or_leaf_or_None, 0), ...)."""
        return tuple((p, 0) for p in self.parents)

    @classmethod
    def apply(cls, *inputs, **params):
        """Run forward on the inputs' arrays; record the node when a graph is needed."""
        from .tensor import Tensor

        arrays = [x.data for x in inputs]
        needs = tuple(x.requires_grad for x in inputs)
        record = is_grad_enabled() and any(needs)
        ctx = cls()
        ctx.needs_input_grad = needs
        out = cls.forward(ctx, *arrays, **params)
        if not record:
            return Tensor._wrap(out)
        ctx.parents = tuple(
            (x.grad_fn if x.grad_fn is not None else x) if x.requires_grad else None for x in inputs
        )
        ctx.input_shapes = tuple(a.shape for a in arrays)
        return Tensor._wrap(out, grad_fn=ctx)


def unbroadcast(grad: np.ndarray, shape: tuple) -> np.ndarray:
    """Sum ``grad`` down to ``shape``: the inverse of NumPy broadcasting.

    Leading axes that broadcasting added are summed away, then axes where the input had
    size 1 are summed with keepdims. This is the only place the engine undoes broadcasting.
    """
    if grad.shape == shape:
        return grad
    extra = grad.ndim - len(shape)
    if extra > 0:
        grad = grad.sum(axis=tuple(range(extra)))
    axes = tuple(i for i, n in enumerate(shape) if n == 1 and grad.shape[i] != 1)
    if axes:
        grad = grad.sum(axis=axes, keepdims=True)
    if grad.shape != shape:
        raise RuntimeError(f"gradient of shape {grad.shape} cannot be summed to shape {shape}")
    return grad


def _topological_order(root: Function) -> dict:
    """Count, for every node reachable from ``root``, how many edges lead into it.

    Iterative (no recursion limit on a chain of 10,000 ops); parents are walked in tuple
    order, so the order is deterministic.
    """
    deps: dict = {root: 0}
    stack = [root]
    while stack:
        node = stack.pop()
        for p in node.parents:
            if isinstance(p, Function):
                if p in deps:
                    deps[p] += 1
                else:
                    deps[p] = 1
                    stack.append(p)
    return deps


def run_backward(root: Function, grad: np.ndarray, retain_graph: bool = False) -> None:
    """Propagate ``grad`` from ``root`` to every leaf that requires grad, accumulating ``.grad``.

    A node runs once all its consumers have contributed to its gradient (child counts, as in
    HIPS autograd). Without ``retain_graph`` each node's saved arrays are released right after
    its backward has used them.
    """
    deps = _topological_order(root)
    pending = {root: grad}
    ready = [root]
    handed = _Handed(grad)  # arrays that already live elsewhere: the root gradient, leaves' .grad
    while ready:
        node = ready.pop()
        g = pending.pop(node)
        if node.freed:
            raise RuntimeError(_FREED_MESSAGE)
        in_grads = type(node).backward(node, g)
        saved = [a for a in node.saved if isinstance(a, np.ndarray)]
        if not retain_graph:
            node.release()
        for k, (parent, gi, shape) in enumerate(zip(node.parents, in_grads, node.input_shapes)):
            if parent is None:
                continue
            if gi is not None:
                gi = unbroadcast(np.asarray(gi), shape)
            if isinstance(parent, Function):
                if gi is not None:
                    prev = pending.get(parent)
                    pending[parent] = gi if prev is None else prev + gi
                deps[parent] -= 1
                if deps[parent] == 0:
                    if parent in pending:
                        ready.append(parent)
                    else:
                        _skip_subgraph(parent, deps, pending, ready, retain_graph)
            elif gi is not None:
                siblings = [x for j, x in enumerate(in_grads) if j != k and isinstance(x, np.ndarray)]
                alive = [g, parent.data] + saved + siblings + list(pending.values())
                parent._accumulate_grad(gi, owned=_is_fresh(gi, alive) and not handed.overlaps(gi))
                handed.add(gi)


def _owner(a: np.ndarray) -> np.ndarray | None:
    """The array that allocated ``a``'s memory (the end of its ``.base`` chain), or None when
    the memory belongs to something else (a buffer, a memory map): then only a bounds check
    can tell what overlaps it."""
    while isinstance(a.base, np.ndarray):
        a = a.base
    return a if a.base is None and a.flags.owndata else None


class _Handed:
    """The gradients already given to leaves in this backward pass, for the question "does
    this new gradient share memory with one of them?". Arrays that own their allocation are
    kept by owner identity (two owners never overlap), so the question costs one set lookup
    instead of a bounds check against every leaf seen so far; the rest by bounds check."""

    def __init__(self, first: np.ndarray):
        self._owners: set[int] = set()
        self._others: list[np.ndarray] = []
        self._keep: list[np.ndarray] = []  # holds the owners alive, so their ids stay unique
        self.add(first)

    def add(self, a: np.ndarray) -> None:
        owner = _owner(a)
        if owner is None:
            self._others.append(a)
        else:
            self._owners.add(id(owner))
            self._keep.append(owner)

    def overlaps(self, a: np.ndarray) -> bool:
        owner = _owner(a)
        if owner is None:  # foreign memory: compare with everything by bounds
            return any(np.may_share_memory(a, o) for o in self._keep + self._others)
        return id(owner) in self._owners or any(np.may_share_memory(a, o) for o in self._others)


def _is_fresh(gi: np.ndarray, others: list) -> bool:
    """Whether a leaf may keep ``gi`` as its ``.grad`` without a copy: it must be writeable and
    share memory with nothing else alive (the node's incoming gradient, the leaf's data, the
    node's saved arrays, its other returned gradients, gradients waiting for other nodes;
    arrays already given to other leaves are checked by ``_Handed``). Saving that copy matters: it is one pass over
    every parameter per step."""
    if not gi.flags.writeable:
        return False
    return not any(np.may_share_memory(gi, o) for o in others)


def _skip_subgraph(node, deps, pending, ready, retain_graph) -> None:
    """A node that received no gradient at all: release it and let its parents' counts fall."""
    stack = [node]
    while stack:
        n = stack.pop()
        if not retain_graph:
            n.release()
        for p in n.parents:
            if isinstance(p, Function):
                deps[p] -= 1
                if deps[p] == 0:
                    if p in pending:
                        ready.append(p)
                    else:
                        stack.append(p)

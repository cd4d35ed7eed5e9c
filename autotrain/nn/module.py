"""Module and Parameter: ordered registries of parameters, buffers and children.

Registration happens in ``__setattr__`` (as in torch.nn.Module): assigning a Parameter, a
Module, or (through ``register_buffer``) a buffer records it under that name, in order, so
``state_dict`` keys and order match PyTorch's for the same architecture.
"""

from __future__ import annotations

from collections import OrderedDict
from typing import Iterator

import numpy as np

from ..autograd.tensor import Tensor, zero_grads


class Parameter(Tensor):
    """A leaf tensor that a Module registers as a parameter; requires grad by default."""

    def __init__(self, data, requires_grad: bool = True):
        if isinstance(data, Tensor):
            data = data.data
        super().__init__(np.asarray(data), requires_grad=requires_grad)

    def __repr__(self) -> str:
        return "Parameter containing:\n" + super().__repr__()


class Module:
    """Base class for layers and models; subclasses define ``forward``."""

    def __init__(self):
        object.__setattr__(self, "_parameters", OrderedDict())
        object.__setattr__(self, "_buffers", OrderedDict())
        object.__setattr__(self, "_modules", OrderedDict())
        object.__setattr__(self, "training", True)

    # --- registration ---------------------------------------------------------------------------
    def __setattr__(self, name: str, value) -> None:
        if "_parameters" not in self.__dict__:
            raise AttributeError("call Module.__init__() before assigning attributes")
        if isinstance(value, Parameter):
            target = self._parameters
        elif name in self._parameters and value is not None:
            # As torch: a plain tensor would silently drop the parameter from the optimizer.
            raise TypeError(f"cannot assign {type(value).__name__} as parameter {name!r} "
                            "(Parameter or None expected)")
        elif isinstance(value, Module):
            target = self._modules
        elif name in self.__dict__.get("_buffer_names", ()):
            target = self._buffers
        else:
            target = None
        for registry in (self._parameters, self._buffers, self._modules):
            if registry is not target:
                registry.pop(name, None)
        if target is None:
            object.__setattr__(self, name, value)
            return
        target[name] = value  # a replaced entry keeps its place (state_dict order), as in torch
        self.__dict__.pop(name, None)

    def __getattr__(self, name: str):
        # Only called when normal lookup fails: look in the registries.
        for registry in ("_parameters", "_buffers", "_modules"):
            d = self.__dict__.get(registry)
            if d is not None and name in d:
                return d[name]
        raise AttributeError(f"'{type(self).__name__}' object has no attribute '{name}'")

    def __delattr__(self, name: str) -> None:
        for registry in (self._parameters, self._buffers, self._modules):
            if name in registry:
                del registry[name]
                return
        object.__delattr__(self, name)

    def register_buffer(self, name: str, value: Tensor | None) -> None:
        """A persistent, non-trainable tensor (running statistics) saved in ``state_dict``."""
        self.__dict__.setdefault("_buffer_names", set()).add(name)
        setattr(self, name, value)

    def register_parameter(self, name: str, value: Parameter | None) -> None:
        if value is None:
            self._parameters[name] = None
        else:
            setattr(self, name, value)

    def add_module(self, name: str, module: "Module") -> None:
        self._modules[name] = module

    # --- traversal ------------------------------------------------------------------------------
    def named_modules(self, prefix: str = "") -> Iterator[tuple[str, "Module"]]:
        """This module and every descendant, depth first, in registration order (iterative)."""
        stack = [(prefix, self)]
        seen = set()
        while stack:
            name, mod = stack.pop()
            if id(mod) in seen:
                continue
            seen.add(id(mod))
            yield name, mod
            children = [(f"{name}.{k}" if name else k, m) for k, m in mod._modules.items() if m is not None]
            stack.extend(reversed(children))

    def modules(self) -> Iterator["Module"]:
        for _, m in self.named_modules():
            yield m

    def named_children(self) -> Iterator[tuple[str, "Module"]]:
        yield from ((k, m) for k, m in self._modules.items() if m is not None)

    def children(self) -> Iterator["Module"]:
        for _, m in self.named_children():
            yield m

    def _named_members(self, registries: tuple[str, ...], prefix: str = "",
                       dedup: bool = False) -> Iterator[tuple[str, Tensor]]:
        """Each module's non-None entries of ``registries``, depth first, under dotted names;
        with ``dedup`` a tensor shared by two modules appears once (as torch's parameters)."""
        seen = set()
        for mname, mod in self.named_modules(prefix):
            for registry in registries:
                for k, t in getattr(mod, registry).items():
                    if t is None or (dedup and id(t) in seen):
                        continue
                    seen.add(id(t))
                    yield (f"{mname}.{k}" if mname else k), t

    def named_parameters(self, prefix: str = "") -> Iterator[tuple[str, Parameter]]:
        return self._named_members(("_parameters",), prefix, dedup=True)

    def parameters(self) -> Iterator[Parameter]:
        for _, p in self.named_parameters():
            yield p

    def named_buffers(self, prefix: str = "") -> Iterator[tuple[str, Tensor]]:
        return self._named_members(("_buffers",), prefix)

    def buffers(self) -> Iterator[Tensor]:
        for _, b in self.named_buffers():
            yield b

    # --- state ----------------------------------------------------------------------------------
    def _named_state(self) -> Iterator[tuple[str, Tensor]]:
        """Parameters then buffers of each module, depth first: torch's state_dict order."""
        return self._named_members(("_parameters", "_buffers"))

    def state_dict(self) -> "OrderedDict[str, np.ndarray]":
        """Copies of every parameter and buffer, under torch's dotted names."""
        return OrderedDict((k, t.data.copy()) for k, t in self._named_state())

    def load_state_dict(self, state: dict, strict: bool = True) -> tuple[list[str], list[str]]:
        """Copy arrays into the parameters and buffers by name, keeping each tensor's dtype.

        Mis-shaped keys are always an error; with ``strict`` missing and unexpected keys are
        too. One RuntimeError lists every problem. Returns (missing, unexpected).
        """
        own = OrderedDict(self._named_state())
        missing = [k for k in own if k not in state]
        unexpected = [k for k in state if k not in own]
        mismatched = [f"{k}: checkpoint {tuple(np.shape(state[k]))} vs model {own[k].shape}"
                      for k in own if k in state and tuple(np.shape(state[k])) != own[k].shape]
        problems = []
        if mismatched:
            problems.append("size mismatch for " + "; ".join(mismatched))
        if strict and missing:
            problems.append("missing keys: " + ", ".join(missing))
        if strict and unexpected:
            problems.append("unexpected keys: " + ", ".join(unexpected))
        if problems:
            raise RuntimeError(f"Error(s) in loading state_dict for {type(self).__name__}: " + " | ".join(problems))
        for k, t in own.items():
            if k in state:
                # Written into the existing array: dtype, memory layout and identity are kept.
                t.data[...] = state[k]
        return missing, unexpected

    # --- modes and casts ------------------------------------------------------------------------
    def train(self, mode: bool = True) -> "Module":
        for m in self.modules():
            object.__setattr__(m, "training", mode)
        return self

    def eval(self) -> "Module":
        return self.train(False)

    def requires_grad_(self, requires_grad: bool = True) -> "Module":
        for p in self.parameters():
            p.requires_grad = requires_grad
        return self

    def zero_grad(self, set_to_none: bool = True) -> None:
        zero_grads(self.parameters(), set_to_none)

    def _cast(self, dtype) -> "Module":
        """Cast floating parameters and buffers in place (identity kept, so optimizers still hold them)."""
        for _, t in self._named_state():
            if np.issubdtype(t.dtype, np.floating):
                t.data = t.data.astype(dtype)
                if t.grad is not None:
                    t.grad.data = t.grad.data.astype(dtype)
        return self

    def double(self) -> "Module":
        return self._cast(np.float64)

    def float(self) -> "Module":
        return self._cast(np.float32)

    # --- calling --------------------------------------------------------------------------------
    def forward(self, *args, **kwargs):
        raise NotImplementedError(f"{type(self).__name__} has no forward()")

    def __call__(self, *args, **kwargs):
        return self.forward(*args, **kwargs)

    def extra_repr(self) -> str:
        return ""

    def __repr__(self) -> str:
        lines = [f"({k}): " + repr(m).replace("\n", "\n  ") for k, m in self.named_children()]
        head = f"{type(self).__name__}({self.extra_repr()}"
        if not lines:
            return head + ")"
        return head + "\n  " + "\n  ".join(lines) + "\n)"

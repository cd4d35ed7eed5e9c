"""Stochastic gradient descent with PyTorch's exact update rule."""

from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor

import numpy as np

from ..autograd.tensor import Tensor, zero_grads
from ..layout import flat_view

CHUNK = 65536  # elements per block: p, grad, momentum and a temporary stay in a core's L2 (measured)
PARALLEL_MIN = 1 << 20  # below this many elements, threads cost more than they save
MAX_THREADS = 8


class SGD:
    r"""SGD with momentum, dampening, weight decay and Nesterov, as torch.optim.SGD.

    For each parameter p with gradient g (parameters whose ``.grad`` is None are skipped
    entirely: no decay, no momentum, as in torch)::

        g = g + weight_decay * p                       if weight_decay != 0
        b = g  (first step);  b = momentum * b + (1 - dampening) * g   (later)
        g = g + momentum * b  if nesterov else  b      if momentum != 0
        p = p - lr * g

    ``param_groups`` is a list of dicts with key "params" and the hyper-parameters, so
    groups (for example a backbone at a lower lr) work as in torch. State is kept per
    parameter *position* (group order, then order within the group), never by ``id``, so
    ``state_dict`` can be loaded into a new process's optimizer over the same model.
    """

    def __init__(self, params, lr: float, momentum: float = 0.0, dampening: float = 0.0,
                 weight_decay: float = 0.0, nesterov: bool = False):
        if lr < 0 or not np.isfinite(lr):  # lr=0 is valid, as in torch
            raise ValueError(f"Invalid learning rate: {lr}")
        if momentum < 0:
            raise ValueError(f"Invalid momentum value: {momentum}")
        if weight_decay < 0:
            raise ValueError(f"Invalid weight_decay value: {weight_decay}")
        if nesterov and (momentum <= 0 or dampening != 0):
            raise ValueError("Nesterov momentum requires a momentum and zero dampening")
        self.defaults = dict(lr=lr, momentum=momentum, dampening=dampening,
                             weight_decay=weight_decay, nesterov=nesterov)
        params = list(params)
        if not params:
            raise ValueError("optimizer got an empty parameter list")
        groups = params if isinstance(params[0], dict) else [{"params": params}]
        self.param_groups: list[dict] = []
        self.state: list[dict] = []  # one dict per parameter position
        self._pool: ThreadPoolExecutor | None = None  # created on the first large update
        for g in groups:
            self.add_param_group(g)

    def add_param_group(self, group: dict) -> None:
        group = dict(group)
        group["params"] = list(group["params"])
        seen = {id(q) for g in self.param_groups for q in g["params"]}
        for p in group["params"]:
            if not isinstance(p, Tensor) or not p.is_leaf:
                raise ValueError("optimizer can only optimize leaf Tensors")
            if id(p) in seen:  # as torch: one parameter, one state, one group
                raise ValueError("some parameters appear in more than one parameter group")
            seen.add(id(p))
        for k, v in self.defaults.items():
            group.setdefault(k, v)
        self.param_groups.append(group)
        self.state.extend({} for _ in group["params"])

    def _positions(self):
        i = 0
        for group in self.param_groups:
            for p in group["params"]:
                yield i, group, p
                i += 1

    def zero_grad(self, set_to_none: bool = True) -> None:
        zero_grads((p for _, _, p in self._positions()), set_to_none)

    def step(self) -> None:
        """One update of every parameter that has a gradient, in place.

        The update is memory-bound (11.7M parameters for resnet18), so it runs over blocks
        of CHUNK elements: each block of p, grad and momentum is read once from memory and
        every step of the rule above works on it while it sits in cache. Blocks are
        independent, so a large update is spread over threads (NumPy releases the GIL in its
        loops), as torch spreads its own over its intra-op threads. Element by element the
        arithmetic is the same, so the result is identical to the whole-array form.
        """
        work, total = [], 0
        for i, group, p in self._positions():
            if p.grad is None:
                continue
            mu = group["momentum"]
            buf = self.state[i].get("momentum_buffer") if mu != 0 else None
            first = mu != 0 and buf is None
            if first:
                buf = self.state[i]["momentum_buffer"] = np.empty_like(p.data)  # same memory order as p
            arrays = [p.data, p.grad.data] + ([buf] if buf is not None else [])
            views = [flat_view(a) for a in arrays]
            if any(v is None for v in views) or any(a.strides != p.data.strides for a in arrays):
                views, blocks = arrays, [Ellipsis]  # memory orders differ: one whole-array block
            else:
                blocks = [slice(s, s + CHUNK) for s in range(0, views[0].size, CHUNK)]
            total += p.data.size
            for blk in blocks:
                work.append((group, views[0][blk], views[1][blk], views[2][blk] if buf is not None else None, first))
        threads = min(os.cpu_count() or 1, MAX_THREADS)
        if total < PARALLEL_MIN or threads == 1:
            self._update_all(work)
            return
        if self._pool is None:
            self._pool = ThreadPoolExecutor(threads, thread_name_prefix="autotrain-sgd")
        share = -(-len(work) // threads)
        list(self._pool.map(self._update_all, [work[k:k + share] for k in range(0, len(work), share)]))

    @classmethod
    def _update_all(cls, items: list) -> None:
        scratch: dict = {}  # per worker and dtype: the temporary of every block, allocated once
        for group, p, g, buf, first in items:
            tmp = scratch.get(p.dtype)
            if tmp is None or tmp.size < p.size:
                tmp = scratch[p.dtype] = np.empty(max(p.size, CHUNK), dtype=p.dtype)
            cls._update(group, p, g, buf, first, tmp[:p.size].reshape(p.shape))

    @staticmethod
    def _update(group: dict, p: np.ndarray, g: np.ndarray, buf: np.ndarray | None, first: bool,
                tmp: np.ndarray) -> None:
        """torch's rule on one block (see the class docstring); p and buf change in place,
        ``tmp`` (p's shape) holds the temporaries, so a block allocates nothing."""
        lr, mu, damp = group["lr"], group["momentum"], group["dampening"]
        wd, nesterov = group["weight_decay"], group["nesterov"]
        if wd != 0:
            g = np.add(g, np.multiply(p, wd, out=tmp), out=tmp)  # the user's .grad is never modified
        if buf is not None:
            if first:
                np.copyto(buf, g)
            else:
                buf *= mu
                buf += (1 - damp) * g if damp else g
            g = g + mu * buf if nesterov else buf
        p -= np.multiply(g, lr, out=tmp)

    def state_dict(self) -> dict:
        """{"state": {position: {"momentum_buffer": array}}, "param_groups": [hyper-params + positions]}."""
        state = {i: {k: v.copy() for k, v in s.items()} for i, s in enumerate(self.state) if s}
        return {"state": state, "param_groups": self.param_groups_meta()}

    def param_groups_meta(self) -> list[dict]:
        """Each group's hyper-parameters, with its parameters as positions (as in state_dict)."""
        groups, start = [], 0
        for group in self.param_groups:
            n = len(group["params"])
            groups.append({**{k: group[k] for k in group if k != "params"}, "params": list(range(start, start + n))})
            start += n
        return groups

    def load_state_dict(self, state_dict: dict) -> None:
        groups = state_dict["param_groups"]
        if [len(g["params"]) for g in groups] != [len(g["params"]) for g in self.param_groups]:
            raise ValueError("loaded optimizer state has a different number of parameters per group")
        for group, saved in zip(self.param_groups, groups):
            group.update({k: v for k, v in saved.items() if k != "params"})
        self.state = [{} for _ in self.state]
        params = [p for _, _, p in self._positions()]
        for i, s in state_dict["state"].items():
            i = int(i)
            if not 0 <= i < len(params):
                raise ValueError(f"optimizer state for parameter position {i}, but there are {len(params)}")
            for k, v in s.items():
                if np.shape(v) != params[i].shape:
                    raise ValueError(f"optimizer state {i}.{k} has shape {np.shape(v)}, parameter has {params[i].shape}")
                self.state[i][k] = np.array(v, dtype=params[i].dtype, copy=True)

"""Numerical gradient checking: float64 central differences against the engine's VJPs.

For a function ``f`` of some tensors and a random cotangent ``v`` (seeded), the engine gives
``d<v, f(x)>/dx`` in one backward pass; central differences give the same quantity element by
element: ``(<v, f(x + eps e_i)> - <v, f(x - eps e_i)>) / (2 eps)``. Projecting on a random
``v`` checks a random combination of the Jacobian's rows, which catches a wrong backward with
probability one, at the cost of one backward and two forwards per checked element.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .function import no_grad
from .tensor import Tensor


class GradcheckError(RuntimeError):
    """Raised by ``gradcheck`` with the worst mismatching element in its message."""


@dataclass
class GradcheckReport:
    """What ``check_gradients`` measured: one entry per checked input tensor."""

    elements: int = 0
    max_abs_err: float = 0.0
    max_rel_err: float = 0.0  # over elements with |numerical| >= atol, where relative error means something
    max_tol_ratio: float = 0.0  # max |analytical - numerical| / (atol + rtol |numerical|): passes when <= 1
    worst: str = ""

    @property
    def passed(self) -> bool:
        return self.max_tol_ratio <= 1


def _outputs(fn, inputs) -> tuple:
    out = fn(*inputs)
    return out if isinstance(out, (tuple, list)) else (out,)


def _project(outs, vs) -> float:
    return float(sum(np.sum(o.data.astype(np.float64) * v) for o, v in zip(outs, vs)))


def check_gradients(fn, inputs, eps: float = 1e-6, atol: float = 1e-5, rtol: float = 1e-3,
                    max_elements: int | None = None, seed: int = 0, names=None) -> GradcheckReport:
    """Compare analytical and numerical gradients of ``fn`` w.r.t. every input that requires grad.

    ``max_elements`` samples that many elements (seeded) of each larger input. An element
    passes when ``|analytical - numerical| <= atol + rtol * |numerical|`` (torch's rule).
    ``fn`` must be deterministic: in-place side effects (BatchNorm running statistics) are
    the caller's to snapshot and restore.
    """
    rng = np.random.default_rng(seed)
    names = names or [f"input {i}" for i in range(len(inputs))]
    for t in inputs:
        if isinstance(t, Tensor) and t.requires_grad:
            t.grad = None
    outs = _outputs(fn, inputs)
    vs = [rng.standard_normal(o.shape) for o in outs]
    loss = None
    for o, v in zip(outs, vs):
        if o.requires_grad:
            term = (o * Tensor(v.astype(o.dtype))).sum()
            loss = term if loss is None else loss + term
    if loss is not None:
        loss.backward()
    report = GradcheckReport()
    for t, name in zip(inputs, names):
        if not (isinstance(t, Tensor) and t.requires_grad):
            continue
        analytic = np.zeros(t.shape) if t.grad is None else t.grad.data.astype(np.float64)
        idx = np.arange(t.data.size)
        if max_elements is not None and t.data.size > max_elements:
            idx = np.sort(rng.choice(t.data.size, size=max_elements, replace=False))
        numeric = np.empty(idx.size)
        with no_grad():
            for k, i in enumerate(idx):
                # Indexed in place, so any memory layout (channels-last weights) works.
                pos = np.unravel_index(i, t.shape)
                orig = t.data[pos]
                t.data[pos] = orig + eps
                fp = _project(_outputs(fn, inputs), vs)
                t.data[pos] = orig - eps
                fm = _project(_outputs(fn, inputs), vs)
                t.data[pos] = orig
                numeric[k] = (fp - fm) / (2 * eps)
        a = analytic.reshape(-1)[idx]
        abs_err = np.abs(a - numeric)
        large = np.abs(numeric) >= atol
        rel_err = abs_err[large] / np.abs(numeric[large])
        ratio = abs_err / (atol + rtol * np.abs(numeric))
        ratio[~np.isfinite(ratio)] = np.inf  # a NaN gradient is a failure, not a comparison
        report.elements += idx.size
        report.max_abs_err = max(report.max_abs_err, float(abs_err.max(initial=0)))
        report.max_rel_err = max(report.max_rel_err, float(rel_err.max(initial=0)))
        # The worst element over every input, by how far past its tolerance it is.
        worst = float(ratio.max(initial=0))
        if ratio.size and worst > report.max_tol_ratio:
            k = int(np.argmax(ratio))
            pos = np.unravel_index(idx[k], t.shape)
            report.worst = (f"{name} {tuple(int(p) for p in pos)}: analytical {a[k]:.6g} vs "
                            f"numerical {numeric[k]:.6g} (abs err {abs_err[k]:.3g})")
            report.max_tol_ratio = worst
    return report


def gradcheck(fn, inputs, eps: float = 1e-6, atol: float = 1e-5, rtol: float = 1e-3,
              max_elements: int | None = None, seed: int = 0) -> bool:
    """True when every checked gradient matches; else GradcheckError naming the worst element."""
    inputs = tuple(inputs) if isinstance(inputs, (tuple, list)) else (inputs,)
    report = check_gradients(fn, inputs, eps=eps, atol=atol, rtol=rtol, max_elements=max_elements, seed=seed)
    if not report.passed:
        raise GradcheckError(f"Jacobian mismatch: {report.worst}")
    return True

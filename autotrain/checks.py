"""The cases behind ``autotrain gradcheck``: every primitive and fused kernel, a tiny ResNet-18,
and the SGD update.

Each gradient case builds float64 inputs (seeded), a function of them, and hands both to
``check_gradients``. Inputs of relu, max_pool and log are drawn away from their kinks and
domain edges so that central differences are meaningful.

A *reference* case (``Case.check``) has no gradient to differentiate: it runs the engine
and a hand-written float64 reference of the same computation and compares every element
(SGD's update, which the training loop trusts as much as any gradient). Both sides do the
same float64 operations, so only rounding may differ: it is held to REFERENCE_ATOL and
REFERENCE_RTOL, not to the finite-difference tolerances of the gradient cases.
"""

from __future__ import annotations

import fnmatch
import time
from dataclasses import dataclass
from typing import Callable

import numpy as np

from . import nn
from .autograd.gradcheck import GradcheckReport, check_gradients
from .autograd.tensor import Tensor
from .models import resnet18
from .optim import SGD

F = nn.functional


@dataclass
class CaseResult:
    """One row of the gradcheck report."""

    name: str
    shapes: str
    elements: int
    max_abs_err: float
    max_rel_err: float
    max_tol_ratio: float
    passed: bool
    worst: str
    seconds: float

    def as_dict(self) -> dict:
        return dict(self.__dict__)


@dataclass
class Case:
    name: str
    build: Callable | None  # (rng) -> (fn, inputs, names, restore or None); None for a reference case
    max_elements: int | None = None
    check: Callable | None = None  # reference case: (rng) -> (GradcheckReport, shapes text)


REFERENCE_ATOL = 1e-12
REFERENCE_RTOL = 1e-12


def _t(rng, *shape, low=-1.0, high=1.0) -> Tensor:
    return Tensor(rng.uniform(low, high, shape), requires_grad=True)


def _away_from_zero(rng, *shape) -> Tensor:
    """Uniform magnitudes in [0.1, 1] with random signs: no element near relu's kink."""
    mag = rng.uniform(0.1, 1.0, shape)
    return Tensor(mag * rng.choice([-1.0, 1.0], shape), requires_grad=True)


def _distinct(rng, *shape) -> Tensor:
    """A permutation of well-separated values: every pooling window has a unique maximum."""
    n = int(np.prod(shape))
    return Tensor((rng.permutation(n) * 0.01 - n * 0.005).reshape(shape), requires_grad=True)


def _simple(fn, shapes, make=_t):
    def build(rng):
        xs = [make(rng, *s) for s in shapes]
        return fn, xs, [f"x{i}" for i in range(len(xs))], None
    return build


def _case_binary(name, op, sa, sb, positive_b=False):
    def build(rng):
        a = _t(rng, *sa)
        b = _t(rng, *sb, low=0.5, high=1.5) if positive_b else _t(rng, *sb)
        return op, [a, b], ["a", "b"], None
    return Case(name, build)


def _conv_case(name, x_shape, w_shape, bias, stride, padding, dilation):
    def build(rng):
        x, w = _t(rng, *x_shape), _t(rng, *w_shape)
        inputs, names = [x, w], ["input", "weight"]
        if bias:
            inputs.append(_t(rng, w_shape[0]))
            names.append("bias")
        fn = lambda x, w, *b: F.conv2d(x, w, b[0] if b else None, stride, padding, dilation)  # noqa: E731
        return fn, inputs, names, None
    return Case(name, build)


def _batch_norm_case(name, training, relu=False):
    kernel = F.batch_norm_relu if relu else F.batch_norm

    def build(rng):
        x, w, b = _t(rng, 4, 3, 3, 3), _t(rng, 3, low=0.5, high=1.5), _t(rng, 3)
        rm, rv = Tensor(rng.uniform(-0.2, 0.2, 3)), Tensor(rng.uniform(0.5, 1.5, 3))
        snapshot = (rm.data.copy(), rv.data.copy())

        def restore():
            # Training mode updates the running statistics on every forward pass of the
            # numerical differences; put them back so the module ends as it started.
            rm.data[...], rv.data[...] = snapshot

        fn = lambda x, w, b: kernel(x, rm, rv, w, b, training=training)  # noqa: E731
        return fn, [x, w, b], ["input", "weight", "bias"], restore
    return Case(name, build)


def _resnet_case():
    def build(rng):
        model = resnet18(num_classes=3, in_channels=1, width=4, stem="small").double()
        # Seeded parameters (not the global generator), with non-trivial BN scales and shifts.
        for p in model.parameters():
            p.data[...] = rng.uniform(-0.5, 0.5, p.shape) if p.ndim > 1 else rng.uniform(0.5, 1.5, p.shape)
        x = Tensor(rng.uniform(-1, 1, (2, 1, 8, 8)), requires_grad=True)
        y = np.array([0, 2])
        buffers = [(b, b.data.copy()) for b in model.buffers()]

        def restore():
            for b, saved in buffers:
                b.data[...] = saved

        named = list(model.named_parameters())
        fn = lambda x, *ps: F.cross_entropy(model(x), y)  # noqa: E731
        return fn, [x] + [p for _, p in named], ["input"] + [n for n, _ in named], restore
    return Case("resnet18_tiny", build, max_elements=20)


def _compare(report: GradcheckReport, name: str, actual: np.ndarray, expected: np.ndarray) -> None:
    """Fold one engine-vs-reference comparison into ``report`` (the gradcheck report's fields,
    with the reference in the place of the numerical gradient)."""
    if actual.shape != expected.shape:
        report.max_tol_ratio, report.worst = np.inf, f"{name}: shape {actual.shape}, reference {expected.shape}"
        return
    a, e = actual.astype(np.float64).reshape(-1), expected.astype(np.float64).reshape(-1)
    abs_err = np.abs(a - e)
    ratio = abs_err / (REFERENCE_ATOL + REFERENCE_RTOL * np.abs(e))
    ratio[~np.isfinite(ratio)] = np.inf
    large = np.abs(e) >= REFERENCE_ATOL
    report.elements += a.size
    report.max_abs_err = max(report.max_abs_err, float(abs_err.max(initial=0)))
    report.max_rel_err = max(report.max_rel_err, float((abs_err[large] / np.abs(e[large])).max(initial=0)))
    worst = float(ratio.max(initial=0))
    if ratio.size and worst > report.max_tol_ratio:
        k = int(np.argmax(ratio))
        pos = tuple(int(p) for p in np.unravel_index(k, actual.shape))
        report.worst = f"{name} {pos}: engine {a[k]:.6g} vs reference {e[k]:.6g} (abs err {abs_err[k]:.3g})"
        report.max_tol_ratio = worst


# Three groups cover every branch of torch's rule: nesterov with weight decay; momentum with
# dampening and weight decay (over a parameter of two CHUNK blocks and one whose gradient is
# laid out unlike its data); plain SGD. Parameter 1 has no gradient at step 2: it is skipped
# entirely (no decay, no momentum), as in torch.
_SGD_GROUPS = [
    dict(shapes=[(3, 4), (5,)], lr=0.1, momentum=0.9, dampening=0.0, weight_decay=0.01, nesterov=True),
    dict(shapes=[(70000,), (2, 3, 2, 2)], lr=0.05, momentum=0.8, dampening=0.25, weight_decay=0.02, nesterov=False),
    dict(shapes=[(4,)], lr=0.2, momentum=0.0, dampening=0.0, weight_decay=0.0, nesterov=False),
]
_SGD_STEPS = 4
_SGD_NO_GRAD = {(1, 1)}  # (step, parameter position) without a gradient
_SGD_RESUME_AT = 2  # steps after which the state goes through state_dict into a new SGD


def _sgd_reference(params: list, grads: list, groups: list) -> tuple[list, list]:
    """torch.optim.SGD's update in float64, one parameter and one step at a time, written
    independently of autotrain.optim (the rule of its class docstring)."""
    params, bufs = [p.copy() for p in params], [None] * len(params)
    where = [gi for gi, g in enumerate(groups) for _ in g["shapes"]]
    for step_grads in grads:
        for i, g in enumerate(step_grads):
            if g is None:
                continue
            h = groups[where[i]]
            d = g + h["weight_decay"] * params[i] if h["weight_decay"] else g
            if h["momentum"]:
                bufs[i] = d.copy() if bufs[i] is None else h["momentum"] * bufs[i] + (1 - h["dampening"]) * d
                d = d + h["momentum"] * bufs[i] if h["nesterov"] else bufs[i]
            params[i] = params[i] - h["lr"] * d
    return params, bufs


def _sgd_check(rng) -> tuple[GradcheckReport, str]:
    """autotrain.optim.SGD against ``_sgd_reference`` over a few steps, with a resume from
    ``state_dict`` in the middle: parameters and momentum buffers, every element."""
    shapes = [s for g in _SGD_GROUPS for s in g["shapes"]]
    start = [rng.uniform(-1, 1, s) for s in shapes]
    grads = [[None if (t, i) in _SGD_NO_GRAD else rng.uniform(-1, 1, s) for i, s in enumerate(shapes)]
             for t in range(_SGD_STEPS)]
    tensors = [Tensor(p.copy(), requires_grad=True) for p in start]
    tensors[3].data = np.asfortranarray(tensors[3].data)  # its C-ordered gradients differ in layout

    def make(state=None):
        it = iter(tensors)
        groups = [{"params": [next(it) for _ in g["shapes"]], **{k: v for k, v in g.items() if k != "shapes"}}
                  for g in _SGD_GROUPS]
        opt = SGD(groups, lr=1.0)
        if state is not None:
            opt.load_state_dict(state)
        return opt

    opt = make()
    for t, step_grads in enumerate(grads):
        if t == _SGD_RESUME_AT:
            opt = make(opt.state_dict())
        for p, g in zip(tensors, step_grads):
            p.grad = None if g is None else Tensor(g.copy())
        opt.step()
    want_p, want_b = _sgd_reference(start, grads, _SGD_GROUPS)
    report = GradcheckReport()
    for i, (t, p, b) in enumerate(zip(tensors, want_p, want_b)):
        _compare(report, f"param {i}", t.data, p)
        got_b = opt.state[i].get("momentum_buffer")
        if b is None:
            if got_b is not None:
                report.max_tol_ratio, report.worst = np.inf, f"param {i}: a momentum buffer where torch keeps none"
        elif got_b is None:
            report.max_tol_ratio, report.worst = np.inf, f"param {i}: no momentum buffer"
        else:
            _compare(report, f"momentum_buffer {i}", got_b, b)
    return report, f"{len(shapes)} params, {_SGD_STEPS} steps"


def all_cases() -> list[Case]:
    """Every case, in the order the report shows them."""
    unary = lambda name, f, shape, make=_t: Case(name, _simple(f, [shape], make))  # noqa: E731
    return [
        _case_binary("add", lambda a, b: a + b, (3, 4), (3, 4)),
        _case_binary("add_broadcast", lambda a, b: a + b, (3, 4), (4,)),
        _case_binary("add_0d", lambda a, b: a + b, (), (2, 3)),
        _case_binary("sub", lambda a, b: a - b, (2, 1, 4), (3, 1)),
        _case_binary("mul_broadcast", lambda a, b: a * b, (2, 1, 4), (3, 1)),
        _case_binary("div", lambda a, b: a / b, (3, 4), (4,), positive_b=True),
        unary("pow", lambda a: a ** 3, (3, 4)),
        unary("pow_fractional", lambda a: a ** 1.5, (3, 4), lambda r, *s: Tensor(r.uniform(0.5, 2, s), requires_grad=True)),
        Case("pow_tensor", _simple(lambda a, b: a ** b, [(3, 4), (4,)],
                                   lambda r, *s: Tensor(r.uniform(0.5, 2, s), requires_grad=True))),
        unary("neg", lambda a: -a, (3, 4)),
        unary("exp", lambda a: a.exp(), (3, 4)),
        unary("log", lambda a: a.log(), (3, 4), lambda r, *s: Tensor(r.uniform(0.5, 2, s), requires_grad=True)),
        _case_binary("matmul", lambda a, b: a @ b, (3, 4), (4, 5)),
        _case_binary("matmul_batched", lambda a, b: a @ b, (2, 3, 4), (4, 5)),
        _case_binary("matmul_vector", lambda a, b: a @ b, (4,), (4, 5)),
        _case_binary("matmul_1d_1d", lambda a, b: a @ b, (4,), (4,)),
        _case_binary("matmul_matrix_vector", lambda a, b: a @ b, (3, 4), (4,)),
        _case_binary("matmul_batched_matrix_vector", lambda a, b: a @ b, (2, 3, 4), (4,)),
        # One operand a constant (an input through a frozen layer): the other's gradient alone.
        Case("matmul_frozen_b", lambda rng: ((lambda a, b=Tensor(rng.uniform(-1, 1, (4, 5))): a @ b),
                                            [_t(rng, 3, 4)], ["a"], None)),
        Case("matmul_frozen_a", lambda rng: ((lambda b, a=Tensor(rng.uniform(-1, 1, (3, 4))): a @ b),
                                            [_t(rng, 4, 5)], ["b"], None)),
        unary("sum", lambda a: a.sum(), (3, 4)),
        unary("sum_axis", lambda a: a.sum(axis=1, keepdims=True), (3, 4, 2)),
        unary("mean_axis", lambda a: a.mean(axis=(0, 2)), (3, 4, 2)),
        unary("reshape", lambda a: a.reshape(6, 2) * Tensor(np.arange(12.0).reshape(6, 2)), (3, 4)),
        unary("transpose", lambda a: a.transpose(0, 2) * Tensor(np.arange(24.0).reshape(4, 3, 2)), (2, 3, 4)),
        unary("getitem", lambda a: a[1:, ::2] * 2 + a[np.array([0, 0, 2])].sum(), (3, 4)),
        # A slice mixed with a repeated array index is advanced indexing: repeats add up.
        unary("getitem_slice_repeated", lambda a: a[:, np.array([0, 0, 2])].sum(axis=1) + a[np.array([1, 1, 3]), 1:].sum(axis=0).sum(), (4, 3)),
        # (2, 0, 1) is not its own inverse (a swap of two axes is): backward needs argsort(axes).
        unary("permute_3cycle", lambda a: a.permute(2, 0, 1), (3, 3, 3)),
        unary("relu", F.relu, (4, 5), _away_from_zero),
        # a in +-[0.1, 1], b in [-0.05, 0.05]: a + b stays clear of relu's kink.
        Case("add_relu", lambda rng: (F.add_relu, [_away_from_zero(rng, 2, 3, 4), _t(rng, 2, 3, 4, low=-0.05, high=0.05)],
                                      ["a", "b"], None)),
        _conv_case("conv2d", (2, 3, 5, 5), (4, 3, 3, 3), False, 1, 1, 1),
        _conv_case("conv2d_stride2", (2, 3, 6, 6), (4, 3, 3, 3), True, 2, 0, 1),
        _conv_case("conv2d_pad2_dilation2", (1, 2, 6, 6), (3, 2, 3, 3), True, 1, 2, 2),
        _conv_case("conv2d_1x1_stride2", (2, 3, 6, 6), (4, 3, 1, 1), False, 2, 0, 1),
        _conv_case("conv2d_7x7_stride2", (1, 2, 9, 9), (3, 2, 7, 7), False, 2, 3, 1),
        # Few pixels, many output channels: the stride-1 input gradient takes the col2im path.
        _conv_case("conv2d_few_pixels", (1, 2, 2, 2), (8, 2, 3, 3), False, 1, 1, 1),
        # More than 64 output channels: the weight gradient's other matmul orientation.
        Case("conv2d_many_channels", _conv_case("", (2, 2, 3, 3), (72, 2, 3, 3), True, 1, 1, 1).build,
             max_elements=60),
        # Stride > 1 with dilation: the input gradient takes col2im, each tap at (i*dh, j*dw);
        # height and width differ in every parameter, so a swapped axis shows.
        Case("conv2d_dilated_strided", lambda rng: _conv_case("", (1, 2, 9, 8), (3, 2, 3, 2), True,
                                                              (2, 3), (1, 2), (2, 1)).build(rng)),
        # A 1x1 map: the taps around the centre read only padding and are dropped.
        _conv_case("conv2d_1x1_map", (2, 3, 1, 1), (4, 3, 3, 3), True, 1, 1, 1),
        unary("max_pool2d", lambda a: F.max_pool2d(a, 2, 2), (2, 3, 4, 4), _distinct),
        unary("max_pool2d_k3s2p1", lambda a: F.max_pool2d(a, 3, 2, 1), (2, 2, 7, 7), _distinct),
        unary("adaptive_avg_pool2d", lambda a: F.adaptive_avg_pool2d(a, 1), (2, 3, 4, 4)),
        unary("adaptive_avg_pool2d_2x2", lambda a: F.adaptive_avg_pool2d(a, 2), (2, 3, 4, 4)),
        _batch_norm_case("batch_norm_train", True),
        _batch_norm_case("batch_norm_eval", False),
        _batch_norm_case("batch_norm_relu_train", True, relu=True),
        _batch_norm_case("batch_norm_relu_eval", False, relu=True),
        Case("linear", _simple(lambda x, w, b: F.linear(x, w, b), [(5, 4), (3, 4), (3,)])),
        unary("log_softmax", lambda a: F.log_softmax(a, dim=1), (3, 5)),
        unary("cross_entropy", lambda a: F.cross_entropy(a, np.array([0, 4, 2])), (3, 5)),
        Case("mse_loss", _simple(lambda a, b: F.mse_loss(a, b), [(3, 4), (3, 4)])),
        _resnet_case(),
        Case("sgd_reference", None, check=_sgd_check),
    ]


def select_cases(patterns: list[str] | None) -> list[Case]:
    """Cases whose name matches any pattern (exact name, prefix or glob); all when none given."""
    cases = all_cases()
    if not patterns:
        return cases
    chosen = [c for c in cases if any(c.name == p or c.name.startswith(p) or fnmatch.fnmatch(c.name, p) for p in patterns)]
    if not chosen:
        raise KeyError(", ".join(patterns))
    return chosen


def run_case(case: Case, eps: float = 1e-6, atol: float = 1e-5, rtol: float = 1e-3, seed: int = 0) -> CaseResult:
    """Run one case with its seeded inputs. eps, atol and rtol are the finite-difference
    settings of the gradient cases; a reference case keeps REFERENCE_ATOL/RTOL."""
    rng = np.random.default_rng(seed)
    if case.check is not None:
        start = time.perf_counter()
        report, shapes = case.check(rng)
        return CaseResult(case.name, shapes, report.elements, report.max_abs_err, report.max_rel_err,
                          report.max_tol_ratio, report.passed, report.worst, time.perf_counter() - start)
    fn, inputs, names, restore = case.build(rng)
    start = time.perf_counter()
    try:
        report = check_gradients(fn, inputs, eps=eps, atol=atol, rtol=rtol,
                                 max_elements=case.max_elements, seed=seed, names=names)
    finally:
        if restore is not None:
            restore()
    shapes = ", ".join("x".join(map(str, t.shape)) or "scalar" for t in inputs)
    if len(shapes) > 40:
        shapes = f"{len(inputs)} tensors"
    return CaseResult(case.name, shapes, report.elements, report.max_abs_err, report.max_rel_err, report.max_tol_ratio,
                      report.passed, report.worst, time.perf_counter() - start)

"""Engine cases that planted bugs (mutation testing, issue 15) showed no other test covers.

Each test is named for the bug it catches; the expected numbers are written out by hand in
NumPy (never with the engine's own backward), and where torch is installed also compared
with torch.autograd. The new `autotrain gradcheck` cases (1-D matmuls, a permutation that is
not its own inverse, a dilated strided conv, SGD) are run here too, and shown able to fail.
"""

from __future__ import annotations

import numpy as np
import pytest

import autotrain as at
from autotrain.autograd import Function
from autotrain.autograd import ops
from autotrain.checks import run_case, select_cases
from autotrain.nn import functional as F
from conftest import require


def leaf(array, requires_grad=True):
    return at.tensor(np.asarray(array), requires_grad=requires_grad)


# --- MatMul, 2-D, when only one operand needs a gradient ---------------------------------------
# An input through a frozen linear layer: the weight does not need a gradient, the input does.

def test_matmul_gradient_of_a_alone_when_b_needs_none():
    rng = np.random.default_rng(0)
    a, b, v = rng.standard_normal((3, 4)), rng.standard_normal((4, 5)), rng.standard_normal((3, 5))
    ta, tb = leaf(a), leaf(b, requires_grad=False)
    ((ta @ tb) * leaf(v, False)).sum().backward()
    assert ta.grad is not None, "a needs a gradient even though b does not"
    # d/da sum(v * (a @ b)) = v @ b.T
    np.testing.assert_allclose(ta.grad.numpy(), v @ b.T, rtol=1e-12)
    assert tb.grad is None


def test_matmul_gradient_of_b_alone_when_a_needs_none():
    rng = np.random.default_rng(1)
    a, b, v = rng.standard_normal((3, 4)), rng.standard_normal((4, 5)), rng.standard_normal((3, 5))
    ta, tb = leaf(a, requires_grad=False), leaf(b)
    ((ta @ tb) * leaf(v, False)).sum().backward()
    assert tb.grad is not None, "b needs a gradient even though a does not"
    np.testing.assert_allclose(tb.grad.numpy(), a.T @ v, rtol=1e-12)  # d/db = a.T @ v
    assert ta.grad is None


def test_input_gradient_through_a_frozen_linear_layer():
    rng = np.random.default_rng(2)
    x, w = rng.standard_normal((2, 3)), rng.standard_normal((4, 3))
    tx = leaf(x)
    F.linear(tx, leaf(w, requires_grad=False)).sum().backward()
    # sum_ij (x @ w.T)_ij: d/dx[n, k] = sum_j w[j, k], the same for every row n.
    np.testing.assert_allclose(tx.grad.numpy(), np.tile(w.sum(axis=0), (2, 1)), rtol=1e-12)


def test_matmul_one_sided_gradients_match_torch():
    torch = require("torch")
    rng = np.random.default_rng(3)
    a, b, v = rng.standard_normal((2, 3, 4)), rng.standard_normal((4, 5)), rng.standard_normal((2, 3, 5))
    for need_a in (True, False):
        ta, tb = leaf(a, need_a), leaf(b, not need_a)
        ra = torch.tensor(a, requires_grad=need_a)
        rb = torch.tensor(b, requires_grad=not need_a)
        ((ta @ tb) * leaf(v, False)).sum().backward()
        ((ra @ rb) * torch.tensor(v)).sum().backward()
        ours, theirs = (ta, ra) if need_a else (tb, rb)
        np.testing.assert_allclose(ours.grad.numpy(), theirs.grad.numpy(), rtol=1e-12, atol=1e-12)


# --- A slice together with a repeated fancy index ----------------------------------------------
# Mixed indices are advanced indexing: the gradient of a repeated position must add up.

def test_column_fancy_index_with_a_slice_adds_repeated_columns():
    a = leaf(np.zeros((3, 4)))
    a[:, np.array([0, 0, 2])].sum().backward()
    np.testing.assert_array_equal(a.grad.numpy(), np.tile([2.0, 0.0, 1.0, 0.0], (3, 1)))


def test_row_fancy_index_with_a_slice_adds_repeated_rows():
    v = np.arange(1.0, 7.0).reshape(3, 2)  # a distinct weight for every picked element
    a = leaf(np.zeros((4, 3)))
    (a[np.array([1, 1, 3]), 1:] * leaf(v, False)).sum().backward()
    expected = np.zeros((4, 3))
    expected[1, 1:] = v[0] + v[1]  # row 1 picked twice: both weights
    expected[3, 1:] = v[2]
    np.testing.assert_array_equal(a.grad.numpy(), expected)


def test_mixed_fancy_index_gradient_matches_torch():
    torch = require("torch")
    rng = np.random.default_rng(4)
    x, v = rng.standard_normal((4, 5)), rng.standard_normal((3, 3))
    idx = np.array([4, 0, 4])
    ours, theirs = leaf(x), torch.tensor(x, requires_grad=True)
    (ours[1:, idx] * leaf(v, False)).sum().backward()
    (theirs[1:, torch.tensor(idx)] * torch.tensor(v)).sum().backward()
    np.testing.assert_allclose(ours.grad.numpy(), theirs.grad.numpy(), rtol=1e-12, atol=0)


# --- A gradient's dtype through a Cast ----------------------------------------------------------

class _Probe(Function):
    """Identity that records the dtype of the gradient reaching it in backward."""

    seen: list = []

    @staticmethod
    def forward(ctx, a):
        return a

    @staticmethod
    def backward(ctx, g):
        _Probe.seen.append(g.dtype)
        return (g,)


def test_gradient_returns_to_each_side_of_a_cast_in_that_sides_dtype():
    _Probe.seen = []
    x = leaf(np.array([1.5, -2.0, 0.25], dtype=np.float32))
    w = np.array([3.0, 0.5, -4.0])
    near_leaf = _Probe.apply(x * 2.0)  # float32 math before the cast
    wide = near_leaf.double()
    assert wide.dtype == np.float64
    far = _Probe.apply(wide * leaf(w, False))  # float64 math between the casts
    far.float().sum().backward()
    # Backward meets the far probe first (between the casts: float64), then the near one
    # (between the leaf and the first cast: the leaf's float32).
    assert _Probe.seen == [np.float64, np.float32]
    assert x.grad.dtype == np.float32
    np.testing.assert_array_equal(x.grad.numpy(), (2.0 * w).astype(np.float32))  # d/dx sum(2 x w)


# --- The new gradcheck cases ---------------------------------------------------------------------

NEW_CASES = ["matmul_1d_1d", "matmul_matrix_vector", "matmul_batched_matrix_vector", "matmul_frozen_b",
             "matmul_frozen_a", "getitem_slice_repeated", "permute_3cycle", "conv2d_dilated_strided",
             "sgd_reference"]


def _case(name):
    (case,) = [c for c in select_cases([name]) if c.name == name]
    return case


@pytest.mark.parametrize("name", NEW_CASES)
def test_new_gradcheck_case_passes(name):
    result = run_case(_case(name))
    assert result.passed, result.worst
    assert result.elements > 0


@pytest.mark.parametrize("name, cls, wrong_backward", [
    # 1-D @ 1-D: each gradient taken from itself instead of the other operand.
    ("matmul_1d_1d", ops.MatMul, lambda ctx, g: (g * ctx.saved[0], g * ctx.saved[1])),
    # matrix @ vector: the vector's gradient forgets g (a.sum(0) instead of a.T @ g).
    ("matmul_matrix_vector", ops.MatMul, lambda ctx, g: (g[:, None] * ctx.saved[1], ctx.saved[0].sum(axis=0))),
    # The surviving mutant of issue 15: a's gradient gated on b needing one.
    ("matmul_frozen_b", ops.MatMul,
     lambda ctx, g: (g @ ctx.saved[1].T if ctx.needs_input_grad[1] else None,
                     ctx.saved[0].T @ g if ctx.needs_input_grad[1] else None)),
    # A permutation undone by itself instead of its inverse: right for a swap, wrong for (2, 0, 1).
    ("permute_3cycle", ops.Permute, lambda ctx, g: (g.transpose(ctx.axes),)),
])
def test_new_gradcheck_case_fails_on_a_wrong_backward(monkeypatch, name, cls, wrong_backward):
    monkeypatch.setattr(cls, "backward", staticmethod(wrong_backward))
    result = run_case(_case(name))
    assert not result.passed


def test_getitem_case_fails_when_a_mixed_index_is_taken_for_a_basic_one(monkeypatch):
    # The surviving mutant of issue 15: `any` for `all`, so a[:, array] assigns, not adds.
    def any_basic(index):
        items = index if isinstance(index, tuple) else (index,)
        return any(isinstance(i, (int, np.integer, slice)) or i is None or i is Ellipsis for i in items)

    monkeypatch.setattr(ops, "_is_basic_index", any_basic)
    assert not run_case(_case("getitem_slice_repeated")).passed


def test_conv_case_fails_when_col2im_ignores_dilation(monkeypatch):
    from autotrain.autograd import nn_ops

    real_tap = nn_ops._tap
    calls = []

    def undilated_tap(x, i, j, oh, ow, sh, sw):
        calls.append((i, j))
        return real_tap(x, i, j, oh, ow, sh, sw)

    # Forward also reads taps through _im2col (not _tap), so this spy sees col2im only.
    monkeypatch.setattr(nn_ops, "_tap", undilated_tap)
    assert run_case(_case("conv2d_dilated_strided")).passed
    assert (4, 1) in calls  # tap (2, 1) at dilation (2, 1): col2im ran, dilated
    # Height dilation 2 dropped in col2im: tap row i read at i, not i * 2.
    monkeypatch.setattr(nn_ops, "_tap", lambda x, i, j, *rest: real_tap(x, i // 2, j, *rest))
    assert not run_case(_case("conv2d_dilated_strided")).passed


@pytest.mark.parametrize("rule", ["nesterov", "dampening", "weight_decay"])
def test_sgd_reference_case_fails_when_a_rule_is_ignored(monkeypatch, rule):
    from autotrain.optim import SGD

    original = SGD._update
    ignored = {"nesterov": False, "dampening": 0.0, "weight_decay": 0.0}[rule]

    def wrong(group, p, g, buf, first, tmp):
        original(dict(group, **{rule: ignored}), p, g, buf, first, tmp)

    monkeypatch.setattr(SGD, "_update", staticmethod(wrong))
    result = run_case(_case("sgd_reference"))
    assert not result.passed and result.worst


def test_sgd_reference_case_fails_when_a_parameter_without_gradient_decays(monkeypatch):
    from autotrain.optim import SGD

    original = SGD.step

    def step(self):
        for group in self.param_groups:  # a zero gradient instead of skipping: decay runs
            for p in group["params"]:
                if p.grad is None:
                    p.grad = at.tensor(np.zeros_like(p.data))
        original(self)

    monkeypatch.setattr(SGD, "step", step)
    assert not run_case(_case("sgd_reference")).passed


# === Survivors of scripts/mutation_test.py (benchmarks/mutation_report.md) =====================
# Each test below kills mutants that survived the engine tests; the report lists them by name.

# --- Tensor's reflected operators, comparisons and small methods --------------------------------

def test_reflected_operators_put_the_number_on_the_left():
    x = leaf(np.array([1.0, 2.0, 4.0]))
    np.testing.assert_array_equal((10.0 + x).data, [11.0, 12.0, 14.0])
    np.testing.assert_array_equal((10.0 - x).data, [9.0, 8.0, 6.0])
    np.testing.assert_array_equal((8.0 / x).data, [8.0, 4.0, 2.0])
    m = np.array([[1.0, 0.0, 0.0], [0.0, 0.0, 1.0]])
    np.testing.assert_array_equal((m @ x).data, [1.0, 4.0])  # ndarray @ Tensor defers to __rmatmul__
    ((10.0 + x) + (10.0 - x) * 2.0 + 8.0 / x).sum().backward()
    (m @ x).sum().backward()
    # d/dx: 1 - 2 - 8/x^2 + column sums of m ([1, 0, 1])
    np.testing.assert_allclose(x.grad.data, [1 - 2 - 8.0 + 1, 1 - 2 - 2.0, 1 - 2 - 0.5 + 1], rtol=1e-15)


def test_comparisons_against_a_tensor_and_a_number():
    a, b = at.tensor([1.0, 2.0, 3.0]), at.tensor([2.0, 2.0, 2.0])
    assert (a < b).tolist() == [True, False, False]
    assert (a <= b).tolist() == [True, True, False]
    assert (a > b).tolist() == [False, False, True]
    assert (a >= b).tolist() == [False, True, True]
    assert (a != b).tolist() == [True, False, True]
    assert (a == b).tolist() == [False, True, False]
    assert (a < 2.5).tolist() == [True, True, False] and (a >= 2.0).tolist() == [False, True, True]


def test_scalar_conversions_and_reductions():
    assert bool(at.tensor(0.0)) is False and bool(at.tensor([3.0])) is True
    assert float(at.tensor([2.5])) == 2.5
    t = at.tensor([[0.0, 5.0, 1.0], [7.0, 2.0, 0.0]])
    assert t.all().item() is False and t.any().item() is True
    assert at.tensor([1.0, 2.0]).all().item() is True and at.tensor([0.0]).any().item() is False
    assert t.argmax().item() == 3
    assert t.argmax(axis=1).tolist() == [1, 0] and t.argmax(dim=0).tolist() == [1, 0, 0]
    assert t.size() == (2, 3) and t.size(1) == 3 and t.size(-2) == 2


def test_abs_sqrt_pow_relu_values_and_gradients():
    x = leaf(np.array([-4.0, 0.25, 9.0]))
    np.testing.assert_array_equal(x.abs().data, [4.0, 0.25, 9.0])
    np.testing.assert_array_equal(x.relu().data, [0.0, 0.25, 9.0])
    np.testing.assert_array_equal(x.pow(2).data, [16.0, 0.0625, 81.0])
    y = leaf(np.array([4.0, 0.25, 9.0]))
    np.testing.assert_array_equal(y.sqrt().data, [2.0, 0.5, 3.0])
    (x.abs() + x.relu() + x.pow(2)).sum().backward()
    np.testing.assert_array_equal(x.grad.data, [-1 + 0 - 8.0, 1 + 1 + 0.5, 1 + 1 + 18.0])
    y.sqrt().sum().backward()
    np.testing.assert_allclose(y.grad.data, [0.25, 1.0, 1 / 6], rtol=1e-15)  # 1 / (2 sqrt(y))


def test_to_double_float_cast_and_same_dtype_returns_self():
    x = leaf(np.array([1.5, -2.0], dtype=np.float32))
    assert x.to(np.float32) is x and x.float() is x
    d = x.double()
    assert d.dtype == np.float64 and d.grad_fn is not None and d.grad_fn.name() == "CastBackward0"
    assert x.to("float64").dtype == np.float64
    f = leaf(np.array([1.5]), requires_grad=False).float()
    assert f.dtype == np.float32 and not f.requires_grad


def test_transpose_defaults_to_the_first_two_dims():
    t = at.tensor(np.arange(24.0).reshape(2, 3, 4))
    assert t.transpose().shape == (3, 2, 4)
    np.testing.assert_array_equal(t.transpose().data, np.arange(24.0).reshape(2, 3, 4).swapaxes(0, 1))


def test_numpy_on_a_tensor_that_requires_grad_names_detach():
    with pytest.raises(RuntimeError) as err:
        leaf(np.ones(2)).numpy()
    assert str(err.value) == "Can't call numpy() on Tensor that requires grad. Use tensor.detach().numpy() instead."


def test_repr_of_a_matrix_aligns_its_rows_under_the_first():
    assert repr(at.tensor([[1.5, 2.5], [3.5, 4.5]])) == "tensor([[1.5000, 2.5000],\n        [3.5000, 4.5000]])"


@pytest.mark.parametrize("values, text", [
    # Written from torch 2.13's output for the same float32 values.
    ([0.0, 1.5], "tensor([0.0000, 1.5000])"),  # zeros do not count in the span
    ([1e-5, 5e-5], "tensor([1.0000e-05, 5.0000e-05])"),  # below 1e-4 though the span is 5x
    ([1e-4, 0.05], "tensor([0.0001, 0.0500])"),  # 1e-4 itself is not below
    ([0.5, 1500.5], "tensor([5.0000e-01, 1.5005e+03])"),  # a span over 1000x
    ([1.5, 1500.75], "tensor([1.5000e+00, 1.5008e+03])"),  # 1000.5x
])
def test_repr_switches_to_scientific_where_torch_does(values, text):
    assert repr(at.tensor(values)) == text


def test_repr_scientific_above_1e8_in_float64():
    # 100000000.5 is above 1e8 (torch: scientific); the span to 1e6 is only 100x.
    assert "e+08" in repr(at.tensor(np.array([100000000.5, 1000000.5])))


# --- factories ----------------------------------------------------------------------------------

def test_like_factories_do_not_require_grad_unless_asked():
    t = at.tensor([1.0, 2.0])
    assert not at.zeros_like(t).requires_grad and not at.ones_like(t).requires_grad
    assert at.zeros_like(t, requires_grad=True).requires_grad and at.ones_like(t, requires_grad=True).requires_grad


# --- PowTensor and Pow at their edges (torch's conventions) -------------------------------------

def test_tensor_power_gradients_at_zero_base_and_zero_exponent():
    a = leaf(np.array([0.0, 0.0, 0.0, 0.0, 2.0, 2.0]))
    b = leaf(np.array([0.0, 0.5, 1.0, 2.0, 0.0, 3.0]))
    with np.errstate(divide="ignore", invalid="ignore"):  # a^(b-1) at a = 0, masked where b == 0
        (a ** b).sum().backward()
    # d/da a^b = b a^(b-1), defined 0 where b == 0; at a = 0, b = 0.5 it is +inf (as torch).
    np.testing.assert_array_equal(a.grad.data, [0.0, np.inf, 1.0, 0.0, 0.0, 12.0])
    # d/db a^b = a^b log a, defined 0 where a == 0 and b >= 0.
    np.testing.assert_allclose(b.grad.data, [0.0, 0.0, 0.0, 0.0, np.log(2.0), 8 * np.log(2.0)], rtol=1e-15)


def test_tensor_power_exponent_gradient_takes_log_of_zero_silently():
    a = leaf(np.array([0.0, 0.0, 2.0]), requires_grad=False)
    b = leaf(np.array([0.0, 1.0, 3.0]))
    with np.errstate(divide="raise", invalid="raise"):  # log(0) and 0 * -inf are masked, not errors
        (a ** b).sum().backward()
    np.testing.assert_allclose(b.grad.data, [0.0, 0.0, 8 * np.log(2.0)], rtol=1e-15)


def test_tensor_power_gradient_of_the_base_alone():
    a, b = leaf(np.array([2.0, 3.0])), leaf(np.array([3.0, 2.0]), requires_grad=False)
    (a ** b).sum().backward()
    np.testing.assert_array_equal(a.grad.data, [12.0, 6.0])


def test_power_gradient_keeps_a_float32_input_in_float32():
    _Probe.seen = []
    x = leaf(np.array([1.5, 2.0], dtype=np.float32))
    (_Probe.apply(x) ** 3).sum().backward()
    assert _Probe.seen == [np.float32]
    np.testing.assert_array_equal(x.grad.data, np.array([6.75, 12.0], dtype=np.float32))


# --- zero_grads ------------------------------------------------------------------------------------

def test_zero_grads_forgets_by_default_and_zeroes_in_place_when_asked():
    from autotrain.autograd.tensor import zero_grads

    p = leaf(np.ones(2))
    (p * 3.0).sum().backward()
    kept = p.grad
    zero_grads([p], set_to_none=False)
    assert p.grad is kept and kept.data.tolist() == [0.0, 0.0]
    zero_grads([p])
    assert p.grad is None


# --- learning-rate schedules ---------------------------------------------------------------------

def test_schedule_defaults_and_the_end_of_cosine():
    from autotrain.optim import scheduled_lr

    # Defaults: step_size 30 epochs, gamma 0.1 (torch's StepLR example values).
    assert scheduled_lr(1.0, "step", 29, 1, 100) == 1.0
    assert scheduled_lr(1.0, "step", 30, 1, 100) == pytest.approx(0.1, rel=1e-15)
    # Past the last step the cosine stays at 0 (progress capped at 1), not on its way back up.
    assert scheduled_lr(0.1, "cosine", 20, 4, 3) == pytest.approx(0.0, abs=1e-18)
    # One step in all: progress is 0 then 1, never a division by 0.
    assert scheduled_lr(0.1, "cosine", 0, 1, 1) == pytest.approx(0.1) and scheduled_lr(0.1, "cosine", 1, 1, 1) == pytest.approx(0.0, abs=1e-18)


# --- SGD: hyper-parameters at 1, memory layouts, state loading --------------------------------

def _sgd_reference_steps(p0, grads, lr, momentum=0.0, weight_decay=0.0):
    """torch's rule written out for one parameter (no dampening, no nesterov)."""
    p, buf = p0.copy(), None
    for g in grads:
        d = g + weight_decay * p
        if momentum:
            buf = d.copy() if buf is None else momentum * buf + d
            d = buf
        p = p - lr * d
    return p, buf


@pytest.mark.parametrize("momentum, weight_decay", [(1.0, 0.0), (0.0, 1.0), (1.0, 1.0)])
def test_sgd_with_momentum_or_weight_decay_of_exactly_one(momentum, weight_decay):
    from autotrain.optim import SGD

    rng = np.random.default_rng(5)
    p0, grads = rng.standard_normal(5), [rng.standard_normal(5) for _ in range(3)]
    p = leaf(p0.copy())
    opt = SGD([p], lr=0.1, momentum=momentum, weight_decay=weight_decay)
    for g in grads:
        p.grad = at.tensor(g.copy())
        opt.step()
    want_p, want_b = _sgd_reference_steps(p0, grads, 0.1, momentum, weight_decay)
    np.testing.assert_allclose(p.data, want_p, rtol=1e-14)
    if momentum:
        np.testing.assert_allclose(opt.state[0]["momentum_buffer"], want_b, rtol=1e-14)


def test_sgd_flat_view_follows_memory_order_and_refuses_gaps():
    from autotrain.layout import flat_view as _flat

    nhwc = np.arange(24.0).reshape(2, 2, 3, 2)  # memory order
    nchw = nhwc.transpose(0, 3, 1, 2)  # channels-last, seen as NCHW
    flat = _flat(nchw)
    assert flat.ndim == 1 and np.shares_memory(flat, nhwc)
    np.testing.assert_array_equal(flat, np.arange(24.0))  # memory order, not NCHW order
    c = np.arange(6.0).reshape(2, 3)
    assert np.shares_memory(_flat(c), c) and _flat(c).tolist() == [0.0, 1.0, 2.0, 3.0, 4.0, 5.0]
    assert _flat(np.arange(12.0).reshape(3, 4)[:, ::2]) is None  # gaps: not one dense block


def test_sgd_updates_a_strided_parameter_in_place():
    from autotrain.optim import SGD

    base = np.zeros((3, 4))
    p = at.tensor(np.zeros(1), requires_grad=True)
    p.data = base[:, ::2]  # a view with gaps: the update must land in base
    p.grad = at.tensor(np.ones((3, 2)))
    SGD([p], lr=0.5, momentum=0.9).step()
    np.testing.assert_array_equal(base, np.tile([-0.5, 0.0], (3, 2)))


def test_sgd_channels_last_parameter_with_channels_last_gradient():
    from autotrain.optim import SGD

    rng = np.random.default_rng(6)
    p0 = rng.standard_normal((2, 3, 2, 2))
    grads = [rng.standard_normal((2, 3, 2, 2)) for _ in range(2)]
    p = at.tensor(np.zeros(1), requires_grad=True)
    p.data = np.ascontiguousarray(p0.transpose(0, 2, 3, 1)).transpose(0, 3, 1, 2)
    opt = SGD([p], lr=0.1, momentum=0.9, weight_decay=0.01)
    for g in grads:
        p.grad = at.tensor(np.ascontiguousarray(g.transpose(0, 2, 3, 1)).transpose(0, 3, 1, 2))
        opt.step()
    want_p, want_b = _sgd_reference_steps(p0, grads, 0.1, 0.9, 0.01)
    np.testing.assert_allclose(p.data, want_p, rtol=1e-14)
    np.testing.assert_allclose(opt.state[0]["momentum_buffer"], want_b, rtol=1e-14)


def _three_group_sgd():
    from autotrain.optim import SGD

    ps = [leaf(np.ones(n, dtype=np.float32)) for n in (2, 3, 4, 5, 6)]
    return ps, SGD([{"params": ps[:2]}, {"params": ps[2:4], "lr": 0.5}, {"params": ps[4:]}], lr=0.1, momentum=0.9)


def test_sgd_param_groups_meta_numbers_positions_across_groups():
    _, opt = _three_group_sgd()
    meta = opt.param_groups_meta()
    assert [g["params"] for g in meta] == [[0, 1], [2, 3], [4]]
    assert [g["lr"] for g in meta] == [0.1, 0.5, 0.1]


def test_sgd_load_state_dict_checks_positions_and_keeps_its_own_copy_in_the_params_dtype():
    ps, opt = _three_group_sgd()
    for p in ps:
        p.grad = at.tensor(np.ones(p.shape, dtype=np.float32))
    opt.step()
    state = opt.state_dict()
    state["state"] = {i: {"momentum_buffer": s["momentum_buffer"].astype(np.float64)} for i, s in state["state"].items()}
    _, fresh = _three_group_sgd()
    fresh.load_state_dict(state)
    buf = fresh.state[4]["momentum_buffer"]
    assert buf.dtype == np.float32
    state["state"][4]["momentum_buffer"][...] = 7.0  # the caller's arrays are not the optimizer's
    assert buf.tolist() == [1.0] * 6
    _, same = _three_group_sgd()
    kept = {k: v for k, v in opt.state_dict().items()}
    same.load_state_dict(kept)
    kept["state"][0]["momentum_buffer"][...] = 7.0  # same dtype: still a copy
    assert same.state[0]["momentum_buffer"].tolist() == [1.0, 1.0]
    with pytest.raises(ValueError) as err:
        fresh.load_state_dict({"state": {5: {"momentum_buffer": np.ones(6)}}, "param_groups": state["param_groups"]})
    assert str(err.value) == "optimizer state for parameter position 5, but there are 5"
    with pytest.raises(ValueError) as err:
        fresh.load_state_dict({"state": {}, "param_groups": state["param_groups"][:2]})
    assert str(err.value) == "loaded optimizer state has a different number of parameters per group"
    with pytest.raises(ValueError) as err:
        fresh.load_state_dict({"state": {1: {"momentum_buffer": np.ones(2)}}, "param_groups": state["param_groups"]})
    assert str(err.value) == "optimizer state 1.momentum_buffer has shape (2,), parameter has (3,)"


def test_sgd_zero_grad_forgets_by_default():
    ps, opt = _three_group_sgd()
    for p in ps:
        p.grad = at.tensor(np.ones(p.shape, dtype=np.float32))
    opt.zero_grad()
    assert all(p.grad is None for p in ps)


# --- The backward walk: a node that receives no gradient ----------------------------------------

class _Stop(Function):
    """Passes values forward and no gradient back (returns None for its input)."""

    @staticmethod
    def forward(ctx, a):
        return a.copy()

    @staticmethod
    def backward(ctx, g):
        return (None,)


@pytest.mark.parametrize("stopped_first", [True, False])
def test_a_subgraph_that_gets_no_gradient_is_skipped_and_released(stopped_first):
    x = leaf(np.array([1.0, 2.0]))
    a = x * 2.0  # a feeds the stopped branch and two live ones
    h = (a * 3.0) * 5.0  # only through the stop
    stopped, live1, live2 = _Stop.apply(h).sum(), (a * 4.0).sum(), (a * 7.0).sum()
    loss = stopped + live1 + live2 if stopped_first else live1 + live2 + stopped
    loss.backward()
    np.testing.assert_array_equal(x.grad.data, [22.0, 22.0])  # 2 * (4 + 7); nothing through h
    assert h.grad_fn.saved == () and a.grad_fn.saved == ()  # released, the skipped part too


def test_a_skipped_subgraph_is_kept_for_a_second_backward_with_retain_graph():
    x = leaf(np.array([1.0, 2.0]))
    h = (x * 3.0) * x  # h = 3 x^2 saves arrays
    (_Stop.apply(h).sum() + (x * 4.0).sum()).backward(retain_graph=True)
    np.testing.assert_array_equal(x.grad.data, [4.0, 4.0])
    h.sum().backward()  # through the part skipped above: it must still have its arrays
    np.testing.assert_array_equal(x.grad.data, [4.0 + 6.0, 4.0 + 12.0])  # + 6 x


# --- Small API contracts ---------------------------------------------------------------------------

def test_tensor_from_a_tensor_copies_its_values():
    src = at.tensor([1.0, 2.0])
    t = at.tensor(src)
    assert t.tolist() == [1.0, 2.0] and not np.shares_memory(t.data, src.data)


def test_item_of_many_elements_says_how_many():
    with pytest.raises(RuntimeError) as err:
        at.tensor([1.0, 2.0]).item()
    assert str(err.value) == "a Tensor with 2 elements cannot be converted to Scalar"


def test_gradcheck_takes_one_tensor_and_passes_its_settings_on():
    from autotrain.autograd import GradcheckError, gradcheck

    x = leaf(np.array([0.5, 1.5, 2.0]))
    assert gradcheck(lambda t: t ** 3, x)  # one tensor, not a tuple
    # eps 0.1: central differences of x^3 are off by eps^2 = 0.01, past the default tolerance.
    with pytest.raises(GradcheckError):
        gradcheck(lambda t: t ** 3, (x,), eps=0.1)
    assert gradcheck(lambda t: t ** 3, (x,), eps=0.1, atol=0.05)
    assert gradcheck(lambda t: t ** 3, (x,), eps=0.1, rtol=0.05)  # 5% of 3x^2 >= 0.0375 covers it

    class WrongAt2(Function):
        @staticmethod
        def forward(ctx, a):
            return a * 2.0

        @staticmethod
        def backward(ctx, g):
            out = g * 2.0
            out[2] += 1.0
            return (out,)

    with pytest.raises(GradcheckError, match=r"\(2,\)"):
        gradcheck(WrongAt2.apply, (x,))
    # max_elements=2 samples 2 of the 3 elements: some seeds leave the wrong one out.
    def passes(seed):
        try:
            return gradcheck(WrongAt2.apply, (x,), max_elements=2, seed=seed)
        except GradcheckError:
            return False

    assert 0 < sum(passes(seed) for seed in range(12)) < 12


# --- max_pool2d --------------------------------------------------------------------------------------

def test_max_pool_where_the_first_tap_wins_every_window():
    x = at.tensor(np.array([[[[9.0, 1.0, 8.0, 2.0], [3.0, 4.0, 5.0, 6.0]]]], dtype=np.float32), requires_grad=True)
    _Probe.seen = []
    out = F.max_pool2d(_Probe.apply(x), 2, 2)
    assert out.data.tolist() == [[[[9.0, 8.0]]]]
    (out * at.tensor(np.array([[[[2.0, 3.0]]]], dtype=np.float32))).sum().backward()
    assert _Probe.seen == [np.float32]  # the pooling gradient keeps float32
    assert x.grad.data.tolist() == [[[[2.0, 0.0, 3.0, 0.0], [0.0, 0.0, 0.0, 0.0]]]]


def test_max_pool_with_256_taps_in_a_window():
    # 256 taps do not fit the uint8 tap index: the kernel must switch to int32.
    data = np.zeros((1, 1, 16, 16))
    data[0, 0, 15, 14] = 1.0  # tap 254
    data[0, 0, 15, 15] = 2.0  # tap 255, the last: wins
    x = leaf(data)
    out = F.max_pool2d(x, 16)
    assert out.data.tolist() == [[[[2.0]]]]
    out.sum().backward()
    expected = np.zeros((1, 1, 16, 16))
    expected[0, 0, 15, 15] = 1.0
    np.testing.assert_array_equal(x.grad.data, expected)


# --- SGD's argument checks -------------------------------------------------------------------------

def test_sgd_argument_errors_say_what_is_wrong():
    from autotrain.optim import SGD

    p = leaf(np.ones(2))
    cases = [
        (dict(params=[p], lr=-1.0), "Invalid learning rate: -1.0"),
        (dict(params=[p], lr=0.1, momentum=-0.5), "Invalid momentum value: -0.5"),
        (dict(params=[p], lr=0.1, weight_decay=-0.1), "Invalid weight_decay value: -0.1"),
        (dict(params=[p], lr=0.1, nesterov=True), "Nesterov momentum requires a momentum and zero dampening"),
        (dict(params=[], lr=0.1), "optimizer got an empty parameter list"),
        (dict(params=[p * 2.0], lr=0.1), "optimizer can only optimize leaf Tensors"),
        (dict(params=[p, p], lr=0.1), "some parameters appear in more than one parameter group"),
        (dict(params=[{"params": [p]}, {"params": [p]}], lr=0.1), "some parameters appear in more than one parameter group"),
    ]
    for kwargs, message in cases:
        with pytest.raises(ValueError) as err:
            SGD(**kwargs)
        assert str(err.value) == message


def test_sgd_group_params_may_be_a_generator():
    from autotrain.optim import SGD

    ps = [leaf(np.ones(2)), leaf(np.ones(3))]
    opt = SGD([{"params": (p for p in ps)}], lr=0.5)
    assert opt.param_groups[0]["params"] == ps and len(opt.state) == 2
    for p in ps:
        p.grad = at.tensor(np.ones(p.shape))
    opt.step()
    assert ps[0].data.tolist() == [0.5, 0.5] and ps[1].data.tolist() == [0.5, 0.5, 0.5]


# --- Indexing, flatten, dtype arguments --------------------------------------------------------

def test_tensor_factory_honours_dtype_for_lists():
    assert at.tensor([1.0, 2.0], dtype=np.float64).dtype == np.float64
    assert at.tensor([1, 2], dtype=np.float32).dtype == np.float32


def test_indexing_gradient_keeps_float32():
    _Probe.seen = []
    x = at.tensor(np.array([1.0, 2.0, 3.0], dtype=np.float32), requires_grad=True)
    _Probe.apply(x)[1:].sum().backward()
    assert _Probe.seen == [np.float32]
    assert x.grad.data.tolist() == [0.0, 1.0, 1.0]


def test_tensor_indices_inside_a_tuple():
    x = leaf(np.arange(12.0).reshape(3, 4))
    y = x[at.tensor(np.array([2, 2, 0])), 1:3]
    np.testing.assert_array_equal(y.data, [[9.0, 10.0], [9.0, 10.0], [1.0, 2.0]])
    y.sum().backward()
    np.testing.assert_array_equal(x.grad.data, [[0, 1, 1, 0], [0, 0, 0, 0], [0, 2, 2, 0]])


def test_flatten_defaults_to_all_dims():
    t = at.tensor(np.arange(24.0).reshape(2, 3, 4))
    assert t.flatten().shape == (24,) and t.flatten(1).shape == (2, 12)


# --- Leaf gradients own their memory ---------------------------------------------------------------
# The engine hands a gradient to a leaf without a copy only when nothing else holds it; each
# test writes into one .grad and checks that nothing else changed.

def _c(*values):
    """A constant: multiplying by it makes the gradient behind it a fresh, writeable array,
    which the engine may hand to a leaf without a copy (unless something else holds it)."""
    return leaf(np.array(values), requires_grad=False)


def test_two_leaves_of_one_add_get_separate_gradients():
    a, b = leaf(np.ones(3)), leaf(np.ones(3))
    ((a + b) * _c(1.0, 2.0, 3.0)).sum().backward()  # Add returns one array for both
    a.grad.data[...] = 5.0
    assert b.grad.data.tolist() == [1.0, 2.0, 3.0]


def test_views_of_one_gradient_given_to_two_leaves_are_separated():
    a, b = leaf(np.ones(4)), leaf(np.ones(4))
    ((a.reshape(2, 2) + b.reshape(2, 2)) * _c(1.0, 2.0)).sum().backward()
    a.grad.data[...] = 5.0
    assert b.grad.data.tolist() == [1.0, 2.0, 1.0, 2.0]
    x = leaf(np.ones(4))
    ((x.reshape(2, 2) * 1.0 + x.reshape(2, 2)) * _c(1.0, 2.0)).sum().backward()  # one leaf, two paths: added
    assert x.grad.data.tolist() == [2.0, 4.0, 2.0, 4.0]


def test_the_callers_gradient_array_is_never_kept():
    x = leaf(np.ones(4))
    g = np.full((2, 2), 3.0)
    x.reshape(2, 2).backward(g)  # Reshape hands back a view of g
    g[...] = 7.0
    assert x.grad.data.tolist() == [3.0] * 4
    y = leaf(np.ones(2))
    gy = np.array([2.0, 4.0])
    y.backward(gy)  # a leaf as the root
    gy[...] = 0.0
    assert y.grad.data.tolist() == [2.0, 4.0]
    z = leaf(np.ones(2))
    gz = np.array([1.0, 3.0])
    (z + z).backward(gz)  # Add hands gz itself back, twice
    gz[...] = 0.0
    assert z.grad.data.tolist() == [2.0, 6.0]


def test_a_leaf_gradient_is_not_a_view_of_the_leaf_or_of_saved_arrays():
    x = leaf(np.array([1.0, 2.0]))
    w = leaf(np.array([3.0, 4.0]))
    (x * w).sum().backward()  # x.grad = w's data, w.grad = x's data: must be copies or fresh
    x.grad.data[...] = 0.0
    w.grad.data[...] = 0.0
    assert x.data.tolist() == [1.0, 2.0] and w.data.tolist() == [3.0, 4.0]
    p = leaf(np.array([1.0, 2.0]))
    q = p.reshape(2)  # a view of p's data...
    (q * _c(1.0, 1.0) + p * 0.0).sum().backward()
    p.grad.data[...] = 9.0
    assert p.data.tolist() == [1.0, 2.0]


def test_a_gradient_still_pending_for_another_node_is_not_given_away():
    x = leaf(np.ones(3))
    h = x * 2.0
    z = (x + h) * _c(1.0, 1.0, 1.0)  # Add hands one fresh array to the leaf x and to h's node
    z.sum().backward()
    np.testing.assert_array_equal(x.grad.data, [3.0, 3.0, 3.0])  # 1 + 2, not 2 + 2 or 1 + 1
    x2 = leaf(np.ones(3))
    h2 = x2 * _c(2.0, 2.0, 2.0)
    (h2 + x2 * 1.0).backward(np.array([1.0, 1.0, 1.0]))
    np.testing.assert_array_equal(x2.grad.data, [3.0, 3.0, 3.0])


def test_gradients_accumulate_into_an_existing_grad_in_place():
    x = leaf(np.ones(2))
    (x * 3.0).sum().backward()
    first = x.grad
    (x * 4.0).sum().backward()
    assert x.grad is first and first.data.tolist() == [7.0, 7.0]


# --- BatchNorm: 2-D input, and the incoming gradient left as it was ----------------------------

@pytest.mark.parametrize("training", [True, False])
def test_batch_norm_on_2d_input_gradients(training):
    from autotrain.autograd import gradcheck

    rng = np.random.default_rng(7)
    x, w, b = leaf(rng.standard_normal((6, 3))), leaf(rng.uniform(0.5, 1.5, 3)), leaf(rng.standard_normal(3))
    rm, rv = at.tensor(rng.standard_normal(3)), at.tensor(rng.uniform(0.5, 1.5, 3))
    snapshot = (rm.data.copy(), rv.data.copy())

    def fn(x, w, b):
        rm.data[...], rv.data[...] = snapshot  # training updates them on every call
        return F.batch_norm(x, rm, rv, w, b, training=training)

    assert gradcheck(fn, (x, w, b))


@pytest.mark.parametrize("kernel", ["batch_norm", "batch_norm_relu"])
@pytest.mark.parametrize("training", [True, False])
def test_batch_norm_backward_leaves_a_channels_last_incoming_gradient_alone(kernel, training):
    # In a ResNet block the same gradient array also flows down the shortcut: writing the
    # BatchNorm's input gradient into it would corrupt the other branch.
    rng = np.random.default_rng(8)
    x = leaf(rng.standard_normal((2, 3, 2, 2)))
    rm, rv = at.tensor(np.zeros(3)), at.tensor(np.ones(3))
    y = getattr(F, kernel)(x, rm, rv, leaf(np.ones(3)), leaf(np.zeros(3)), training=training)
    g = np.ascontiguousarray(rng.standard_normal((2, 2, 2, 3))).transpose(0, 3, 1, 2)  # NHWC memory
    before = g.copy()
    y.backward(g)
    np.testing.assert_array_equal(g, before)


# --- check_gradients' report ------------------------------------------------------------------------

class _TwiceOffAt(Function):
    """2 * a, whose backward adds DELTA at flat element 1."""

    DELTA = 0.01

    @staticmethod
    def forward(ctx, a):
        return a * 2.0

    @staticmethod
    def backward(ctx, g):
        out = g * 2.0
        out.reshape(-1)[1] += _TwiceOffAt.DELTA
        return (out,)


def test_check_gradients_report_fields_are_the_measured_errors():
    from autotrain.autograd import check_gradients

    x = leaf(np.array([[0.5, -1.0, 2.0], [1.5, 0.25, -0.75]]))
    x.grad = at.tensor(np.full((2, 3), 100.0))  # a stale gradient must not leak into the check
    frozen = leaf(np.ones(3), requires_grad=False)
    report = check_gradients(lambda a, f: _TwiceOffAt.apply(a) + f, (x, frozen), seed=4, names=["x", "f"])
    v = np.random.default_rng(4).standard_normal((2, 3))  # the seeded cotangent, drawn first
    numerical = 2.0 * v[0, 1]
    assert report.elements == 6  # x only: f does not require grad
    assert report.max_abs_err == pytest.approx(0.01, rel=1e-6)
    assert report.max_rel_err == pytest.approx(0.01 / abs(numerical), rel=1e-6)
    assert report.max_tol_ratio == pytest.approx(0.01 / (1e-5 + 1e-3 * abs(numerical)), rel=1e-6)
    assert not report.passed
    assert report.worst.startswith("x (0, 1): analytical ") and "abs err 0.01)" in report.worst


def test_check_gradients_relative_error_ignores_near_zero_gradients():
    from autotrain.autograd import check_gradients

    class TinyOff(Function):
        @staticmethod
        def forward(ctx, a):
            return a * 0.0  # numerical gradient exactly 0

        @staticmethod
        def backward(ctx, g):
            return (g * 0.0 + 1e-7,)  # off by 1e-7: within atol, infinite relative error

    report = check_gradients(TinyOff.apply, (leaf(np.ones(3)),))
    assert report.passed and report.max_rel_err == 0.0 and report.max_abs_err == pytest.approx(1e-7)
    assert report.max_tol_ratio == pytest.approx(1e-7 / 1e-5)


def test_check_gradients_passes_exactly_at_its_tolerance():
    from autotrain.autograd.gradcheck import GradcheckReport

    assert GradcheckReport(max_tol_ratio=1.0).passed and not GradcheckReport(max_tol_ratio=1.0000001).passed


# --- mean, flatten, permute; BatchNorm's running variance and eval-mode gradients ---------------

def test_mean_keeps_no_dims_by_default_and_flatten_ranges():
    t = at.tensor(np.arange(24.0).reshape(2, 3, 4))
    assert t.mean(axis=0).shape == (3, 4) and t.mean(axis=0, keepdims=True).shape == (1, 3, 4)
    assert t.flatten(0, 1).shape == (6, 4) and t.flatten(1, 2).shape == (2, 12)
    assert at.tensor(3.0).flatten().shape == (1,)  # a 0-d tensor flattens to one element, as in torch
    p = t.permute(2, 0, 1)
    assert p.shape == (4, 2, 3) and p.data[3, 1, 2] == t.data[1, 2, 3]


def test_batch_norm_running_variance_is_unbiased_for_two_samples():
    x = at.tensor(np.array([[1.0, 10.0], [3.0, 20.0]]))  # two samples per channel
    rm, rv = at.tensor(np.zeros(2)), at.tensor(np.ones(2))
    F.batch_norm(x, rm, rv, training=True, momentum=0.5)
    # unbiased variance: ((1-2)^2 + (3-2)^2) / 1 = 2 and ((10-15)^2 + (20-15)^2) / 1 = 50
    np.testing.assert_allclose(rv.data, [0.5 * 1 + 0.5 * 2.0, 0.5 * 1 + 0.5 * 50.0], rtol=1e-15)
    np.testing.assert_allclose(rm.data, [0.5 * 2.0, 0.5 * 15.0], rtol=1e-15)


def test_batch_norm_eval_gradient_of_the_weight_alone():
    x = at.tensor(np.array([[1.0, 10.0], [3.0, 20.0]]))
    rm, rv = at.tensor(np.array([2.0, 12.0])), at.tensor(np.array([4.0, 16.0]))
    w = leaf(np.array([1.0, 1.0]))
    F.batch_norm(x, rm, rv, w, leaf(np.zeros(2), requires_grad=False), training=False, eps=0.0).sum().backward()
    # d/dw sum((x - rm) / sqrt(rv) * w) = sum over the batch of (x - rm) / sqrt(rv)
    np.testing.assert_allclose(w.grad.data, [(-1 + 1) / 2.0, (-2 + 8) / 4.0], rtol=1e-15)


def test_check_gradients_with_several_outputs_a_number_input_and_an_unused_input():
    from autotrain.autograd import check_gradients

    x, unused = leaf(np.array([0.5, 1.5])), leaf(np.array([1.0, 2.0, 3.0]))
    frozen = leaf(np.ones(2), requires_grad=False)
    # Inputs in this order: one without grad first, then a Python number, then two with grad.
    report = check_gradients(lambda f, k, a, u: (a * k + f, (a ** 3) * 2.0), (frozen, 3.0, x, unused))
    assert report.passed and report.elements == 5  # x's 2 and unused's 3 (gradient 0 = numerical 0)

    class SecondOutputWrong(Function):
        @staticmethod
        def forward(ctx, a):
            return a * 1.0

        @staticmethod
        def backward(ctx, g):
            return (g * 0.0,)  # claims the output does not depend on a

    assert not check_gradients(lambda a: (a * 2.0, SecondOutputWrong.apply(a)), (x,)).passed


def test_check_gradients_defaults_eps_1e6_and_seed_0():
    from autotrain.autograd import check_gradients

    x = leaf(np.array([0.5, 1.5, 2.0]))
    assert check_gradients(lambda a: a ** 3, (x,)).passed  # eps 1e-6: x^3's error eps^2 is nothing
    default = check_gradients(_TwiceOffAt.apply, (leaf(np.ones((2, 3))),))
    seeded = check_gradients(_TwiceOffAt.apply, (leaf(np.ones((2, 3))),), seed=0)
    other = check_gradients(_TwiceOffAt.apply, (leaf(np.ones((2, 3))),), seed=1)
    assert default.worst == seeded.worst and default.max_tol_ratio == seeded.max_tol_ratio
    assert other.max_tol_ratio != seeded.max_tol_ratio  # the seed draws the cotangent


def test_check_gradients_samples_distinct_elements():
    from autotrain.autograd import check_gradients

    class WrongAtEnds(Function):
        @staticmethod
        def forward(ctx, a):
            return a * 1.0

        @staticmethod
        def backward(ctx, g):
            out = g * 1.0
            out[0] += 1.0
            out[-1] += 1.0
            return (out,)

    # 5 distinct elements of 6 always include element 0 or 5; drawn with replacement they need not.
    for seed in range(20):
        assert not check_gradients(WrongAtEnds.apply, (leaf(np.ones(6)),), max_elements=5, seed=seed).passed


@pytest.mark.parametrize("x_shape, w_shape, stride, padding", [
    ((1, 2, 5, 5), (3, 2, 3, 3), 2, 1),  # col2im input gradient
    ((1, 2, 1, 1), (3, 2, 3, 3), 1, 1),  # taps that read only padding are cropped
    ((1, 2, 5, 5), (3, 2, 3, 3), 1, 1),  # full correlation input gradient
])
def test_conv_gradients_keep_float32(x_shape, w_shape, stride, padding):
    rng = np.random.default_rng(9)
    x = at.tensor(rng.standard_normal(x_shape).astype(np.float32), requires_grad=True)
    w = at.tensor(rng.standard_normal(w_shape).astype(np.float32), requires_grad=True)
    _Probe.seen = []
    F.conv2d(_Probe.apply(x), _Probe.apply(w), None, stride, padding).sum().backward()
    assert _Probe.seen == [np.float32, np.float32]


def test_check_gradients_of_an_empty_input():
    from autotrain.autograd import check_gradients

    report = check_gradients(lambda a: a * 2.0, (leaf(np.zeros((0, 3))),))
    assert report.passed and report.elements == 0 and report.max_abs_err == 0.0 and report.worst == ""


# --- sum's axis spellings, padding, conv kernels that are not square ---------------------------

def test_sum_takes_a_list_of_axes_and_torch_keywords():
    t = at.tensor(np.arange(24.0).reshape(2, 3, 4))
    np.testing.assert_array_equal(t.sum(axis=[0, 2]).data, np.arange(24.0).reshape(2, 3, 4).sum(axis=(0, 2)))
    assert t.sum(dim=1).shape == (2, 4) and t.sum(dim=1, keepdim=True).shape == (2, 1, 4)


def test_max_pool_padding_never_wins_over_very_negative_values():
    # Padding 2 on a 3-row map: the bottom padding rows must be filled too (with -inf).
    x = at.tensor(np.full((1, 1, 3, 3), -1e30))
    assert (F.max_pool2d(x, 5, 1, 2).data == -1e30).all()


def _conv_reference(x, w, stride):
    """Cross-correlation written out with loops, for tiny shapes only."""
    n, c, h, wd = x.shape
    o, _, kh, kw = w.shape
    oh, ow = (h - kh) // stride + 1, (wd - kw) // stride + 1
    out = np.zeros((n, o, oh, ow))
    for i in range(oh):
        for j in range(ow):
            patch = x[:, :, i * stride:i * stride + kh, j * stride:j * stride + kw]
            out[:, :, i, j] = np.einsum("nchw,ochw->no", patch, w)
    return out


@pytest.mark.parametrize("kernel", [(3, 1), (1, 3), (2, 2), (1, 1)])
def test_conv_with_non_square_and_small_kernels(kernel):
    rng = np.random.default_rng(10)
    x, w = rng.standard_normal((2, 2, 4, 5)), rng.standard_normal((3, 2) + kernel)
    np.testing.assert_allclose(F.conv2d(at.tensor(x), at.tensor(w)).data, _conv_reference(x, w, 1), rtol=1e-12, atol=1e-12)


def test_conv_input_gradient_through_a_frozen_weight():
    rng = np.random.default_rng(11)
    x, w = leaf(rng.standard_normal((1, 2, 3, 3))), rng.standard_normal((1, 2, 3, 3))
    F.conv2d(x, leaf(w, requires_grad=False)).sum().backward()  # one output pixel: d/dx = w
    np.testing.assert_allclose(x.grad.data, w, rtol=1e-15)


def test_relu_gradient_with_an_infinite_incoming_gradient_keeps_float32():
    _Probe.seen = []
    x = at.tensor(np.array([1.0, -1.0, 2.0], dtype=np.float32), requires_grad=True)
    F.relu(_Probe.apply(x)).backward(np.array([np.inf, 5.0, 3.0], dtype=np.float32))
    assert _Probe.seen == [np.float32]
    assert x.grad.data.tolist() == [np.inf, 0.0, 3.0]  # 0 where relu is off, not inf * 0 = nan


def test_numbers_take_the_tensors_float_dtype_but_arrays_and_ints_promote():
    f32 = at.tensor(np.array([1.0, 2.0], dtype=np.float32))
    assert (f32 * 2.5).dtype == np.float32
    mixed = f32 + np.array([0.5, 0.25])  # an ndarray operand promotes as NumPy does
    assert mixed.dtype == np.float64 and mixed.data.tolist() == [1.5, 2.25]
    assert (at.tensor([1, 2]) * 2.5).data.tolist() == [2.5, 5.0]  # an int tensor is not truncating 2.5


def test_a_gradient_that_cannot_be_summed_back_names_both_shapes():
    class WrongShape(Function):
        @staticmethod
        def forward(ctx, a):
            return a * 1.0

        @staticmethod
        def backward(ctx, g):
            return (np.ones(3),)

    with pytest.raises(RuntimeError) as err:
        WrongShape.apply(leaf(np.ones(2))).sum().backward()
    assert str(err.value) == "gradient of shape (3,) cannot be summed to shape (2,)"


_SHARED = np.full(3, 2.0)  # one array a user Function hands out for every call
_FOREIGN = bytearray(np.full(3, 2.0).tobytes())  # memory NumPy does not own (a buffer)


class _SharedGrad(Function):
    """A (legal) backward that returns the same array on every call."""

    source = "shared"

    @staticmethod
    def forward(ctx, a):
        return a * 2.0

    @staticmethod
    def backward(ctx, g):
        if _SharedGrad.source == "shared":
            return (_SHARED,)
        return (np.frombuffer(_FOREIGN, dtype=np.float64),)


@pytest.mark.parametrize("source", ["shared", "foreign"])
def test_one_array_returned_to_two_leaves_by_two_nodes_is_not_shared_by_their_grads(monkeypatch, source):
    monkeypatch.setattr(_SharedGrad, "source", source)
    a, b = leaf(np.ones(3)), leaf(np.ones(3))
    (_SharedGrad.apply(a) + _SharedGrad.apply(b)).sum().backward()
    assert a.grad.data.tolist() == [2.0] * 3 and b.grad.data.tolist() == [2.0] * 3
    assert not np.shares_memory(a.grad.data, b.grad.data)


# --- Grad mode per thread, constants, Tensor construction, backward's gradient argument ----------

def test_grad_mode_is_on_in_a_new_thread():
    import threading

    from autotrain.autograd import is_grad_enabled, no_grad

    seen = []

    def worker():
        seen.append(is_grad_enabled())
        seen.append((leaf(np.ones(2)) * 2.0).requires_grad)

    with no_grad():  # this thread's mode does not leak into the other
        t = threading.Thread(target=worker)
        t.start()
        t.join()
    assert seen == [True, True]


def test_a_constant_operand_gets_no_gradient():
    x, c = leaf(np.ones(2)), leaf(np.array([2.0, 3.0]), requires_grad=False)
    (x + c).sum().backward()
    assert c.grad is None and x.grad.data.tolist() == [1.0, 1.0]


def test_tensor_constructor_and_results_hold_ndarrays():
    from autotrain.autograd import Tensor

    t = Tensor([1.0, 2.0])
    assert isinstance(t.data, np.ndarray) and t.data.tolist() == [1.0, 2.0]
    dot = leaf(np.array([1.0, 2.0])) @ leaf(np.array([3.0, 4.0]))  # NumPy returns a scalar here
    assert isinstance(dot.data, np.ndarray) and dot.data.shape == () and dot.item() == 11.0
    assert dot.grad is None and (dot * 1.0).grad is None


def test_backward_errors_are_torchs_messages():
    with pytest.raises(RuntimeError) as err:
        at.tensor([1.0]).backward()
    assert str(err.value) == "element 0 of tensors does not require grad and does not have a grad_fn"
    with pytest.raises(RuntimeError) as err:
        (leaf(np.ones(2)) * 2.0).backward()
    assert str(err.value) == "grad can be implicitly created only for scalar outputs"


def test_backward_gradient_argument_takes_the_outputs_dtype():
    _Probe.seen = []
    x = at.tensor(np.array([1.0, 2.0], dtype=np.float32), requires_grad=True)
    (_Probe.apply(x) * 2.0).backward(np.array([1.0, 3.0]))  # a float64 gradient for a float32 output
    assert _Probe.seen == [np.float32]
    (_Probe.apply(x) * 2.0).backward(at.tensor(np.array([1.0, 1.0], dtype=np.float32)))  # a Tensor gradient
    assert x.grad.data.tolist() == [2.0 + 2.0, 6.0 + 2.0]


def test_a_leaf_gradient_takes_the_leafs_dtype_and_memory_layout():
    x = at.tensor(np.array([1.0, 2.0], dtype=np.float32), requires_grad=True)
    (x * np.array([2.0, 4.0])).sum().backward()  # a float64 gradient reaches a float32 leaf
    assert x.grad.dtype == np.float32 and x.grad.data.tolist() == [2.0, 4.0]
    nhwc = np.ascontiguousarray(np.ones((2, 3, 2, 2)).transpose(0, 2, 3, 1))
    y = at.tensor(np.zeros(1), requires_grad=True)
    y.data = nhwc.transpose(0, 3, 1, 2)  # channels-last memory, NCHW shape
    (y * 2.0).sum().backward()
    assert y.grad.data.strides == y.data.strides


def test_a_read_only_gradient_is_copied_before_it_becomes_a_grad():
    class ReadOnlyGrad(Function):
        @staticmethod
        def forward(ctx, a):
            return a * 2.0

        @staticmethod
        def backward(ctx, g):
            out = g * 2.0
            out.flags.writeable = False
            return (out,)

    x = leaf(np.ones(2))
    for _ in range(2):  # the second backward adds into the first's .grad in place
        ReadOnlyGrad.apply(x).backward(np.array([1.0, 1.0]))
    assert x.grad.data.tolist() == [4.0, 4.0] and x.grad.data.flags.writeable


def test_abs_of_zero_is_zero():
    x = leaf(np.array([0.0, -2.0, 3.0]))
    y = x.abs()
    assert y.data.tolist() == [0.0, 2.0, 3.0]
    y.sum().backward()
    assert x.grad.data.tolist() == [0.0, -1.0, 1.0]  # sign(x), 0 at 0 as in torch


def test_a_0d_leaf_gradient_takes_the_leafs_dtype():
    x = at.tensor(np.array(2.0, dtype=np.float32), requires_grad=True)
    (x * np.array(3.0)).backward()  # 0-d arrays of both dtypes have the same (empty) strides
    assert x.grad.dtype == np.float32 and x.grad.item() == 3.0


def test_repr_span_of_exactly_1000_stays_fixed_point():
    assert "e+" not in repr(at.tensor([1.5, 1500.0]))  # torch: tensor([   1.5000, 1500.0000])


def test_a_foreign_gradient_and_an_owned_one_in_one_backward(monkeypatch):
    monkeypatch.setattr(_SharedGrad, "source", "foreign")
    a, b = leaf(np.ones(3)), leaf(np.ones(3))
    (_SharedGrad.apply(a) + b * _c(1.0, 2.0, 3.0)).sum().backward()
    assert a.grad.data.tolist() == [2.0] * 3 and b.grad.data.tolist() == [1.0, 2.0, 3.0]


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_synchronised_batch_norm_equals_batch_norm_over_the_global_batch(dtype):
    # reduce = "sum over two processes holding the same shard": the global batch is the shard
    # twice, so every result must equal plain BatchNorm on the shard stacked twice.
    rng = np.random.default_rng(12)
    shard = rng.standard_normal((3, 2, 2, 2)).astype(dtype)
    g = rng.standard_normal((3, 2, 2, 2)).astype(dtype)
    w, b = rng.uniform(0.5, 1.5, 2).astype(dtype), rng.standard_normal(2).astype(dtype)
    runs = []
    for x_data, g_data, reduce in ((shard, g, lambda v: 2.0 * v),
                                   (np.concatenate([shard, shard]), np.concatenate([g, g]), None)):
        x = at.tensor(x_data.copy(), requires_grad=True)
        rm, rv = at.tensor(np.zeros(2, dtype=dtype)), at.tensor(np.ones(2, dtype=dtype))
        y = F.batch_norm(x, rm, rv, at.tensor(w), at.tensor(b), training=True, reduce=reduce)
        assert y.dtype == dtype
        y.backward(at.tensor(g_data))
        runs.append((y.data[:3], x.grad.data[:3], rm.data, rv.data))
    tol = 1e-5 if dtype == np.float32 else 1e-12
    for ours, reference in zip(*runs):
        np.testing.assert_allclose(ours, reference, rtol=tol, atol=tol)

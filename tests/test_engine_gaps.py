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

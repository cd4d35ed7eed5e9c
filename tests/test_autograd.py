"""Semantics of the autograd engine, checked against torch.autograd's documented behaviour.

Every expected value is computed here by hand or with plain NumPy, never with the engine.
"""

from __future__ import annotations

import re

import numpy as np
import pytest

import autotrain as at
from autotrain.autograd import Function, GradcheckError, check_gradients, gradcheck


@pytest.fixture(autouse=True)
def _seed_and_grad_mode():
    at.manual_seed(0)
    yield
    at.set_grad_enabled(True)  # a failing test must not leave grad mode off for the next one


def leaf(array, requires_grad=True):
    return at.tensor(np.asarray(array), requires_grad=requires_grad)


# --- the tutorial's printed values ----------------------------------------------------------------

def test_leaf_repr_shows_requires_grad():
    a = at.tensor([2., 3.], requires_grad=True)
    assert repr(a) == "tensor([2., 3.], requires_grad=True)"
    assert repr(at.tensor([6., 4.])) == "tensor([6., 4.])"


def test_result_repr_shows_grad_fn():
    a = at.tensor([2., 3.], requires_grad=True)
    b = at.tensor([6., 4.], requires_grad=True)
    Q = 3 * a ** 3 - b ** 2
    assert repr(Q) == "tensor([-12.,  65.], grad_fn=<SubBackward0>)"
    assert Q.grad_fn.name() == "SubBackward0"
    assert not Q.is_leaf and a.is_leaf


def test_dtype_shown_in_repr_unless_default():
    assert "dtype=float64" in repr(at.zeros(2, dtype=np.float64))
    assert "dtype" not in repr(at.zeros(2))


def test_backward_of_a_vector_needs_a_gradient():
    a = at.tensor([2., 3.], requires_grad=True)
    Q = 3 * a ** 3
    with pytest.raises(RuntimeError, match="grad can be implicitly created only for scalar outputs"):
        Q.backward()
    assert a.grad is None


def test_backward_with_gradient_argument_is_a_vector_jacobian_product():
    a = at.tensor([2., 3.], requires_grad=True)
    b = at.tensor([6., 4.], requires_grad=True)
    Q = 3 * a ** 3 - b ** 2
    Q.backward(gradient=at.tensor([1., 1.]))
    np.testing.assert_array_equal(a.grad.data, [36., 81.])
    np.testing.assert_array_equal(b.grad.data, [-12., -8.])
    # A non-uniform v scales each row of the (diagonal) Jacobian.
    a.grad = b.grad = None
    Q = 3 * a ** 3 - b ** 2
    Q.backward(gradient=at.tensor([2., -1.]))
    np.testing.assert_array_equal(a.grad.data, [72., -81.])
    np.testing.assert_array_equal(b.grad.data, [-24., 8.])


def test_gradient_argument_must_match_shape():
    a = at.tensor([2., 3.], requires_grad=True)
    with pytest.raises(RuntimeError, match="shape"):
        (a * 2).backward(gradient=at.tensor([1., 1., 1.]))


def test_comparison_gives_a_bool_tensor_printed_as_in_torch():
    a = at.tensor([2., 3.], requires_grad=True)
    b = at.tensor([6., 4.], requires_grad=True)
    (3 * a ** 3 - b ** 2).backward(gradient=at.tensor([1., 1.]))
    eq = 9 * a ** 2 == a.grad
    assert eq.dtype == np.bool_
    assert not eq.requires_grad
    assert repr(eq) == "tensor([True, True])"
    assert repr(-2 * b == b.grad) == "tensor([True, True])"
    assert repr(a == at.tensor([2., 0.])) == "tensor([ True, False])"


def test_sum_backward_equals_gradient_of_ones():
    a = at.tensor([2., 3.], requires_grad=True)
    b = at.tensor([6., 4.], requires_grad=True)
    Q = 3 * a ** 3 - b ** 2
    Q.sum().backward()
    assert repr(9 * a ** 2 == a.grad) == "tensor([True, True])"
    assert repr(-2 * b == b.grad) == "tensor([True, True])"
    assert a.grad.dtype == np.float32 and not a.grad.requires_grad


def test_backward_on_a_tensor_that_does_not_require_grad_raises():
    with pytest.raises(RuntimeError, match="does not require grad"):
        at.tensor(1.0).backward()


def test_backward_on_a_scalar_leaf_sets_its_grad_to_one():
    x = at.tensor(3.0, requires_grad=True)
    x.backward()
    assert x.grad.shape == () and x.grad.item() == 1.0


# --- accumulation and the freed graph -------------------------------------------------------------

def test_gradients_accumulate_across_backward_calls():
    x = leaf([1., 2., 3.])
    (x * x).sum().backward()
    np.testing.assert_array_equal(x.grad.data, [2., 4., 6.])
    (x * 3).sum().backward()
    np.testing.assert_array_equal(x.grad.data, [5., 7., 9.])


def test_setting_grad_to_none_resets_accumulation():
    x = leaf([1., 2.])
    (x * 5).sum().backward()
    (x * 5).sum().backward()
    np.testing.assert_array_equal(x.grad.data, [10., 10.])
    x.grad = None
    (x * 5).sum().backward()
    np.testing.assert_array_equal(x.grad.data, [5., 5.])


def test_zero_grad_of_module_and_optimizer():
    lin = at.nn.Linear(3, 2)
    lin(at.randn(4, 3)).sum().backward()
    assert all(p.grad is not None for p in lin.parameters())
    lin.zero_grad(set_to_none=False)
    assert all(p.grad is not None and not p.grad.data.any() for p in lin.parameters())
    lin.zero_grad()
    assert all(p.grad is None for p in lin.parameters())
    opt = at.optim.SGD(lin.parameters(), lr=0.1)
    lin(at.randn(4, 3)).sum().backward()
    opt.zero_grad()
    assert all(p.grad is None for p in lin.parameters())


def test_first_grad_is_a_copy_not_an_alias_of_the_upstream_gradient():
    x = leaf([1., 2.])
    v = at.tensor([1., 1.])
    (x * 1).backward(gradient=v)
    x.grad.data += 10  # must not write into v
    np.testing.assert_array_equal(v.data, [1., 1.])


def test_second_backward_through_freed_graph_raises():
    a = leaf([2., 3.])
    b = leaf([6., 4.])
    Q = 3 * a ** 3 - b ** 2
    Q.sum().backward()
    with pytest.raises(RuntimeError, match="retain_graph"):
        Q.sum().backward()


def test_retain_graph_allows_a_second_backward_and_grads_double():
    a = leaf([2., 3.])
    b = leaf([6., 4.])
    Q = 3 * a ** 3 - b ** 2
    loss = Q.sum()
    loss.backward(retain_graph=True)
    np.testing.assert_array_equal(a.grad.data, [36., 81.])
    loss.backward()
    np.testing.assert_array_equal(a.grad.data, [72., 162.])
    np.testing.assert_array_equal(b.grad.data, [-24., -16.])
    with pytest.raises(RuntimeError, match="retain_graph"):
        loss.backward()  # the second call did not retain


# --- broadcasting ---------------------------------------------------------------------------------

def test_broadcast_add_matrix_and_row():
    rng = np.random.default_rng(1)
    A, B, G = rng.standard_normal((3, 4)), rng.standard_normal(4), rng.standard_normal((3, 4))
    a, b = leaf(A), leaf(B)
    out = a + b
    assert out.shape == (3, 4)
    out.backward(gradient=at.tensor(G))
    assert a.grad.shape == (3, 4) and b.grad.shape == (4,)
    np.testing.assert_allclose(a.grad.data, G)
    np.testing.assert_allclose(b.grad.data, G.sum(axis=0))


def test_broadcast_mul_with_size_one_axes():
    rng = np.random.default_rng(2)
    A, B = rng.standard_normal((2, 1, 4)), rng.standard_normal((3, 1))
    G = rng.standard_normal((2, 3, 4))
    a, b = leaf(A), leaf(B)
    out = a * b
    assert out.shape == (2, 3, 4)
    out.backward(gradient=at.tensor(G))
    assert a.grad.shape == (2, 1, 4) and b.grad.shape == (3, 1)
    np.testing.assert_allclose(a.grad.data, (G * B).sum(axis=1, keepdims=True))
    np.testing.assert_allclose(b.grad.data, (G * A).sum(axis=(0, 2))[:, None])


def test_broadcast_sub_and_div_second_operand():
    rng = np.random.default_rng(3)
    A, B = rng.standard_normal((3, 4)), rng.uniform(1, 2, (3, 1))
    a, b = leaf(A), leaf(B)
    (a / b - b).sum().backward()
    np.testing.assert_allclose(a.grad.data, np.broadcast_to(1 / B, (3, 4)))
    np.testing.assert_allclose(b.grad.data, (-A / B ** 2).sum(axis=1, keepdims=True) - 4)


def test_zero_dim_tensor_times_matrix():
    rng = np.random.default_rng(4)
    X = rng.standard_normal((3, 4))
    s = at.tensor(2.5, requires_grad=True)
    x = leaf(X)
    assert s.shape == () and s.ndim == 0
    (s * x).sum().backward()
    assert s.grad.shape == ()
    np.testing.assert_allclose(s.grad.data, X.sum())
    np.testing.assert_allclose(x.grad.data, np.full((3, 4), 2.5))


def test_zero_dim_only_graph():
    s = at.tensor(3.0, requires_grad=True)
    y = s * s * s  # 0-d throughout
    assert y.shape == ()
    y.backward()
    assert s.grad.shape == () and s.grad.item() == pytest.approx(27.0)


def test_python_scalars_broadcast_and_keep_dtype():
    x = at.tensor([1., 2.], requires_grad=True)
    y = 2.0 * x + 1 - x / 4.0
    assert y.dtype == np.float32
    y.sum().backward()
    np.testing.assert_allclose(x.grad.data, [1.75, 1.75])
    assert x.grad.shape == (2,)


def test_sum_over_an_axis_broadcasts_back():
    X = np.arange(6.0).reshape(2, 3)
    x = leaf(X)
    y = x.sum(axis=1)
    assert y.shape == (2,)
    y.backward(gradient=at.tensor([1., 10.]))
    np.testing.assert_array_equal(x.grad.data, [[1., 1., 1.], [10., 10., 10.]])
    x.grad = None
    x.mean(dim=0, keepdim=True).backward(gradient=at.tensor([[1., 2., 3.]]))
    np.testing.assert_allclose(x.grad.data, [[.5, 1., 1.5], [.5, 1., 1.5]])


# --- requires_grad and grad mode ------------------------------------------------------------------

def test_requires_grad_propagates_from_any_input():
    x = at.rand(5, 5)
    y = at.rand(5, 5)
    z = at.rand(5, 5, requires_grad=True)
    assert (x + y).requires_grad is False
    assert (x + y).grad_fn is None
    assert (x + z).requires_grad is True
    assert (x * y + z).requires_grad is True
    assert ((x + z) * 0).requires_grad is True  # tracked even when the value does not depend on z
    assert (z > 0.5).requires_grad is False


def test_no_grad_as_context_manager():
    z = at.rand(3, requires_grad=True)
    with at.no_grad():
        assert at.is_grad_enabled() is False
        y = z * 2
    assert y.requires_grad is False and y.grad_fn is None
    assert at.is_grad_enabled() is True
    assert (z * 2).requires_grad is True


def test_enable_grad_nested_inside_no_grad():
    z = at.rand(3, requires_grad=True)
    with at.no_grad():
        with at.enable_grad():
            y = z * 2
            with at.no_grad():
                w = z * 2
            assert at.is_grad_enabled() is True
        u = z * 2
        assert at.is_grad_enabled() is False
    assert y.requires_grad and not w.requires_grad and not u.requires_grad
    assert at.is_grad_enabled() is True


def test_no_grad_and_enable_grad_as_decorators():
    z = at.rand(3, requires_grad=True)

    @at.no_grad()
    def frozen(t):
        return t * 2, at.is_grad_enabled()

    @at.enable_grad()
    def tracked(t):
        return t * 2

    out, mode = frozen(z)
    assert out.requires_grad is False and mode is False
    assert at.is_grad_enabled() is True
    with at.no_grad():
        assert tracked(z).requires_grad is True
        assert at.is_grad_enabled() is False
    # Nested decorated calls restore each level.
    @at.no_grad()
    def outer(t):
        inner = tracked(t)
        return inner, t * 2
    inner, plain = outer(z)
    assert inner.requires_grad and not plain.requires_grad
    assert at.is_grad_enabled() is True
    assert frozen.__name__ == "frozen"  # functools.wraps


def test_no_grad_and_enable_grad_as_bare_decorators():
    z = at.rand(3, requires_grad=True)

    @at.no_grad
    def frozen(t):
        return t * 2

    @at.enable_grad
    def tracked(t):
        return t * 2

    assert frozen(z).requires_grad is False
    with at.no_grad():
        assert tracked(z).requires_grad is True
    assert at.is_grad_enabled() is True


def test_grad_mode_restored_after_an_exception():
    @at.no_grad()
    def boom():
        raise ValueError("boom")

    with pytest.raises(ValueError):
        boom()
    assert at.is_grad_enabled() is True
    with pytest.raises(ValueError):
        with at.no_grad():
            raise ValueError("boom")
    assert at.is_grad_enabled() is True


def test_set_grad_enabled():
    z = at.rand(3, requires_grad=True)
    at.set_grad_enabled(False)
    try:
        assert not (z * 2).requires_grad
    finally:
        at.set_grad_enabled(True)
    assert (z * 2).requires_grad


def test_requires_grad_setter_on_non_leaf_raises():
    z = at.rand(3, requires_grad=True)
    y = z * 2
    with pytest.raises(RuntimeError, match="leaf"):
        y.requires_grad = False
    assert y.requires_grad


def test_requires_grad_only_for_floating_tensors():
    with pytest.raises(RuntimeError, match="floating point"):
        at.tensor([1, 2], requires_grad=True)
    t = at.tensor([1., 2.]).requires_grad_()
    assert t.requires_grad and t.is_leaf


def test_numpy_of_a_tensor_that_requires_grad_raises():
    z = at.rand(3, requires_grad=True)
    with pytest.raises(RuntimeError, match="detach"):
        z.numpy()
    with pytest.raises(RuntimeError):
        (z * 2).numpy()
    assert isinstance(z.detach().numpy(), np.ndarray)


def test_detach_shares_data_and_leaves_the_graph():
    z = at.tensor([1., 2., 3.], requires_grad=True)
    y = z * 2
    d = y.detach()
    assert d.requires_grad is False and d.grad_fn is None and d.is_leaf
    assert np.shares_memory(d.data, y.data)
    d.data[0] = 100.0
    assert y.data[0] == 100.0
    dz = z.detach()
    dz.data[1] = -1.0
    assert z.data[1] == -1.0
    # An op on the detached tensor does not reach z.
    (d * z).sum().backward()
    np.testing.assert_array_equal(z.grad.data, d.data)


# --- construction and dtypes ----------------------------------------------------------------------

def test_tensor_from_python_floats_is_float32():
    assert at.tensor([1., 2.]).dtype == np.float32
    assert at.tensor(1.5).dtype == np.float32
    assert at.tensor([[1.0, 2.0], [3.0, 4.0]]).shape == (2, 2)
    assert at.tensor([1, 2]).dtype == np.int64
    assert at.tensor([True, False]).dtype == np.bool_


def test_tensor_from_float64_ndarray_keeps_dtype_and_copies():
    arr = np.array([1.0, 2.0])
    t = at.tensor(arr)
    assert t.dtype == np.float64
    arr[0] = 9.0
    assert t.data[0] == 1.0
    assert at.tensor(arr, dtype=np.float32).dtype == np.float32


def test_from_numpy_shares_memory():
    arr = np.array([1.0, 2.0, 3.0])
    t = at.from_numpy(arr)
    assert t.dtype == np.float64
    arr[1] = 42.0
    assert t.data[1] == 42.0
    t.data[2] = -1.0
    assert arr[2] == -1.0
    assert np.shares_memory(t.data, arr)


@pytest.mark.parametrize("factory", [at.rand, at.randn, at.zeros, at.ones])
def test_factories(factory):
    t = factory(2, 3)
    assert t.shape == (2, 3) and t.dtype == np.float32
    assert t.requires_grad is False and t.is_leaf
    r = factory((4, 1), requires_grad=True)
    assert r.shape == (4, 1) and r.requires_grad and r.is_leaf
    d = factory(2, dtype=np.float64)
    assert d.dtype == np.float64


def test_factory_values():
    np.testing.assert_array_equal(at.zeros(2, 2).data, np.zeros((2, 2)))
    np.testing.assert_array_equal(at.ones(3).data, np.ones(3))
    u = at.rand(1000).data
    assert u.min() >= 0 and u.max() < 1 and 0.4 < u.mean() < 0.6
    n = at.randn(10000).data
    assert abs(n.mean()) < 0.05 and abs(n.std() - 1) < 0.05
    assert at.zeros_like(at.rand(2, 5)).shape == (2, 5)
    assert at.ones_like(at.rand(3), requires_grad=True).requires_grad


def test_manual_seed_makes_factories_reproducible():
    at.manual_seed(123)
    a = at.randn(5).data.copy()
    at.manual_seed(123)
    np.testing.assert_array_equal(at.randn(5).data, a)


def test_float32_by_default_through_a_network():
    model = at.models.resnet18(num_classes=3, width=4, stem="small")
    out = model(at.randn(2, 3, 8, 8))
    assert out.dtype == np.float32
    out.sum().backward()
    for name, p in model.named_parameters():
        assert p.dtype == np.float32 and p.grad.dtype == np.float32, name


def test_float64_kept_through_a_network():
    model = at.models.resnet18(num_classes=3, width=4, stem="small").double()
    x = at.randn(2, 3, 8, 8, dtype=np.float64, requires_grad=True)
    out = model(x)
    assert out.dtype == np.float64
    (out * out).sum().backward()
    assert x.grad.dtype == np.float64
    for name, p in model.named_parameters():
        assert p.dtype == np.float64 and p.grad is not None and p.grad.dtype == np.float64, name
    for name, b in model.named_buffers():
        expected = np.int64 if name.endswith("num_batches_tracked") else np.float64
        assert b.dtype == expected, name


# --- deep graphs ----------------------------------------------------------------------------------

def test_chain_of_ten_thousand_ops():
    x = at.tensor(np.float64(1.0), requires_grad=True)
    y = x
    for _ in range(10_000):
        y = y * 1.0001
    y.backward()
    np.testing.assert_allclose(y.item(), 1.0001 ** 10_000, rtol=1e-9)
    np.testing.assert_allclose(x.grad.item(), 1.0001 ** 10_000, rtol=1e-9)


def test_chain_of_ten_thousand_mixed_ops_with_shared_leaf():
    x = at.tensor([1.0, 2.0], requires_grad=True)
    y = x
    for _ in range(5_000):
        y = (y + x) - x * 0.5  # dy/dx grows by 0.5 each step
    y.sum().backward()
    np.testing.assert_allclose(x.grad.data, [1 + 0.5 * 5_000] * 2)
    del y  # freeing a deep graph must not overflow the stack either


# --- indexing -------------------------------------------------------------------------------------

def test_basic_slice_gradient():
    x = leaf(np.arange(20.0).reshape(4, 5))
    x[1:3, ::2].sum().backward()
    expected = np.zeros((4, 5))
    expected[1:3, ::2] = 1
    np.testing.assert_array_equal(x.grad.data, expected)
    x.grad = None
    x[2].backward(gradient=at.tensor(np.arange(5.0)))
    expected = np.zeros((4, 5))
    expected[2] = np.arange(5.0)
    np.testing.assert_array_equal(x.grad.data, expected)


def test_repeated_fancy_indices_add_up():
    x = leaf(np.arange(5.0))
    x[[0, 0, 3, 0, 3]].sum().backward()
    np.testing.assert_array_equal(x.grad.data, [3., 0., 0., 2., 0.])
    x.grad = None
    x[at.tensor([4, 4])].backward(gradient=at.tensor([1., 10.]))
    np.testing.assert_array_equal(x.grad.data, [0., 0., 0., 0., 11.])


def test_fancy_index_pairs_and_boolean_mask():
    X = np.arange(12.0).reshape(3, 4)
    x = leaf(X)
    x[np.array([0, 2, 0]), np.array([1, 3, 1])].sum().backward()
    expected = np.zeros((3, 4))
    expected[0, 1], expected[2, 3] = 2, 1
    np.testing.assert_array_equal(x.grad.data, expected)
    x.grad = None
    x[X > 6].sum().backward()
    np.testing.assert_array_equal(x.grad.data, (X > 6).astype(float))


# --- matmul and gradcheck -------------------------------------------------------------------------

MATMUL_SHAPES = [
    ((4,), (4,)),
    ((4,), (4, 3)),
    ((3, 4), (4,)),
    ((3, 4), (4, 5)),
    ((2, 3, 4), (4, 5)),
    ((3, 4), (2, 4, 5)),
    ((2, 3, 4), (2, 4, 5)),
    ((1, 3, 4), (2, 4, 5)),
    ((4,), (2, 4, 5)),
    ((2, 3, 4), (4,)),
]


@pytest.mark.parametrize("sa,sb", MATMUL_SHAPES)
def test_matmul_gradients_match_finite_differences(sa, sb):
    rng = np.random.default_rng(5)
    a = leaf(rng.standard_normal(sa))
    b = leaf(rng.standard_normal(sb))
    out = a @ b
    assert out.shape == np.matmul(a.data, b.data).shape
    assert gradcheck(lambda x, y: x @ y, (a, b))
    assert a.grad.shape == sa and b.grad.shape == sb


def test_matmul_gradient_values_2d():
    rng = np.random.default_rng(6)
    A, B, G = rng.standard_normal((3, 4)), rng.standard_normal((4, 5)), rng.standard_normal((3, 5))
    a, b = leaf(A), leaf(B)
    (a @ b).backward(gradient=at.tensor(G))
    np.testing.assert_allclose(a.grad.data, G @ B.T)
    np.testing.assert_allclose(b.grad.data, A.T @ G)


def test_gradcheck_of_composites():
    rng = np.random.default_rng(7)
    x = leaf(rng.uniform(0.5, 2.0, (3, 4)))
    w = leaf(rng.standard_normal((4,)))
    assert gradcheck(lambda x, w: ((x * w).exp() / (x + 1.0)).log().sum(axis=1), (x, w))
    assert gradcheck(lambda x: at.nn.functional.log_softmax(x, dim=1), (x,))
    assert gradcheck(lambda x: (x ** 3 - x ** 0.5).mean(), (x,))
    assert gradcheck(lambda x: x.T.reshape(2, 6)[1, ::2], (x,))


class _Square(Function):
    @staticmethod
    def forward(ctx, a):
        ctx.save_for_backward(a)
        return a * a

    @staticmethod
    def backward(ctx, g):
        (a,) = ctx.saved_tensors
        return (2 * a * g,)


class _SquareWrongAt12(_Square):
    """x**2 with a backward that is right everywhere except element (1, 2)."""

    @staticmethod
    def backward(ctx, g):
        (grad,) = _Square.backward(ctx, g)
        grad[1, 2] += 1.0
        return (grad,)


class _SquareNanAt12(_Square):
    """x**2 with a backward that gives NaN at element (1, 2)."""

    @staticmethod
    def backward(ctx, g):
        (grad,) = _Square.backward(ctx, g)
        grad[1, 2] = np.nan
        return (grad,)


def test_gradcheck_fails_a_nan_gradient():
    """NaN compares false with every tolerance; it must still count as a mismatch."""
    x = leaf(np.random.default_rng(8).standard_normal((3, 4)))
    report = check_gradients(_SquareNanAt12.apply, (x,))
    assert not report.passed and "(1, 2)" in report.worst
    with pytest.raises(GradcheckError, match=re.escape("input 0 (1, 2)")):
        gradcheck(_SquareNanAt12.apply, (x,))


def test_gradcheck_passes_a_correct_function_subclass():
    x = leaf(np.random.default_rng(8).standard_normal((3, 4)))
    assert gradcheck(_Square.apply, (x,))
    y = _Square.apply(x)
    assert y.grad_fn.name() == "_SquareBackward0"


def test_gradcheck_raises_naming_the_wrong_element():
    x = leaf(np.random.default_rng(8).standard_normal((3, 4)))
    with pytest.raises(GradcheckError, match=re.escape("input 0 (1, 2)")):
        gradcheck(_SquareWrongAt12.apply, (x,))
    report = check_gradients(_SquareWrongAt12.apply, (x,))
    assert not report.passed and report.elements == 12


def test_gradcheck_error_is_a_runtime_error():
    assert issubclass(GradcheckError, RuntimeError)


# --- partial graphs and nodes that get no gradient ------------------------------------------------

def test_unused_branch_is_fine():
    x = leaf([1., 2.])
    y = x * 2
    unused = x * 3 + 1  # noqa: F841  part of the graph that the loss does not reach
    y.sum().backward()
    np.testing.assert_array_equal(x.grad.data, [2., 2.])


def test_only_part_of_an_output_used():
    x = leaf([1., 2., 3.])
    w = leaf([4., 5., 6.])
    h = x * w
    h[0].backward()
    np.testing.assert_array_equal(x.grad.data, [4., 0., 0.])
    np.testing.assert_array_equal(w.grad.data, [1., 0., 0.])


class _FirstOnly(Function):
    """Passes its first input through; returns None for the second even when it requires grad."""

    @staticmethod
    def forward(ctx, a, b):
        return a.copy()

    @staticmethod
    def backward(ctx, g):
        return g, None


def test_node_that_receives_no_gradient_is_skipped():
    x = leaf([1., 2.])
    w = leaf([3., 4.])
    h = (w * 2) * w  # a sub-graph whose only consumer gives it no gradient
    _FirstOnly.apply(x, h).sum().backward()
    np.testing.assert_array_equal(x.grad.data, [1., 1.])
    assert w.grad is None


def test_node_with_one_silent_and_one_live_consumer():
    x = leaf([1., 2.])
    w = leaf([3., 4.])
    h = w * 2
    (_FirstOnly.apply(x, h) + h).sum().backward()
    np.testing.assert_array_equal(x.grad.data, [1., 1.])
    np.testing.assert_array_equal(w.grad.data, [2., 2.])
    # and in the other order of consumers
    x.grad = w.grad = None
    h = w * 2
    (h + _FirstOnly.apply(x, h)).sum().backward()
    np.testing.assert_array_equal(w.grad.data, [2., 2.])


def test_diamond_graph_accumulates_before_running_a_node():
    x = leaf([1., 2.])
    h = x * x          # used by two consumers
    y = h * 3 + h.exp()
    y.sum().backward()
    X = np.array([1., 2.])
    np.testing.assert_allclose(x.grad.data, (3 + np.exp(X ** 2)) * 2 * X, rtol=1e-6)


def test_same_non_leaf_used_twice_in_one_op():
    x = leaf([1., 2.])
    h = x * 3
    (h * h).sum().backward()  # d/dx (3x)^2 = 18 x
    np.testing.assert_array_equal(x.grad.data, [18., 36.])


def test_second_backward_through_a_graph_that_saved_nothing_works_as_in_torch():
    # torch raises only when a node needs saved tensors that were freed; AddBackward saves none.
    x = at.tensor([1.0, 2.0], requires_grad=True)
    y = (x + 1).sum()
    y.backward()
    y.backward()
    np.testing.assert_array_equal(x.grad.data, [2.0, 2.0])
    z = (x * x).sum()
    z.backward()
    with pytest.raises(RuntimeError, match="retain_graph"):
        z.backward()


def test_a_custom_function_returning_one_array_for_two_inputs_does_not_alias_grads():
    """A leaf may keep a fresh gradient without a copy, but not one that is also on its way
    to another node: later accumulation into the leaf would change that other gradient."""

    class Twice(Function):
        @staticmethod
        def forward(ctx, a, b):
            return 2 * (a + b)

        @staticmethod
        def backward(ctx, g):
            h = 2 * g
            return h, h

    a = at.tensor([1.0, 2.0], requires_grad=True)
    c = at.tensor([3.0, 4.0], requires_grad=True)
    b = c * 1.0
    loss = (a * b).sum() + Twice.apply(a, b).sum()
    loss.backward()
    np.testing.assert_array_equal(a.grad.data, [3.0 + 2.0, 4.0 + 2.0])
    np.testing.assert_array_equal(c.grad.data, [1.0 + 2.0, 2.0 + 2.0])


def test_gradcheck_names_the_worst_element_over_all_inputs():
    class OffBy(Function):
        """d/da is 1% off, d/db is 100x off: the error must name b."""

        @staticmethod
        def forward(ctx, a, b):
            return a + b

        @staticmethod
        def backward(ctx, g):
            return g * 1.01, g * 100.0

    a = at.tensor(np.ones(3), requires_grad=True)
    b = at.tensor(np.ones(3), requires_grad=True)
    with pytest.raises(GradcheckError, match="input 1"):
        gradcheck(lambda a, b: OffBy.apply(a, b), (a, b))


def test_repr_prints_floats_as_torch_does():
    assert repr(at.tensor([0.1, 0.25])) == "tensor([0.1000, 0.2500])"
    assert repr(at.tensor(3.14159)) == "tensor(3.1416)"
    assert repr(at.tensor([1e-5, 1.0])) == "tensor([1.0000e-05, 1.0000e+00])"
    assert repr(at.tensor([2.0, 3.0])) == "tensor([2., 3.])"


def test_pow_edge_cases_match_torch():
    a = at.tensor([0.0, 2.0], requires_grad=True)
    (a ** 0).sum().backward()
    np.testing.assert_array_equal(a.grad.data, [0.0, 0.0])  # not nan at a = 0
    base = at.tensor([-2.0, 3.0], requires_grad=True)
    expo = at.tensor([2.0, 2.0], requires_grad=True)
    y = base ** expo
    np.testing.assert_array_equal(y.data, [4.0, 9.0])  # a negative base is fine in forward
    y.sum().backward()
    np.testing.assert_allclose(base.grad.data, [-4.0, 6.0])
    assert np.isnan(expo.grad.data[0]) and np.isclose(expo.grad.data[1], 9 * np.log(3))
    c = at.tensor([1.0, 2.0], requires_grad=True)
    z = 2 ** c
    z.sum().backward()
    np.testing.assert_allclose(z.data, [2.0, 4.0])
    np.testing.assert_allclose(c.grad.data, [2 * np.log(2), 4 * np.log(2)], rtol=1e-6)


def test_tensor_exponent_gradcheck():
    a = at.tensor(np.array([0.5, 1.5, 2.0]), requires_grad=True)
    b = at.tensor(np.array([1.5, -0.5, 2.5]), requires_grad=True)
    assert gradcheck(lambda a, b: a ** b, (a, b))

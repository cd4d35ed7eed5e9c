"""SGD against a NumPy re-implementation of torch.optim.SGD's update rule (torch's
``_single_tensor_sgd``), written here independently of autotrain's optimizer."""

from __future__ import annotations

import math

import numpy as np
import pytest

import autotrain as at
from autotrain import nn
from autotrain.nn import functional as F


@pytest.fixture(autouse=True)
def _seed():
    at.manual_seed(0)


def reference_sgd(params, grads_per_step, lr, momentum=0.0, dampening=0.0, weight_decay=0.0,
                  nesterov=False):
    """torch's rule: None grads are skipped; the first momentum step copies the gradient."""
    params = [p.copy() for p in params]
    bufs = [None] * len(params)
    for grads in grads_per_step:
        for i, g in enumerate(grads):
            if g is None:
                continue
            d_p = g
            if weight_decay != 0:
                d_p = d_p + weight_decay * params[i]
            if momentum != 0:
                if bufs[i] is None:
                    bufs[i] = d_p.copy()
                else:
                    bufs[i] = momentum * bufs[i] + (1 - dampening) * d_p
                d_p = d_p + momentum * bufs[i] if nesterov else bufs[i]
            params[i] = params[i] - lr * d_p
    return params, bufs


HYPER = [
    dict(lr=0.1),
    dict(lr=0.05, momentum=0.9),
    dict(lr=0.05, momentum=0.9, dampening=0.3),
    dict(lr=0.05, momentum=0.8, nesterov=True),
    dict(lr=0.1, weight_decay=0.01),
    dict(lr=0.02, momentum=0.9, weight_decay=5e-4, nesterov=True),
    dict(lr=0.02, momentum=0.5, dampening=0.5, weight_decay=0.1),
]


@pytest.mark.parametrize("hyper", HYPER, ids=lambda h: ",".join(f"{k}={v}" for k, v in h.items()))
def test_sgd_matches_torch_rule_over_five_steps(hyper):
    rng = np.random.default_rng(1)
    init = [rng.standard_normal((3, 4)), rng.standard_normal(5)]
    grads = [[rng.standard_normal(p.shape) for p in init] for _ in range(5)]
    params = [nn.Parameter(p.copy()) for p in init]
    opt = at.optim.SGD(params, **hyper)
    for step_grads in grads:
        for p, g in zip(params, step_grads):
            p.grad = at.tensor(g)
        opt.step()
    expected, bufs = reference_sgd(init, grads, **hyper)
    for p, e in zip(params, expected):
        np.testing.assert_allclose(p.data, e, rtol=1e-12, atol=1e-14)
    if hyper.get("momentum"):
        for i, b in enumerate(bufs):
            np.testing.assert_allclose(opt.state[i]["momentum_buffer"], b, rtol=1e-12, atol=1e-14)


def test_sgd_float32_matches_reference_in_float32():
    rng = np.random.default_rng(2)
    init = rng.standard_normal((4, 4)).astype(np.float32)
    grads = [[rng.standard_normal((4, 4)).astype(np.float32)] for _ in range(5)]
    p = nn.Parameter(init.copy())
    opt = at.optim.SGD([p], lr=0.01, momentum=0.9, weight_decay=1e-4)
    for (g,) in grads:
        p.grad = at.tensor(g)
        opt.step()
    assert p.dtype == np.float32 and opt.state[0]["momentum_buffer"].dtype == np.float32
    (expected,), _ = reference_sgd([init], grads, lr=0.01, momentum=0.9, weight_decay=1e-4)
    np.testing.assert_allclose(p.data, expected, rtol=1e-5, atol=1e-6)


def test_sgd_step_does_not_modify_the_gradient():
    p = nn.Parameter(np.ones(3))
    p.grad = at.tensor(np.full(3, 2.0))
    opt = at.optim.SGD([p], lr=0.1, momentum=0.9, weight_decay=0.5, nesterov=True)
    opt.step()
    opt.step()
    np.testing.assert_array_equal(p.grad.data, [2.0, 2.0, 2.0])


def test_sgd_on_a_real_backward():
    lin = nn.Linear(3, 2).double()
    X = np.random.default_rng(3).standard_normal((4, 3))
    w0, b0 = lin.weight.data.copy(), lin.bias.data.copy()
    opt = at.optim.SGD(lin.parameters(), lr=0.5)
    (lin(at.tensor(X)) ** 2).mean().backward()
    Y = X @ w0.T + b0
    gY = 2 * Y / Y.size
    opt.step()
    np.testing.assert_allclose(lin.weight.data, w0 - 0.5 * gY.T @ X, rtol=1e-12)
    np.testing.assert_allclose(lin.bias.data, b0 - 0.5 * gY.sum(axis=0), rtol=1e-12)


def test_parameter_without_grad_is_skipped_entirely():
    a = nn.Parameter(np.array([1.0, 2.0]))
    b = nn.Parameter(np.array([3.0, 4.0]))
    opt = at.optim.SGD([a, b], lr=0.1, momentum=0.9, weight_decay=0.5)
    a.grad = at.tensor([1.0, 1.0])
    opt.step()  # b.grad is None: no weight decay, no momentum buffer
    np.testing.assert_array_equal(b.data, [3.0, 4.0])
    assert "momentum_buffer" not in opt.state[1]
    assert list(opt.state_dict()["state"]) == [0]
    b.grad = at.tensor([1.0, -1.0])
    opt.step()
    # b's first real step: the buffer starts as its (decayed) gradient, not 0.9 * 0 + g.
    g_b = np.array([1.0, -1.0]) + 0.5 * np.array([3.0, 4.0])
    np.testing.assert_allclose(opt.state[1]["momentum_buffer"], g_b, rtol=1e-15)
    np.testing.assert_allclose(b.data, np.array([3.0, 4.0]) - 0.1 * g_b, rtol=1e-15)
    grads = [[np.array([1.0, 1.0]), None], [np.array([1.0, 1.0]), np.array([1.0, -1.0])]]
    (ea, eb), _ = reference_sgd([np.array([1.0, 2.0]), np.array([3.0, 4.0])], grads,
                                lr=0.1, momentum=0.9, weight_decay=0.5)
    np.testing.assert_allclose(a.data, ea, rtol=1e-15)
    np.testing.assert_allclose(b.data, eb, rtol=1e-15)


def test_frozen_parameters_in_the_optimizer_are_not_touched():
    model = at.models.resnet18(num_classes=3, width=4, stem="small")
    for p in model.parameters():
        p.requires_grad = False
    model.fc = nn.Linear(32, 3)
    opt = at.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, weight_decay=1e-2)
    before = {n: p.data.copy() for n, p in model.named_parameters()}
    model(at.rand(2, 3, 8, 8)).sum().backward()
    opt.step()
    changed = [n for n, p in model.named_parameters() if not np.array_equal(p.data, before[n])]
    assert changed == ["fc.weight", "fc.bias"]


def test_param_groups_with_different_lr():
    rng = np.random.default_rng(4)
    backbone = nn.Parameter(rng.standard_normal(3))
    head = nn.Parameter(rng.standard_normal(2))
    b0, h0 = backbone.data.copy(), head.data.copy()
    opt = at.optim.SGD([{"params": [backbone]}, {"params": [head], "lr": 0.5, "momentum": 0.0}],
                       lr=0.01, momentum=0.9)
    assert opt.param_groups[0]["lr"] == 0.01 and opt.param_groups[0]["momentum"] == 0.9
    assert opt.param_groups[1]["lr"] == 0.5 and opt.param_groups[1]["momentum"] == 0.0
    assert opt.param_groups[1]["weight_decay"] == 0.0  # defaults fill the rest
    gb, gh = rng.standard_normal(3), rng.standard_normal(2)
    backbone.grad, head.grad = at.tensor(gb), at.tensor(gh)
    opt.step()
    np.testing.assert_allclose(backbone.data, b0 - 0.01 * gb, rtol=1e-15)
    np.testing.assert_allclose(head.data, h0 - 0.5 * gh, rtol=1e-15)
    assert "momentum_buffer" in opt.state[0] and "momentum_buffer" not in opt.state[1]
    # A changed group lr (what a schedule does) takes effect on the next step.
    opt.param_groups[1]["lr"] = 0.25
    h1 = head.data.copy()
    opt.step()
    np.testing.assert_allclose(head.data, h1 - 0.25 * gh, rtol=1e-15)


def test_add_param_group():
    a, b = nn.Parameter(np.zeros(2)), nn.Parameter(np.zeros(2))
    opt = at.optim.SGD([a], lr=0.1)
    opt.add_param_group({"params": [b], "lr": 1.0})
    a.grad, b.grad = at.tensor(np.ones(2)), at.tensor(np.ones(2))
    opt.step()
    np.testing.assert_allclose(a.data, [-0.1, -0.1])
    np.testing.assert_allclose(b.data, [-1.0, -1.0])


# --- state_dict: resume in a new optimizer over a fresh model -------------------------------------

def _batches(n):
    rng = np.random.default_rng(5)
    return [(rng.standard_normal((4, 3, 8, 8)).astype(np.float32), rng.integers(0, 3, 4)) for _ in range(n)]


def _train(model, opt, batches):
    for x, y in batches:
        opt.zero_grad()
        F.cross_entropy(model(at.tensor(x)), y).backward()
        opt.step()


def _groups(model, **kw):
    head = [p for n, p in model.named_parameters() if n.startswith("fc.")]
    body = [p for n, p in model.named_parameters() if not n.startswith("fc.")]
    return at.optim.SGD([{"params": body}, {"params": head, "lr": 0.1}], **kw)


def test_state_dict_resume_into_a_new_optimizer_is_bit_for_bit():
    batches = _batches(6)
    hyper = dict(lr=0.02, momentum=0.9, weight_decay=5e-4, nesterov=True)

    at.manual_seed(0)
    model = at.models.resnet18(num_classes=3, width=4, stem="small")
    opt = _groups(model, **hyper)
    _train(model, opt, batches[:3])
    weights = model.state_dict()
    saved = opt.state_dict()
    # As if round-tripped through a file: position keys as strings, arrays copied.
    saved = {"state": {str(i): {k: np.array(v) for k, v in s.items()} for i, s in saved["state"].items()},
             "param_groups": [dict(g) for g in saved["param_groups"]]}
    _train(model, opt, batches[3:])  # the uninterrupted run

    at.manual_seed(1234)  # a fresh model with different initial weights, then loaded
    resumed = at.models.resnet18(num_classes=3, width=4, stem="small")
    resumed.load_state_dict(weights)
    opt2 = _groups(resumed, lr=0.5, momentum=0.1)  # hyper-parameters come from the state
    opt2.load_state_dict(saved)
    assert [g["lr"] for g in opt2.param_groups] == [0.02, 0.1]
    assert opt2.param_groups[0]["nesterov"] is True and opt2.param_groups[0]["weight_decay"] == 5e-4
    _train(resumed, opt2, batches[3:])

    final, final2 = model.state_dict(), resumed.state_dict()
    assert list(final) == list(final2)
    for k in final:
        assert np.array_equal(final[k], final2[k]), k  # bit for bit, buffers included
    s1, s2 = opt.state_dict()["state"], opt2.state_dict()["state"]
    assert sorted(s1) == sorted(s2) and len(s1) == 62
    for i in s1:
        assert np.array_equal(s1[i]["momentum_buffer"], s2[i]["momentum_buffer"]), i


def test_state_dict_is_a_copy_and_lists_positions():
    a, b = nn.Parameter(np.zeros(2)), nn.Parameter(np.zeros(3))
    opt = at.optim.SGD([{"params": [a]}, {"params": [b], "lr": 0.5}], lr=0.1, momentum=0.9)
    a.grad, b.grad = at.tensor(np.ones(2)), at.tensor(np.ones(3))
    opt.step()
    sd = opt.state_dict()
    assert [g["params"] for g in sd["param_groups"]] == [[0], [1]]
    assert sd["param_groups"][1]["lr"] == 0.5
    sd["state"][0]["momentum_buffer"][:] = 99.0
    assert not np.any(opt.state[0]["momentum_buffer"] == 99.0)


def test_load_state_dict_rejects_a_different_layout():
    a, b = nn.Parameter(np.zeros(2)), nn.Parameter(np.zeros(3))
    opt = at.optim.SGD([a, b], lr=0.1, momentum=0.9)
    a.grad, b.grad = at.tensor(np.ones(2)), at.tensor(np.ones(3))
    opt.step()
    sd = opt.state_dict()
    with pytest.raises(ValueError):
        at.optim.SGD([a], lr=0.1).load_state_dict(sd)
    with pytest.raises(ValueError, match="shape"):
        at.optim.SGD([b, a], lr=0.1).load_state_dict(sd)


# --- argument validation --------------------------------------------------------------------------

def _p():
    return [nn.Parameter(np.zeros(2))]


@pytest.mark.parametrize("kwargs", [
    dict(lr=-0.1),
    dict(lr=float("nan")),
    dict(lr=float("inf")),
    dict(lr=0.1, momentum=-0.5),
    dict(lr=0.1, weight_decay=-1e-4),
    dict(lr=0.1, nesterov=True),                                 # nesterov needs momentum
    dict(lr=0.1, momentum=0.9, dampening=0.1, nesterov=True),    # ... and zero dampening
])
def test_invalid_arguments_raise_value_error(kwargs):
    with pytest.raises(ValueError):
        at.optim.SGD(_p(), **kwargs)


def test_empty_or_non_leaf_parameters_raise_value_error():
    with pytest.raises(ValueError):
        at.optim.SGD([], lr=0.1)
    x = at.tensor([1.0], requires_grad=True)
    with pytest.raises(ValueError, match="leaf"):
        at.optim.SGD([x * 2], lr=0.1)


def test_zero_learning_rate_is_allowed_as_in_torch():
    p = nn.Parameter(np.ones(2))
    opt = at.optim.SGD([p], lr=0.0, momentum=0.9)
    p.grad = at.tensor(np.ones(2))
    opt.step()
    np.testing.assert_array_equal(p.data, [1.0, 1.0])


def test_large_update_in_blocks_and_threads_equals_whole_array_rule(monkeypatch):
    """Above PARALLEL_MIN elements the update runs in cache-sized blocks over threads; a
    channels-last weight (its gradient in the same memory order) and a C-order one must come
    out bit-identical to the rule applied to whole arrays."""
    from autotrain.optim import sgd as sgd_module

    monkeypatch.setattr(sgd_module.os, "cpu_count", lambda: 2)  # the threaded path, on any runner

    rng = np.random.default_rng(7)
    shape_cl = (64, 3, 3, 400)  # (O, KH, KW, C) memory viewed as (O, C, KH, KW)
    w = nn.Parameter(rng.standard_normal(shape_cl).astype(np.float32).transpose(0, 3, 1, 2))
    b = nn.Parameter(rng.standard_normal(sgd_module.PARALLEL_MIN + 123).astype(np.float32))
    params = [w, b]
    ref = [p.data.copy() for p in params]
    bufs = [None, None]
    opt = at.optim.SGD(params, lr=0.05, momentum=0.9, weight_decay=1e-3, nesterov=True)
    for step in range(3):
        grads = [rng.standard_normal(p.shape).astype(np.float32) for p in params]
        grads[0] = np.ascontiguousarray(grads[0].transpose(0, 2, 3, 1)).transpose(0, 3, 1, 2)
        for p, g in zip(params, grads):
            p.grad = at.from_numpy(g)
        opt.step()
        for k, g in enumerate(grads):
            d = g + np.float32(1e-3) * ref[k]
            bufs[k] = d.copy() if bufs[k] is None else bufs[k] * np.float32(0.9) + d
            d = d + np.float32(0.9) * bufs[k]
            ref[k] = ref[k] - np.float32(0.05) * d
        for p, r in zip(params, ref):
            np.testing.assert_array_equal(p.data, r)


def test_a_parameter_in_two_groups_or_a_state_past_the_end_is_refused():
    p, q = nn.Parameter(np.zeros(2)), nn.Parameter(np.zeros(2))
    with pytest.raises(ValueError, match="more than one parameter group"):
        at.optim.SGD([{"params": [p]}, {"params": [q, p]}], lr=0.1)
    opt = at.optim.SGD([p], lr=0.1, momentum=0.9)
    with pytest.raises(ValueError, match="position 3"):
        opt.load_state_dict({"state": {3: {"momentum_buffer": np.zeros(2)}},
                             "param_groups": opt.state_dict()["param_groups"]})


def test_a_gradient_in_another_memory_order_gives_the_same_update_and_is_left_alone():
    """A gradient set by hand in another memory order (Fortran, against a C-order parameter)
    cannot be walked in blocks with it: the whole-array rule gives torch's update anyway."""
    rng = np.random.default_rng(3)
    p = nn.Parameter(rng.standard_normal((6, 5)).astype(np.float32))
    ref_p = p.data.copy()
    opt = at.optim.SGD([p], lr=0.1, momentum=0.9)
    buf = None
    for _ in range(3):
        g = np.asfortranarray(rng.standard_normal((6, 5)).astype(np.float32))
        g_before = g.copy()
        p.grad = at.from_numpy(g)
        assert p.grad.data.strides != p.data.strides
        opt.step()
        buf = g_before.copy() if buf is None else buf * np.float32(0.9) + g_before
        ref_p = ref_p - np.float32(0.1) * buf
        np.testing.assert_array_equal(p.data, ref_p)
        np.testing.assert_array_equal(p.grad.data, g_before)


# --- learning-rate schedules (values written out by hand, not computed by the code under test)

def test_constant_and_step_schedules():
    from autotrain.optim import scheduled_lr

    assert [scheduled_lr(0.1, "constant", s, 10, 5) for s in (0, 9, 49)] == [0.1, 0.1, 0.1]
    # step_size 2 epochs of 10 steps, gamma 0.5: epochs 0-1 at 0.1, 2-3 at 0.05, 4 at 0.025.
    got = [scheduled_lr(0.1, "step", s, 10, 5, step_size=2, gamma=0.5) for s in (0, 19, 20, 39, 40, 49)]
    assert got == pytest.approx([0.1, 0.1, 0.05, 0.05, 0.025, 0.025], rel=1e-15)


def test_linear_warmup_then_cosine():
    from autotrain.optim import scheduled_lr

    # 1 warmup epoch of 4 steps: 0.025, 0.05, 0.075, 0.1; then cosine over the 8 remaining steps.
    got = [scheduled_lr(0.1, "cosine", s, 4, 3, warmup_epochs=1) for s in range(12)]
    warm = [0.025, 0.05, 0.075, 0.1]
    cosine = [0.1 * 0.5 * (1 + math.cos(math.pi * k / 8)) for k in range(8)]
    assert got == pytest.approx(warm + cosine, rel=1e-12)
    assert got[4] == pytest.approx(0.1) and got[8] == pytest.approx(0.05)  # start and halfway
    assert scheduled_lr(0.1, "cosine", 12, 4, 3, warmup_epochs=1) == pytest.approx(0.0, abs=1e-18)  # past the end
    # Warmup applies to the step schedule too.
    assert scheduled_lr(0.2, "step", 1, 4, 3, warmup_epochs=1, step_size=1, gamma=0.5) == pytest.approx(0.1)
    with pytest.raises(ValueError, match="unknown schedule 'poly'"):
        scheduled_lr(0.1, "poly", 0, 4, 3)

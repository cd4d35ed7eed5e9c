"""nn semantics: torchvision's ResNet-18 layout, state_dict loading, modes, casts, BatchNorm2d,
conv2d geometry and values, cross-entropy. References are plain NumPy written here."""

from __future__ import annotations

import numpy as np
import pytest

import autotrain as at
from autotrain import nn
from autotrain.autograd import gradcheck
from autotrain.nn import functional as F

BN_KEYS = ("weight", "bias", "running_mean", "running_var", "num_batches_tracked")


@pytest.fixture(autouse=True)
def _seed():
    at.manual_seed(0)


def torchvision_resnet18_layout(width=64, num_classes=1000, in_channels=3, stem_kernel=7):
    """(key, shape) of torchvision's resnet18 state_dict, in its order, by its layout rules."""
    out = [("conv1.weight", (width, in_channels, stem_kernel, stem_kernel))]

    def bn(prefix, c):
        return [(f"{prefix}.{k}", () if k == "num_batches_tracked" else (c,)) for k in BN_KEYS]

    out += bn("bn1", width)
    cin = width
    for layer in range(1, 5):
        planes = width * 2 ** (layer - 1)
        for block in range(2):
            p = f"layer{layer}.{block}"
            block_in = cin if block == 0 else planes
            out += [(f"{p}.conv1.weight", (planes, block_in, 3, 3))] + bn(f"{p}.bn1", planes)
            out += [(f"{p}.conv2.weight", (planes, planes, 3, 3))] + bn(f"{p}.bn2", planes)
            if block == 0 and layer > 1:  # stride 2 and a channel change: a 1x1 projection
                out += [(f"{p}.downsample.0.weight", (planes, cin, 1, 1))] + bn(f"{p}.downsample.1", planes)
        cin = planes
    out += [("fc.weight", (num_classes, 8 * width)), ("fc.bias", (num_classes,))]
    return out


@pytest.fixture(scope="module")
def resnet():
    at.manual_seed(0)
    return at.models.resnet18()


# --- ResNet-18 layout -----------------------------------------------------------------------------

def test_resnet18_state_dict_keys_are_torchvision_keys_in_order(resnet):
    expected = torchvision_resnet18_layout()
    assert len(expected) == 122
    assert list(resnet.state_dict().keys()) == [k for k, _ in expected]


def test_resnet18_state_dict_shapes_and_dtypes(resnet):
    sd = resnet.state_dict()
    for key, shape in torchvision_resnet18_layout():
        assert sd[key].shape == shape, key
        expected = np.int64 if key.endswith("num_batches_tracked") else np.float32
        assert sd[key].dtype == expected, key
        assert isinstance(sd[key], np.ndarray), key


def test_resnet18_parameter_count(resnet):
    params = list(resnet.parameters())
    assert sum(p.numel() for p in params) == 11_689_512
    assert len(params) == 62
    names = [n for n, _ in resnet.named_parameters()]
    assert names == [k for k, _ in torchvision_resnet18_layout()
                     if not k.endswith(("running_mean", "running_var", "num_batches_tracked"))]


def test_resnet18_initialisation_follows_torchvision(resnet):
    # Conv: kaiming normal, fan_out, relu gain. BN: weight 1, bias 0, running stats 0 / 1.
    w = resnet.layer3[0].conv1.weight.data
    std = np.sqrt(2.0 / (w.shape[0] * 9))
    assert abs(w.std() / std - 1) < 0.05 and abs(w.mean()) < 0.1 * std
    assert np.all(resnet.bn1.weight.data == 1) and np.all(resnet.bn1.bias.data == 0)
    assert np.all(resnet.bn1.running_mean.data == 0) and np.all(resnet.bn1.running_var.data == 1)
    bound = 1 / np.sqrt(512)
    assert np.abs(resnet.fc.weight.data).max() <= bound


def test_resnet18_forward_shape(resnet):
    with at.no_grad():
        out = resnet.eval()(at.rand(2, 3, 64, 64))
    resnet.train()
    assert out.shape == (2, 1000) and out.dtype == np.float32


def test_small_stem_has_a_3x3_conv1_and_the_same_keys():
    model = at.models.resnet18(num_classes=10, width=8, stem="small")
    layout = torchvision_resnet18_layout(width=8, num_classes=10, stem_kernel=3)
    sd = model.state_dict()
    assert [(k, v.shape) for k, v in sd.items()] == layout
    assert model.conv1.kernel_size == (3, 3) and model.conv1.stride == (1, 1)
    assert model.conv1.padding == (1, 1)
    big = at.models.resnet18(num_classes=10, width=8)
    assert list(big.state_dict()) == list(sd)
    out = model(at.rand(2, 3, 8, 8))
    assert out.shape == (2, 10)


def test_invalid_stem_raises():
    with pytest.raises(ValueError, match="stem"):
        at.models.resnet18(stem="tiny")


# --- load_state_dict ------------------------------------------------------------------------------

def small_model(**kw):
    return at.models.resnet18(num_classes=5, width=4, stem="small", **kw)


def test_load_state_dict_roundtrip_copies_values_into_the_same_tensors():
    a, b = small_model(), small_model()
    params_before = {n: p for n, p in b.named_parameters()}
    sd = a.state_dict()
    missing, unexpected = b.load_state_dict(sd)
    assert missing == [] and unexpected == []
    for k, v in b.state_dict().items():
        np.testing.assert_array_equal(v, sd[k])
    for n, p in b.named_parameters():
        assert p is params_before[n]  # identity kept: an optimizer built earlier still holds them
        assert not np.shares_memory(p.data, sd[n])  # a copy, not an alias of the source
    x = at.rand(2, 3, 8, 8)
    a.eval(), b.eval()
    np.testing.assert_array_equal(a(x).data, b(x).data)


def test_state_dict_is_a_copy():
    m = small_model()
    sd = m.state_dict()
    sd["fc.bias"][:] = 123.0
    assert not np.any(m.fc.bias.data == 123.0)


def test_load_state_dict_strict_lists_every_problem_in_one_error():
    m = small_model()
    sd = m.state_dict()
    del sd["fc.bias"]
    del sd["layer2.0.downsample.1.running_var"]
    sd["head.weight"] = np.zeros(3, dtype=np.float32)
    sd["conv1.weight"] = np.zeros((4, 3, 7, 7), dtype=np.float32)
    before = m.state_dict()
    with pytest.raises(RuntimeError) as info:
        m.load_state_dict(sd)
    msg = str(info.value)
    for key in ("fc.bias", "layer2.0.downsample.1.running_var", "head.weight", "conv1.weight"):
        assert key in msg, key
    assert "(4, 3, 7, 7)" in msg and "(4, 3, 3, 3)" in msg
    for k, v in m.state_dict().items():  # nothing was loaded
        np.testing.assert_array_equal(v, before[k])


def test_load_state_dict_non_strict_returns_missing_and_unexpected():
    src, m = small_model(), small_model()
    sd = src.state_dict()
    del sd["fc.weight"], sd["fc.bias"]
    sd["extra"] = np.ones(2, dtype=np.float32)
    fc_before = m.fc.weight.data.copy()
    missing, unexpected = m.load_state_dict(sd, strict=False)
    assert missing == ["fc.weight", "fc.bias"]
    assert unexpected == ["extra"]
    np.testing.assert_array_equal(m.conv1.weight.data, src.conv1.weight.data)
    np.testing.assert_array_equal(m.fc.weight.data, fc_before)


def test_load_state_dict_size_mismatch_raises_even_when_not_strict():
    m = small_model()
    sd = m.state_dict()
    sd["fc.weight"] = np.zeros((7, 32), dtype=np.float32)
    with pytest.raises(RuntimeError, match="fc.weight"):
        m.load_state_dict(sd, strict=False)


def test_load_state_dict_keeps_the_model_dtype():
    m = small_model()
    sd = {k: v.astype(np.float64) if v.dtype == np.float32 else v for k, v in m.state_dict().items()}
    m.load_state_dict(sd)
    assert m.fc.weight.dtype == np.float32
    assert m.bn1.num_batches_tracked.dtype == np.int64


# --- module registration --------------------------------------------------------------------------

def test_replacing_fc_re_registers_it():
    model = small_model()
    old = model.fc
    model.fc = nn.Linear(32, 10)
    sd = model.state_dict()
    assert sd["fc.weight"].shape == (10, 32) and sd["fc.bias"].shape == (10,)
    assert list(sd) == [k for k, _ in torchvision_resnet18_layout(width=4, num_classes=10, stem_kernel=3)]
    params = list(model.parameters())
    assert any(p is model.fc.weight for p in params) and not any(p is old.weight for p in params)
    assert model(at.rand(2, 3, 8, 8)).shape == (2, 10)  # batch 2: BatchNorm needs 2 values at 1x1


def test_replacing_a_module_keeps_its_place_in_the_state_dict():
    model = small_model()
    keys = list(model.state_dict())
    model.conv1 = nn.Conv2d(1, 4, 3, padding=1, bias=False)  # e.g. grayscale input
    assert list(model.state_dict()) == keys
    assert model.state_dict()["conv1.weight"].shape == (4, 1, 3, 3)


def test_plain_attributes_are_not_registered():
    lin = nn.Linear(2, 3)
    lin.note = "hello"
    lin.scale = at.tensor(2.0)
    assert list(lin.state_dict()) == ["weight", "bias"]
    assert lin.note == "hello"


def test_requires_grad_false_freezes_the_model_and_records_no_graph():
    model = small_model().requires_grad_(False)
    assert not any(p.requires_grad for p in model.parameters())
    out = model(at.rand(2, 3, 8, 8))
    assert out.requires_grad is False and out.grad_fn is None


def test_frozen_backbone_with_a_new_head_only_trains_the_head():
    model = small_model()
    for p in model.parameters():
        p.requires_grad = False
    model.fc = nn.Linear(32, 3)
    out = model(at.rand(2, 3, 8, 8))
    assert out.requires_grad and out.grad_fn is not None
    feats = model.features(at.rand(2, 3, 8, 8))
    assert feats.requires_grad is False  # nothing before the head is recorded
    out.sum().backward()
    with_grad = [n for n, p in model.named_parameters() if p.grad is not None]
    assert with_grad == ["fc.weight", "fc.bias"]


def test_train_and_eval_propagate_to_every_submodule():
    model = small_model()
    assert all(m.training for m in model.modules())
    assert model.eval() is model
    assert not any(m.training for m in model.modules())
    model.train()
    assert all(m.training for m in model.modules())
    model.train(False)
    assert not model.layer4[1].bn2.training


def test_named_modules_and_buffers_follow_torch_names():
    model = small_model()
    names = [n for n, _ in model.named_modules()]
    assert names[:4] == ["", "conv1", "bn1", "relu"]
    assert "layer2.0.downsample.0" in names and "layer1.0.downsample" not in names
    bufs = [n for n, _ in model.named_buffers()]
    assert len(bufs) == 20 * 3 and bufs[:3] == ["bn1.running_mean", "bn1.running_var", "bn1.num_batches_tracked"]


# --- BatchNorm2d ----------------------------------------------------------------------------------

def bn_with_random_affine(c=3, **kw):
    bn = nn.BatchNorm2d(c, **kw)
    rng = np.random.default_rng(10)
    bn.weight.data = rng.uniform(0.5, 1.5, c).astype(np.float32)
    bn.bias.data = rng.standard_normal(c).astype(np.float32)
    return bn


def test_batchnorm_defaults():
    bn = nn.BatchNorm2d(4)
    assert bn.eps == 1e-5 and bn.momentum == 0.1
    assert list(bn.state_dict()) == [*BN_KEYS]
    assert bn.num_batches_tracked.dtype == np.int64 and bn.num_batches_tracked.shape == ()


def test_batchnorm_train_uses_batch_statistics_and_updates_running_stats():
    bn = bn_with_random_affine()
    rng = np.random.default_rng(11)
    X = (rng.standard_normal((4, 3, 5, 5)) * 2 + 3).astype(np.float32)
    out = bn(at.tensor(X))
    w, b = bn.weight.data.reshape(1, 3, 1, 1), bn.bias.data.reshape(1, 3, 1, 1)
    Xd = X.astype(np.float64)
    mean = Xd.mean(axis=(0, 2, 3))
    var_biased = Xd.var(axis=(0, 2, 3))
    var_unbiased = Xd.var(axis=(0, 2, 3), ddof=1)  # n = 4*5*5 = 100
    expected = (Xd - mean.reshape(1, 3, 1, 1)) / np.sqrt(var_biased.reshape(1, 3, 1, 1) + 1e-5) * w + b
    np.testing.assert_allclose(out.data, expected, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(bn.running_mean.data, 0.9 * 0 + 0.1 * mean, rtol=1e-5)
    np.testing.assert_allclose(bn.running_var.data, 0.9 * 1 + 0.1 * var_unbiased, rtol=1e-5)
    assert not np.allclose(0.9 + 0.1 * var_biased, 0.9 + 0.1 * var_unbiased, rtol=1e-5)
    assert int(bn.num_batches_tracked.data) == 1

    X2 = (rng.standard_normal((2, 3, 4, 4)) - 1).astype(np.float32)
    bn(at.tensor(X2))
    m2 = X2.astype(np.float64).mean(axis=(0, 2, 3))
    v2 = X2.astype(np.float64).var(axis=(0, 2, 3), ddof=1)
    np.testing.assert_allclose(bn.running_mean.data, 0.9 * (0.1 * mean) + 0.1 * m2, rtol=1e-5)
    np.testing.assert_allclose(bn.running_var.data, 0.9 * (0.9 + 0.1 * var_unbiased) + 0.1 * v2, rtol=1e-5)
    assert int(bn.num_batches_tracked.data) == 2
    assert bn.running_mean.dtype == np.float32 and bn.running_var.dtype == np.float32
    sd = bn.state_dict()
    assert isinstance(sd["num_batches_tracked"], np.ndarray) and sd["num_batches_tracked"].dtype == np.int64
    assert sd["num_batches_tracked"].shape == ()


def test_batchnorm_eval_uses_running_statistics_and_changes_nothing():
    bn = bn_with_random_affine()
    rm = np.array([0.5, -1.0, 2.0], dtype=np.float32)
    rv = np.array([4.0, 0.25, 1.0], dtype=np.float32)
    bn.running_mean.data, bn.running_var.data = rm.copy(), rv.copy()
    bn.eval()
    X = np.random.default_rng(12).standard_normal((2, 3, 3, 3)).astype(np.float32)
    out = bn(at.tensor(X))
    expected = ((X - rm.reshape(1, 3, 1, 1)) / np.sqrt(rv.reshape(1, 3, 1, 1) + 1e-5)
                * bn.weight.data.reshape(1, 3, 1, 1) + bn.bias.data.reshape(1, 3, 1, 1))
    np.testing.assert_allclose(out.data, expected, rtol=1e-5, atol=1e-6)
    np.testing.assert_array_equal(bn.running_mean.data, rm)
    np.testing.assert_array_equal(bn.running_var.data, rv)
    assert int(bn.num_batches_tracked.data) == 0


def test_frozen_batchnorm_in_eval_folds_its_statistics_and_still_passes_the_input_gradient():
    """With a frozen weight, eval BatchNorm computes x * scale + shift (torch's inference
    form, no x - mean array); the input gradient is g * weight / sqrt(var + eps)."""
    bn = bn_with_random_affine().double()
    bn.running_mean.data[...] = [0.5, -1.0, 2.0]
    bn.running_var.data[...] = [4.0, 0.25, 1.0]
    bn.eval()
    bn.weight.requires_grad_(False)
    x = at.tensor(np.random.default_rng(13).standard_normal((2, 3, 3, 3)), requires_grad=True)
    out = bn(x)
    scale = (bn.weight.data / np.sqrt(bn.running_var.data + 1e-5)).reshape(1, 3, 1, 1)
    expected = (x.data - bn.running_mean.data.reshape(1, 3, 1, 1)) * scale + bn.bias.data.reshape(1, 3, 1, 1)
    np.testing.assert_allclose(out.data, expected, rtol=1e-12, atol=1e-12)
    out.backward(at.ones_like(out))
    np.testing.assert_allclose(x.grad.data, np.broadcast_to(scale, x.shape), rtol=1e-12)
    assert bn.weight.grad is None
    np.testing.assert_allclose(bn.bias.grad.data, [18.0, 18.0, 18.0])
    assert gradcheck(lambda t: bn(t), (x,))


def test_batchnorm_eps_is_added_to_the_variance():
    bn = nn.BatchNorm2d(1)
    X = (np.array([-1.0, 1.0] * 8) * 1e-3).reshape(2, 1, 2, 4).astype(np.float32)  # var 1e-6
    out = bn(at.tensor(X))
    np.testing.assert_allclose(out.data, X / np.sqrt(1e-6 + 1e-5), rtol=1e-4)


def test_batchnorm_momentum_none_is_a_cumulative_average():
    bn = nn.BatchNorm2d(2, momentum=None)
    rng = np.random.default_rng(13)
    batches = [rng.standard_normal((3, 2, 2, 2)).astype(np.float32) * (k + 1) + k for k in range(3)]
    for X in batches:
        bn(at.tensor(X))
    means = [X.astype(np.float64).mean(axis=(0, 2, 3)) for X in batches]
    varis = [X.astype(np.float64).var(axis=(0, 2, 3), ddof=1) for X in batches]
    np.testing.assert_allclose(bn.running_mean.data, np.mean(means, axis=0), rtol=1e-5)
    np.testing.assert_allclose(bn.running_var.data, np.mean(varis, axis=0), rtol=1e-5)
    assert int(bn.num_batches_tracked.data) == 3


def test_batchnorm_updates_running_stats_under_no_grad_in_train_mode():
    bn = nn.BatchNorm2d(2)
    with at.no_grad():
        out = bn(at.randn(2, 2, 3, 3) + 5)
    assert not out.requires_grad
    assert np.all(bn.running_mean.data > 0.3) and int(bn.num_batches_tracked.data) == 1


def test_batchnorm_gradients_match_finite_differences():
    bn = bn_with_random_affine(2).double()
    x = at.randn(2, 2, 3, 3, dtype=np.float64, requires_grad=True)
    assert gradcheck(lambda x, w, b: bn(x), (x, bn.weight, bn.bias))
    bn.eval()
    assert gradcheck(lambda x, w, b: bn(x), (x, bn.weight, bn.bias))


@pytest.mark.parametrize("training", [True, False])
def test_batchnorm_with_frozen_affine_gives_the_same_input_gradient(training):
    """The kernel skips the weight and bias gradients nobody asked for; the input gradient
    (which in training needs both sums) must not change."""
    grads = []
    for frozen in (False, True):
        bn = bn_with_random_affine().double()
        bn.train(training)
        bn.weight.requires_grad_(not frozen)
        bn.bias.requires_grad_(not frozen)
        x = at.tensor(np.random.default_rng(21).standard_normal((2, 3, 3, 3)), requires_grad=True)
        bn.forward_relu(x).backward(at.tensor(np.random.default_rng(22).standard_normal((2, 3, 3, 3))))
        grads.append(x.grad.data)
        assert (bn.weight.grad is None) == frozen and (bn.bias.grad is None) == frozen
    np.testing.assert_array_equal(grads[1], grads[0])


def test_parameter_gradients_take_the_parameters_memory_layout():
    """As torch's AccumulateGrad: a linear weight's gradient comes out of backward as a
    transposed product, a conv weight is stored channels-last; .grad is laid out like .data."""
    model = nn.Sequential(nn.Conv2d(2, 3, 3, padding=1), nn.Flatten(), nn.Linear(3 * 4 * 4, 5))
    model(at.rand(2, 2, 4, 4)).sum().backward()
    for name, p in model.named_parameters():
        assert p.grad.data.strides == p.data.strides, name
    assert not model[2].weight.data.flags.f_contiguous  # the case that needed the copy


def test_fused_add_relu_equals_relu_of_the_sum_and_feeds_both_inputs():
    results = []
    for fused in (False, True):
        rng = np.random.default_rng(43)  # the same draws for both passes
        a = at.tensor(rng.standard_normal((2, 3, 4, 4)).astype(np.float32), requires_grad=True)
        b = at.tensor(rng.standard_normal((2, 3, 4, 4)).astype(np.float32), requires_grad=True)
        y = F.add_relu(a, b) if fused else F.relu(a + b)
        y.backward(at.tensor(rng.standard_normal(y.shape).astype(np.float32)))
        results.append((y.data, a.grad.data, b.grad.data))
    assert (results[0][0] == 0).any() and (results[0][0] > 0).any()
    for plain, fused in zip(*results):
        np.testing.assert_array_equal(fused, plain)
    # Broadcasting: the gradient is summed back to the smaller input's shape.
    c = at.tensor(np.array([-1.0, 2.0]), requires_grad=True)
    F.add_relu(at.tensor(np.zeros((3, 2))), c).sum().backward()
    np.testing.assert_array_equal(c.grad.data, [0.0, 3.0])


@pytest.mark.parametrize("training", [True, False])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_fused_batchnorm_relu_equals_batchnorm_then_relu(training, dtype):
    """forward_relu (one kernel) must give what relu(bn(x)) gives: values, the gradients of
    input, weight and bias, and the running statistics, bit for bit."""
    results = []
    for fused in (False, True):
        rng = np.random.default_rng(41)
        bn = nn.BatchNorm2d(3)
        bn.weight.data[...] = rng.uniform(0.5, 1.5, 3)
        bn.bias.data[...] = rng.uniform(-0.5, 0.5, 3)
        bn.running_mean.data[...] = rng.uniform(-0.2, 0.2, 3)
        bn = bn.double() if dtype == np.float64 else bn.float()
        bn.train(training)
        x = at.tensor(rng.standard_normal((4, 3, 5, 5)).astype(dtype), requires_grad=True)
        y = bn.forward_relu(x) if fused else F.relu(bn(x))
        y.backward(at.tensor(rng.standard_normal(y.shape).astype(dtype)))
        results.append([y.data, x.grad.data, bn.weight.grad.data, bn.bias.grad.data,
                        bn.running_mean.data.copy(), bn.running_var.data.copy()])
    assert (results[0][0] == 0).any() and (results[0][0] > 0).any()  # the ReLU does clip
    for plain, fused in zip(*results):
        assert plain.dtype == fused.dtype == dtype
        np.testing.assert_array_equal(fused, plain)


# --- casts ----------------------------------------------------------------------------------------

def test_double_and_float_cast_parameters_and_buffers_in_place():
    model = small_model()
    params = {n: p for n, p in model.named_parameters()}
    buffers = {n: b for n, b in model.named_buffers()}
    assert model.double() is model
    for n, p in model.named_parameters():
        assert p is params[n] and p.dtype == np.float64 and p.requires_grad, n
    for n, b in model.named_buffers():
        assert b is buffers[n], n
        assert b.dtype == (np.int64 if n.endswith("num_batches_tracked") else np.float64), n
    model.float()
    assert all(p.dtype == np.float32 for p in model.parameters())
    assert model.bn1.num_batches_tracked.dtype == np.int64


def test_optimizer_built_before_double_still_updates_the_parameters():
    model = small_model()
    opt = at.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    model.double()
    before = {n: p.data.copy() for n, p in model.named_parameters()}
    model(at.rand(2, 3, 8, 8, dtype=np.float64)).sum().backward()
    opt.step()
    for n, p in model.named_parameters():
        assert p.dtype == np.float64, n
        assert not np.array_equal(p.data, before[n]), n


# --- conv2d ---------------------------------------------------------------------------------------

def naive_conv2d(x, w, b, stride, padding, dilation):
    n, c, h, wd = x.shape
    o, _, kh, kw = w.shape
    (sh, sw), (ph, pw), (dh, dw) = stride, padding, dilation
    xp = np.pad(x, ((0, 0), (0, 0), (ph, ph), (pw, pw)))
    oh = (h + 2 * ph - dh * (kh - 1) - 1) // sh + 1
    ow = (wd + 2 * pw - dw * (kw - 1) - 1) // sw + 1
    out = np.zeros((n, o, oh, ow))
    for i in range(oh):
        for j in range(ow):
            patch = xp[:, :, i * sh:i * sh + dh * (kh - 1) + 1:dh, j * sw:j * sw + dw * (kw - 1) + 1:dw]
            out[:, :, i, j] = np.einsum("nchw,ochw->no", patch, w)
    return out if b is None else out + b.reshape(1, -1, 1, 1)


CONV_CASES = [  # (H, W), kernel, stride, padding, dilation
    ((7, 7), 3, 1, 0, 1),
    ((7, 7), 3, 1, 1, 1),
    ((8, 8), 3, 2, 1, 1),
    ((9, 6), 3, 2, 0, 1),
    ((10, 10), 3, 1, 2, 2),
    ((11, 9), (3, 2), (2, 1), (1, 0), (1, 2)),
    ((64, 64), 7, 2, 3, 1),
    ((5, 5), 1, 2, 0, 1),
    ((6, 6), 5, 3, 2, 1),
    # Maps so small that some kernel taps read only padding (the kernel is cropped):
    ((1, 1), 3, 1, 1, 1),     # layer4 at 32x32 input: only the centre tap is live
    ((1, 1), 3, 2, 1, 1),
    ((1, 3), (5, 3), 1, (2, 1), 1),  # cropped along H only
    ((1, 1), 7, 2, 3, 1),
]


def _pair(v):
    return (v, v) if isinstance(v, int) else v


@pytest.mark.parametrize("hw,k,s,p,d", CONV_CASES)
def test_conv2d_output_shape_formula(hw, k, s, p, d):
    conv = nn.Conv2d(2, 3, k, stride=s, padding=p, dilation=d)
    out = conv(at.rand(1, 2, *hw))
    (kh, kw), (sh, sw), (ph, pw), (dh, dw) = map(_pair, (k, s, p, d))
    oh = (hw[0] + 2 * ph - dh * (kh - 1) - 1) // sh + 1
    ow = (hw[1] + 2 * pw - dw * (kw - 1) - 1) // sw + 1
    assert out.shape == (1, 3, oh, ow)


@pytest.mark.parametrize("hw,k,s,p,d", [c for c in CONV_CASES if c[0][0] < 20])
@pytest.mark.parametrize("bias", [True, False])
def test_conv2d_values_match_a_naive_loop(hw, k, s, p, d, bias):
    rng = np.random.default_rng(14)
    (kh, kw) = _pair(k)
    X = rng.standard_normal((2, 3, *hw))
    W = rng.standard_normal((4, 3, kh, kw))
    B = rng.standard_normal(4) if bias else None
    out = F.conv2d(at.tensor(X), at.tensor(W), None if B is None else at.tensor(B), s, p, d)
    np.testing.assert_allclose(out.data, naive_conv2d(X, W, B, *map(_pair, (s, p, d))), rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("hw,k,s,p,d", [((6, 5), 3, 2, 1, 1), ((7, 7), (3, 2), (2, 1), (1, 0), (1, 2)),
                                        ((4, 4), 1, 1, 0, 1), ((1, 1), 3, 1, 1, 1), ((1, 3), (5, 3), 1, (2, 1), 1)])
def test_conv2d_gradients_match_finite_differences(hw, k, s, p, d):
    rng = np.random.default_rng(15)
    kh, kw = _pair(k)
    x = at.tensor(rng.standard_normal((2, 2, *hw)), requires_grad=True)
    w = at.tensor(rng.standard_normal((3, 2, kh, kw)), requires_grad=True)
    b = at.tensor(rng.standard_normal(3), requires_grad=True)
    assert gradcheck(lambda x, w, b: F.conv2d(x, w, b, s, p, d), (x, w, b))


def test_max_pool_and_avg_pool():
    X = np.arange(32.0).reshape(1, 2, 4, 4)
    x = at.tensor(X, requires_grad=True)
    out = F.max_pool2d(x, 2)
    np.testing.assert_array_equal(out.data, X.reshape(1, 2, 2, 2, 2, 2).max(axis=(3, 5)))
    out.sum().backward()
    assert x.grad.data.sum() == 8 and x.grad.data[0, 0, 1, 1] == 1 and x.grad.data[0, 0, 0, 0] == 0
    x3 = at.tensor(np.random.default_rng(16).standard_normal((1, 2, 5, 5)), requires_grad=True)
    assert gradcheck(lambda t: F.max_pool2d(t, 3, 2, 1), (x3,))
    pooled = nn.AdaptiveAvgPool2d((1, 1))(at.tensor(X))
    np.testing.assert_allclose(pooled.data, X.mean(axis=(2, 3), keepdims=True))



def test_max_pool_sends_an_infinite_or_nan_gradient_only_to_the_winning_tap():
    X = np.arange(16.0).reshape(1, 1, 4, 4)
    for bad in (np.inf, np.nan):
        x = at.tensor(X, requires_grad=True)
        F.max_pool2d(x, 2, 2).backward(at.tensor(np.array([[[[bad, 1.0], [1.0, 1.0]]]])))
        window = x.grad.data[0, 0, :2, :2].ravel()
        np.testing.assert_array_equal(window[:3], [0.0, 0.0, 0.0])  # not inf * 0 = NaN
        assert window[3] == bad or (np.isnan(bad) and np.isnan(window[3]))


def test_max_pool_window_of_minus_inf_sends_its_gradient_to_the_first_real_element():
    """Padding ties with a window of -inf; torch gives the gradient to the first element of
    the input in the window, never to the padding."""
    x = at.tensor(np.full((1, 1, 2, 2), -np.inf), requires_grad=True)
    out = F.max_pool2d(x, 2, 2, 1)
    assert np.isneginf(out.data).all()
    out.backward(at.ones_like(out))
    np.testing.assert_array_equal(x.grad.data, np.ones((1, 1, 2, 2)))
    y = at.tensor(np.array([[[[-np.inf, -np.inf, 1.0]]]]), requires_grad=True)
    F.max_pool2d(y, (1, 3), 1, (0, 1)).sum().backward()  # windows [pad,-inf,-inf], [-inf,-inf,1], [-inf,1,pad]
    np.testing.assert_array_equal(y.grad.data, [[[[1.0, 0.0, 2.0]]]])


@pytest.mark.parametrize("kind", ["relu", "add_relu", "batch_norm_relu"])
def test_relu_gradients_follow_torch_threshold_backward_for_inf_and_nan(kind):
    """Clipped positions get 0 even when the incoming gradient is inf or NaN (not inf * 0);
    a NaN output passes its gradient through (NaN <= 0 is false), as torch's
    threshold_backward does."""
    X = np.array([[[[-1.0, 2.0, np.nan, 3.0]]]])
    G = np.array([[[[np.inf, 1.0, 5.0, np.nan]]]])
    x = at.tensor(X, requires_grad=True)
    if kind == "relu":
        y = F.relu(x)
    elif kind == "add_relu":
        y = F.add_relu(x, at.tensor(np.zeros_like(X)))
    else:  # eval BatchNorm with unit statistics is the identity up to eps: relu(x) again
        bn = nn.BatchNorm2d(1).double().eval()
        bn.running_var.data[...] = 1.0 - 1e-5
        y = bn.forward_relu(x)
    np.testing.assert_array_equal(y.data, [[[[0.0, 2.0, np.nan, 3.0]]]])
    y.backward(at.tensor(G))
    np.testing.assert_array_equal(x.grad.data, [[[[0.0, 1.0, 5.0, np.nan]]]])


MAXPOOL_TIES_NAN = np.array([[[[1.0, np.nan, 3.0], [np.nan, 5.0, 6.0], [7.0, 8.0, 9.0]],
                              [[2.0, 2.0, 0.0], [2.0, 1.0, 0.0], [0.0, 0.0, 0.0]]]], dtype=np.float32)


def test_max_pool_routes_ties_to_the_first_tap_and_nan_windows_to_their_last_nan():
    """torch's CPU rule: a tie goes to the first maximum in scan order; a window holding NaN
    outputs NaN and its gradient goes to the last NaN in scan order."""
    X = MAXPOOL_TIES_NAN
    x = at.tensor(X, requires_grad=True)
    out = F.max_pool2d(x, 3, 1, 0)
    assert np.isnan(out.data[0, 0, 0, 0]) and out.data[0, 1, 0, 0] == 2.0
    out.backward(at.tensor(np.array([[[[3.0]], [[4.0]]]], dtype=np.float32)))
    expected = np.zeros_like(X)
    expected[0, 0, 1, 0] = 3.0  # the last NaN (row 1, col 0), not the first (row 0, col 1)
    expected[0, 1, 0, 0] = 4.0  # the first of three tied 2.0s
    np.testing.assert_array_equal(x.grad.data, expected)


def test_max_pool_ties_and_nan_windows_match_torch():
    """The same windows through torch (a separate test, so that without torch the engine test
    above still counts as passed and this one alone is skipped)."""
    from conftest import require

    torch = require("torch")
    x = at.tensor(MAXPOOL_TIES_NAN, requires_grad=True)
    F.max_pool2d(x, 3, 1, 0).backward(at.tensor(np.array([[[[3.0]], [[4.0]]]], dtype=np.float32)))
    tx = torch.tensor(MAXPOOL_TIES_NAN, requires_grad=True)
    torch.nn.functional.max_pool2d(tx, 3, 1, 0).backward(torch.tensor([[[[3.0]], [[4.0]]]]))
    np.testing.assert_array_equal(x.grad.data, tx.grad.numpy())

# --- losses ---------------------------------------------------------------------------------------

def numpy_cross_entropy(logits, target):
    z = logits - logits.max(axis=1, keepdims=True)
    logp = z - np.log(np.exp(z).sum(axis=1, keepdims=True))
    return -logp[np.arange(len(target)), target]


def test_cross_entropy_matches_numpy_reference():
    rng = np.random.default_rng(17)
    L = rng.standard_normal((6, 5)) * 3
    T = np.array([0, 4, 2, 2, 1, 3])
    logits = at.tensor(L, requires_grad=True)
    loss = F.cross_entropy(logits, at.tensor(T))
    ref = numpy_cross_entropy(L, T)
    np.testing.assert_allclose(loss.item(), ref.mean(), rtol=1e-12)
    np.testing.assert_allclose(F.cross_entropy(logits, T, reduction="sum").item(), ref.sum(), rtol=1e-12)
    np.testing.assert_allclose(F.cross_entropy(logits, T, reduction="none").data, ref, rtol=1e-12)
    np.testing.assert_allclose(nn.CrossEntropyLoss()(logits, T).item(), ref.mean(), rtol=1e-12)
    loss.backward()
    softmax = np.exp(L) / np.exp(L).sum(axis=1, keepdims=True)
    np.testing.assert_allclose(logits.grad.data, (softmax - np.eye(5)[T]) / 6, rtol=1e-10, atol=1e-12)


def test_cross_entropy_is_stable_for_large_logits_and_float32():
    L = np.array([[1000.0, 0.0, -1000.0], [0.0, 0.0, 0.0]], dtype=np.float32)
    loss = F.cross_entropy(at.tensor(L, requires_grad=True), np.array([1, 2]), reduction="none")
    assert loss.dtype == np.float32
    np.testing.assert_allclose(loss.data, [1000.0, np.log(3.0)], rtol=1e-6)


def test_cross_entropy_rejects_bad_targets():
    logits = at.randn(3, 4)
    with pytest.raises(IndexError):
        F.cross_entropy(logits, np.array([0, 4, 1]))
    with pytest.raises(RuntimeError):
        F.cross_entropy(logits, np.array([0, 1]))
    with pytest.raises(ValueError):
        F.cross_entropy(logits, np.array([0, 1, 2]), reduction="avg")


def test_linear_matches_numpy():
    lin = nn.Linear(4, 3)
    X = np.random.default_rng(18).standard_normal((5, 4)).astype(np.float32)
    np.testing.assert_allclose(lin(at.tensor(X)).data, X @ lin.weight.data.T + lin.bias.data, rtol=1e-5)
    assert lin.weight.shape == (3, 4) and lin.bias.shape == (3,)
    assert nn.Linear(4, 3, bias=False).bias is None
    assert list(nn.Linear(4, 3, bias=False).state_dict()) == ["weight"]


# --- Sequential -----------------------------------------------------------------------------------

def test_sequential_indexing_and_state_dict_names():
    seq = nn.Sequential(nn.Linear(2, 3), nn.ReLU(), nn.Linear(3, 1))
    assert len(seq) == 3
    assert isinstance(seq[0], nn.Linear) and isinstance(seq[1], nn.ReLU)
    assert seq[-1] is seq[2] and seq[2].out_features == 1
    assert [type(m).__name__ for m in seq] == ["Linear", "ReLU", "Linear"]
    assert list(seq.state_dict()) == ["0.weight", "0.bias", "2.weight", "2.bias"]
    x = at.randn(4, 2)
    np.testing.assert_array_equal(seq(x).data, seq[2](seq[1](seq[0](x))).data)
    with pytest.raises(IndexError):
        seq[3]


def test_assigning_a_plain_tensor_over_a_parameter_raises_as_in_torch():
    lin = nn.Linear(2, 2)
    with pytest.raises(TypeError, match="weight"):
        lin.weight = at.tensor(np.zeros((2, 2), np.float32))
    assert isinstance(lin.weight, nn.Parameter)
    lin.bias = None
    assert lin.bias is None and [n for n, _ in lin.named_parameters()] == ["weight"]


def test_batchnorm_refuses_one_value_per_channel_in_training_as_torch():
    bn = nn.BatchNorm2d(3)
    with pytest.raises(ValueError, match="more than 1 value per channel"):
        bn(at.tensor(np.ones((1, 3, 1, 1), np.float32)))
    bn.eval()
    assert bn(at.tensor(np.ones((1, 3, 1, 1), np.float32))).shape == (1, 3, 1, 1)


def test_relu_gradient_keeps_the_channels_last_layout():
    """Kernels hand each other NCHW views of NHWC memory; a ReLU gradient in another order
    would make the next kernel copy it."""
    from autotrain.autograd.ops import relu_grad

    rng = np.random.default_rng(44)
    out = np.maximum(rng.standard_normal((2, 3, 3, 5)), 0).transpose(0, 3, 1, 2)
    g = rng.standard_normal((2, 3, 3, 5)).transpose(0, 3, 1, 2)
    got = relu_grad(g, out)
    assert got.strides == g.strides
    np.testing.assert_array_equal(got, np.where(out > 0, g, 0.0))

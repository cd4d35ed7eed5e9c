"""Fused kernels: conv2d, max_pool2d and batch_norm.

Each is fused for speed, not for math: written from primitives they would allocate a
graph node per kernel tap and copy activations many times. They loop over kernel taps only,
never over pixels or the batch, and hand the heavy work to one BLAS matmul.

Layout: the API is NCHW, as in PyTorch, but the kernels work on NHWC ("channels last")
memory, and nn.Conv2d stores its weight as (O, KH, KW, C) memory viewed as (O, C, KH, KW). Outputs are NCHW-shaped *views* of NHWC arrays, so ``x.transpose(0, 2, 3, 1)`` at the
next layer is free, and (N*H*W, C) matrices are plain reshapes. Element-wise ops in between
preserve the layout (NumPy keeps the memory order of its inputs).
"""

from __future__ import annotations

import functools

import numpy as np
from numpy.lib.stride_tricks import as_strided

from .function import Function
from .ops import all_finite, relu_grad, select_grad


def _nhwc(x: np.ndarray) -> np.ndarray:
    """An NCHW array as NHWC: a free view when the memory is channels-last."""
    return x.transpose(0, 2, 3, 1)


def _nchw(x: np.ndarray) -> np.ndarray:
    """An NHWC array as an NCHW-shaped view (torch's channels_last)."""
    return x.transpose(0, 3, 1, 2)


def _out_size(size: int, k: int, s: int, p: int, d: int) -> int:
    return (size + 2 * p - d * (k - 1) - 1) // s + 1


def _pad_nhwc(x: np.ndarray, ph: int, pw: int, value=0) -> np.ndarray:
    if not (ph or pw):
        return x
    n, h, w, c = x.shape
    out = np.empty((n, h + 2 * ph, w + 2 * pw, c), dtype=x.dtype)
    # Fill only the border: filling the whole buffer first would write the interior twice.
    out[:, :ph], out[:, ph + h:] = value, value
    out[:, ph:ph + h, :pw], out[:, ph:ph + h, pw + w:] = value, value
    out[:, ph:ph + h, pw:pw + w, :] = x
    return out


def _tap(x: np.ndarray, i: int, j: int, oh: int, ow: int, sh: int, sw: int) -> np.ndarray:
    """The (N, OH, OW, C) slice of padded NHWC ``x`` that kernel tap (i, j) reads (dilation folded into i, j)."""
    return x[:, i:i + sh * (oh - 1) + 1:sh, j:j + sw * (ow - 1) + 1:sw, :]


def _im2col(xp: np.ndarray, kh: int, kw: int, oh: int, ow: int, stride, dilation) -> np.ndarray:
    """(N*OH*OW, KH*KW*C) patches of padded NHWC ``xp``: one strided view, one copy."""
    n, c = xp.shape[0], xp.shape[3]
    (sh, sw), (dh, dw) = stride, dilation
    if kh == kw == 1:
        return xp[:, ::sh, ::sw, :][:, :oh, :ow, :].reshape(n * oh * ow, c)
    s = xp.strides
    windows = as_strided(xp, (n, oh, ow, kh, kw, c),
                         (s[0], s[1] * sh, s[2] * sw, s[1] * dh, s[2] * dw, s[3]), writeable=False)
    return windows.reshape(n * oh * ow, kh * kw * c)


@functools.lru_cache(maxsize=1024)  # a network asks the same few geometries every step
def _live_taps(size: int, out: int, k: int, s: int, p: int, d: int) -> tuple[int, int]:
    """The kernel taps [lo, hi) along one axis that read at least one real (unpadded) pixel.

    Tap i reads input index o*s - p + i*d for output o in [0, out). The whole range (0, k)
    is returned unless the live taps are a centred sub-range, so that dropping the rest
    keeps the output size with a symmetric padding of p - lo*d.
    """
    live = []
    for i in range(k):
        a = i * d - p  # input index read at output 0
        first = max(0, -(a // s) if a < 0 else 0)  # first output whose read is >= 0
        last = min(out - 1, (size - 1 - a) // s)  # last output whose read is < size
        if first <= last:
            live.append(i)
    if not live:
        return 0, k
    lo, hi = live[0], live[-1] + 1
    if len(live) != hi - lo or lo != k - hi or p - lo * d < 0:
        return 0, k
    return lo, hi


class Conv2d(Function):
    """2-D cross-correlation (groups=1) as im2col + one matmul.

    Backward: the weight gradient is one matmul with the saved patches; the input gradient
    is a full correlation with the flipped kernel for stride 1, else col2im by kernel taps.
    """

    @staticmethod
    def forward(ctx, x, w, *bias, stride=(1, 1), padding=(0, 0), dilation=(1, 1)):
        n, c, h, wd = x.shape
        o, _, kh, kw = w.shape
        (sh, sw), (ph, pw), (dh, dw) = stride, padding, dilation
        oh, ow = _out_size(h, kh, sh, ph, dh), _out_size(wd, kw, sw, pw, dw)
        # Kernel rows/columns that only ever read padding add zeros: drop them (a 3x3 conv
        # on a 1x1 map, as layer4 sees at 32x32 input, is its centre tap: 1/9 of the work).
        (i0, i1), (j0, j1) = _live_taps(h, oh, kh, sh, ph, dh), _live_taps(wd, ow, kw, sw, pw, dw)
        ctx.crop = None
        if (i1 - i0, j1 - j0) != (kh, kw):
            ctx.crop = (kh, kw, i0, j0)
            w = w[:, :, i0:i1, j0:j1]
            kh, kw, ph, pw = i1 - i0, j1 - j0, ph - i0 * dh, pw - j0 * dw
            padding = (ph, pw)
        cols = _im2col(_pad_nhwc(_nhwc(x), ph, pw), kh, kw, oh, ow, (sh, sw), (dh, dw))
        # (O, KH*KW*C): a free view when the weight is stored channels-last (nn.Conv2d does).
        wmat = w.transpose(0, 2, 3, 1).reshape(o, kh * kw * c)
        out = cols @ wmat.T
        if bias:
            out += bias[0]
        need_x, need_w = ctx.needs_input_grad[0], ctx.needs_input_grad[1]
        ctx.save_for_backward(cols if need_w else None, wmat if need_x else None)
        ctx.geom = (x.shape, w.shape, (oh, ow), stride, padding, dilation)
        return _nchw(out.reshape(n, oh, ow, o))

    @staticmethod
    def backward(ctx, g):
        cols, wmat = ctx.saved
        (n, c, h, wd), (o, _, kh, kw), (oh, ow), (sh, sw), (ph, pw), (dh, dw) = ctx.geom
        go = _nhwc(g).reshape(n * oh * ow, o)
        gx = gw = None
        if ctx.needs_input_grad[1]:
            # (O, KH, KW, C) memory viewed as (O, C, KH, KW): the channels-last layout of the
            # weight itself, so the optimizer's element-wise update runs in memory order.
            if o <= 64:
                # Few output channels: OpenBLAS runs (K, M) @ (M, O) faster than (O, M) @ (M, K)
                # (196 vs 145 GFLOP/s for layer1 at 8x224); the (O, K) copy back is tiny.
                gwmat = np.ascontiguousarray((cols.T @ go).T)
            else:
                gwmat = go.T @ cols
            gw = gwmat.reshape(o, kh, kw, c)
            if ctx.crop is not None:  # the dropped taps read only padding: zero gradient
                full_kh, full_kw, i0, j0 = ctx.crop
                full = np.zeros((o, full_kh, full_kw, c), dtype=gw.dtype)
                full[:, i0:i0 + kh, j0:j0 + kw, :] = gw
                gw = full
            gw = gw.transpose(0, 3, 1, 2)
        gb = ((_column_sum(go) if ctx.needs_input_grad[2] else None),) if len(ctx.needs_input_grad) == 3 else ()
        if ctx.needs_input_grad[0]:
            full_pad = ((kh - 1) * dh - ph, (kw - 1) * dw - pw)
            if sh == sw == 1 and min(full_pad) >= 0 and n * h * wd > 2 * o:
                # Stride 1: the input gradient is the "full" correlation of the output gradient
                # with the flipped kernel. An im2col of g plus one matmul reads and writes far
                # less memory than scattering a (N*OH*OW, KH*KW*C) matrix back tap by tap; it
                # pays a copy of the flipped weight, which only wins with enough pixels
                # (N*H*W > 2*O; not for layer4 at batch 1).
                wflip = wmat.reshape(o, kh, kw, c)[:, ::-1, ::-1, :].transpose(1, 2, 0, 3).reshape(kh * kw * o, c)
                gcols = _im2col(_pad_nhwc(go.reshape(n, oh, ow, o), *full_pad), kh, kw, h, wd, (1, 1), (dh, dw))
                gx = _nchw((gcols @ wflip).reshape(n, h, wd, c))
            else:
                dcols = (go @ wmat).reshape(n, oh, ow, kh, kw, c)
                dxp = np.zeros((n, h + 2 * ph, wd + 2 * pw, c), dtype=g.dtype)
                for i in range(kh):
                    for j in range(kw):
                        _tap(dxp, i * dh, j * dw, oh, ow, sh, sw)[...] += dcols[:, :, :, i, j, :]
                gx = _nchw(dxp[:, ph:ph + h, pw:pw + wd, :])
        return (gx, gw) + gb


class MaxPool2d(Function):
    """Max over each window, tracking which tap won: the first on ties, the last NaN if any
    (as torch's CPU kernels)."""

    @staticmethod
    def forward(ctx, x, kernel_size=(2, 2), stride=(2, 2), padding=(0, 0)):
        n, c, h, w = x.shape
        (kh, kw), (sh, sw), (ph, pw) = kernel_size, stride, padding
        oh, ow = _out_size(h, kh, sh, ph, 1), _out_size(w, kw, sw, pw, 1)
        xp = _pad_nhwc(_nhwc(x), ph, pw, value=-np.inf)
        taps = [_tap(xp, t // kw, t % kw, oh, ow, sh, sw) for t in range(kh * kw)]
        out = taps[0].copy()
        for v in taps[1:]:
            np.maximum(out, v, out=out)
        if ctx.needs_input_grad[0]:  # not in eval or frozen layers
            real, finite = None, all_finite(out)  # one pass; the rare cases below need a non-finite max
            if (ph or pw) and not finite and np.isneginf(out).any():
                # A window of -inf ties with its padding; torch picks the first real element.
                mask = _pad_nhwc(np.ones((n, h, w, 1), dtype=bool), ph, pw, value=False)
                real = [_tap(mask, t // kw, t % kw, oh, ow, sh, sw) for t in range(kh * kw)]
            ctx.save_for_backward(_winning_taps(taps, out, real, finite))
        ctx.geom = (x.shape, (kh, kw), (sh, sw), (ph, pw), (oh, ow))
        return _nchw(out)

    @staticmethod
    def backward(ctx, g):
        (argtap,) = ctx.saved
        (n, c, h, w), (kh, kw), (sh, sw), (ph, pw), (oh, ow) = ctx.geom
        gh = _nhwc(g)
        dxp = np.zeros((n, h + 2 * ph, w + 2 * pw, c), dtype=g.dtype)
        won = np.empty(argtap.shape, dtype=bool)
        part = np.empty(gh.shape, dtype=g.dtype)
        finite = all_finite(gh)  # once, not per tap
        for t in range(kh * kw):  # each tap adds the gradient of the windows it won
            select_grad(gh, np.equal(argtap, t, out=won), out=part, finite=finite)
            view = _tap(dxp, t // kw, t % kw, oh, ow, sh, sw)
            np.add(view, part, out=view)
        return (_nchw(dxp[:, ph:ph + h, pw:pw + w, :]),)


def _winning_taps(taps: list, out: np.ndarray, real: list | None = None, finite: bool = False) -> np.ndarray:
    """Index of the tap holding each window's maximum ``out``: the first one on ties, the
    last NaN where the window has one (torch's rule). ``real`` (per tap, True where the tap
    reads the input, not padding) keeps padding from winning a tie, when a window is -inf;
    ``finite`` (``out`` holds no inf/NaN) skips the search for NaN windows.

    Each tap t that equals the maximum scores K - t; the highest score is the first such
    tap. Three passes over small integer arrays per tap, no masked writes (which NumPy runs
    element by element, 4x slower here).
    """
    k = len(taps)
    dtype = np.uint8 if k < 256 else np.int32
    score = np.zeros(out.shape, dtype=dtype)
    equal = np.empty(out.shape, dtype=bool)
    points = np.empty(out.shape, dtype=dtype)
    for t, v in enumerate(taps):
        np.equal(v, out, out=equal)
        if real is not None:
            equal &= real[t]
        np.multiply(equal, dtype(k - t), out=points)
        np.maximum(score, points, out=score)
    argtap = np.subtract(dtype(k), score, out=score)
    if not finite and np.isnan(out).any():  # rare: route each NaN window's gradient to its last NaN
        for t, v in enumerate(taps):
            np.copyto(argtap, t, where=np.isnan(v))
    return argtap


class BatchNorm(Function):
    """Batch normalisation over (N, H, W) per channel, with an affine transform and, with
    ``relu=True``, the ReLU that follows it in the same kernel.

    Training: normalise with the batch mean and *biased* variance; update the running
    estimates in place with the *unbiased* variance: r = (1 - momentum) * r + momentum * stat
    (PyTorch's convention). Evaluation: normalise with the running estimates.

    The ReLU is fused because its input is this kernel's own fresh array: it is clipped in
    place (no second activation-sized array), and in backward the masked gradient is a new
    array this kernel owns, so the rest of the chain rule runs in place on it.

    ``reduce`` (synchronised BatchNorm, data parallel): a function that sums a float64 vector
    over every process holding a shard of the batch. Training then normalises with the
    statistics of the whole batch (count, sum, then centred sum of squares: the same two
    passes as one process), and backward sums its two per-channel reductions the same way,
    so N processes compute what one computes on the global batch. The weight and bias
    gradients stay this shard's share; the caller sums them with the other gradients.
    """

    @staticmethod
    def forward(ctx, x, weight, bias, running_mean=None, running_var=None,
                training=True, momentum=0.1, eps=1e-5, relu=False, reduce=None):
        shape4 = x.ndim == 4
        c = x.shape[1]
        x2 = _nhwc(x).reshape(-1, c) if shape4 else x
        ctx.reduce = reduce if training else None
        if training:
            m = x2.shape[0]
            if reduce is None:
                total = _column_sum(x2)
            else:
                counted = reduce(np.concatenate([[m], _column_sum(x2)]).astype(np.float64))
                m, total = int(counted[0]), counted[1:].astype(x2.dtype)
            if m == 1:  # as torch: the batch variance of one value is meaningless
                raise ValueError(f"Expected more than 1 value per channel when training, got input size {x.shape}")
            mean = total / m
            xc = x2 - mean
            squares = np.einsum("mc,mc->c", xc, xc)  # no (M, C) temporary
            if reduce is not None:
                squares = reduce(squares.astype(np.float64)).astype(x2.dtype)
            var = squares / m
            ctx.count = m
            invstd = 1.0 / np.sqrt(var + eps)
            if running_mean is not None:
                running_mean *= 1 - momentum
                running_mean += momentum * mean
                running_var *= 1 - momentum
                running_var += momentum * var * (m / max(m - 1, 1))
        else:
            invstd = 1.0 / np.sqrt(running_var + eps)
            # x - mean is needed only for the weight's gradient; without it the statistics fold
            # into one scale and shift, y = x * (w * invstd) + (b - mean * w * invstd), as
            # torch's CPU inference kernel computes it.
            xc = x2 - running_mean if ctx.needs_input_grad[1] else None
        # y = xhat * w + b with xhat = xc * invstd folded into one per-channel scale: the
        # (M, C) arrays are touched twice, not four times. Backward rebuilds what it needs
        # from xc and per-channel vectors, so xhat itself is never stored.
        scale = invstd * weight
        if xc is None:
            out = np.multiply(x2, scale)
            out += bias - running_mean * scale
        else:
            out = np.multiply(xc, scale)
            out += bias
        if relu:
            np.maximum(out, 0, out=out)
        ctx.training = training
        ctx.save_for_backward(xc, invstd, weight, out if relu else None)
        if not shape4:
            return out
        n, _, h, w = x.shape
        return _nchw(out.reshape(n, h, w, c))

    @staticmethod
    def backward(ctx, g):
        xc, invstd, weight, relu_out = ctx.saved
        need_x, need_w, need_b = ctx.needs_input_grad
        shape = ctx.input_shapes[0]
        c = shape[1]
        g2 = _nhwc(g).reshape(-1, c) if len(shape) == 4 else g
        if relu_out is not None:
            g2 = relu_grad(g2, relu_out)  # a new array: ours to modify below
        # In training the input gradient needs both sums; otherwise each only for its own input.
        full = need_x and ctx.training
        gb = _column_sum(g2) if need_b or full else None
        gw = np.einsum("mc,mc->c", g2, xc) * invstd if need_w or full else None  # sum(g * xhat) per channel
        gx = None
        if need_x:
            scale = weight * invstd
            # g2 is ours when the ReLU was fused (a fresh masked copy): scale it in place.
            gx = np.multiply(g2, scale, out=g2 if relu_out is not None else None)
            if ctx.training:
                # dx = scale * (g - gb/m - xhat * gw/m), with xhat = xc * invstd: per-channel
                # vectors times the two (M, C) arrays, then two in-place subtractions.
                m, sum_g, sum_gxhat = ctx.count, gb, gw
                if ctx.reduce is not None:  # the whole batch's sums (this shard's stay gw, gb)
                    both = ctx.reduce(np.concatenate([gb, gw]).astype(np.float64)).astype(gb.dtype)
                    sum_g, sum_gxhat = both[:c], both[c:]
                gx -= xc * (scale * invstd * sum_gxhat / m)
                gx -= scale * sum_g / m
            if len(shape) == 4:
                n, _, h, w = shape
                gx = _nchw(gx.reshape(n, h, w, c))
        return gx, gw if need_w else None, gb if need_b else None


def _column_sum(a: np.ndarray, rows: int = 16) -> np.ndarray:
    """Sum over axis 0 of a C-ordered (M, C) array, 2-3x faster than ``a.sum(axis=0)``.

    NumPy reduces axis 0 one row at a time (an inner loop of C elements per row); summing
    ``rows`` interleaved partial sums first gives it longer inner loops. It also keeps
    ``rows`` separate accumulators, so the rounding error grows more slowly with M.
    """
    m = a.shape[0]
    head = m - m % rows
    if head == 0 or not a.flags.c_contiguous:
        return a.sum(axis=0)
    total = a[:head].reshape(head // rows, rows * a.shape[1]).sum(axis=0).reshape(rows, -1).sum(axis=0)
    return total + a[head:].sum(axis=0) if head < m else total

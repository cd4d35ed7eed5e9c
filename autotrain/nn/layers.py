"""Layers: Modules that own parameters and buffers and call the functional forms."""

from __future__ import annotations

import numpy as np

from ..autograd.tensor import Tensor
from . import functional as F
from . import init
from .module import Module, Parameter


class Linear(Module):
    def __init__(self, in_features: int, out_features: int, bias: bool = True, dtype=np.float32):
        super().__init__()
        self.in_features, self.out_features = in_features, out_features
        self.weight = Parameter(np.empty((out_features, in_features), dtype=dtype))
        if bias:
            self.bias = Parameter(np.empty(out_features, dtype=dtype))
        else:
            self.register_parameter("bias", None)
        init.default_init_(self.weight, self.bias)

    def forward(self, x: Tensor) -> Tensor:
        return F.linear(x, self.weight, self.bias)

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, bias={self.bias is not None}"


class Conv2d(Module):
    def __init__(self, in_channels: int, out_channels: int, kernel_size, stride=1, padding=0,
                 dilation=1, groups: int = 1, bias: bool = True, dtype=np.float32):
        super().__init__()
        if groups != 1:
            raise NotImplementedError("Conv2d: only groups=1 is supported")
        kh, kw = F._pair(kernel_size)
        self.in_channels, self.out_channels = in_channels, out_channels
        self.kernel_size, self.stride = (kh, kw), F._pair(stride)
        self.padding, self.dilation = F._pair(padding), F._pair(dilation)
        # Stored channels-last, (O, KH, KW, C) memory seen as (O, C, KH, KW): the layout the
        # conv kernel multiplies with, so neither forward nor backward copies the weight.
        self.weight = Parameter(np.empty((out_channels, kh, kw, in_channels), dtype=dtype).transpose(0, 3, 1, 2))
        if bias:
            self.bias = Parameter(np.empty(out_channels, dtype=dtype))
        else:
            self.register_parameter("bias", None)
        init.default_init_(self.weight, self.bias)

    def forward(self, x: Tensor) -> Tensor:
        return F.conv2d(x, self.weight, self.bias, self.stride, self.padding, self.dilation)

    def extra_repr(self) -> str:
        return (f"{self.in_channels}, {self.out_channels}, kernel_size={self.kernel_size}, "
                f"stride={self.stride}, padding={self.padding}, bias={self.bias is not None}")


class BatchNorm2d(Module):
    """Batch statistics in train(), running statistics in eval(); eps 1e-5, momentum 0.1.

    ``momentum=None`` gives a cumulative moving average (factor 1/num_batches_tracked), as in torch.
    ``stats_reduce`` (None, or a function summing a float64 vector over the processes of a
    data-parallel job) synchronises the training statistics, as torch's SyncBatchNorm.
    """

    stats_reduce = None

    def __init__(self, num_features: int, eps: float = 1e-5, momentum: float | None = 0.1,
                 affine: bool = True, track_running_stats: bool = True, dtype=np.float32):
        super().__init__()
        self.num_features, self.eps, self.momentum = num_features, eps, momentum
        self.affine, self.track_running_stats = affine, track_running_stats
        if affine:
            self.weight = Parameter(np.ones(num_features, dtype=dtype))
            self.bias = Parameter(np.zeros(num_features, dtype=dtype))
        else:
            self.register_parameter("weight", None)
            self.register_parameter("bias", None)
        if track_running_stats:
            self.register_buffer("running_mean", Tensor(np.zeros(num_features, dtype=dtype)))
            self.register_buffer("running_var", Tensor(np.ones(num_features, dtype=dtype)))
            self.register_buffer("num_batches_tracked", Tensor(np.zeros((), dtype=np.int64)))
        else:
            self.register_buffer("running_mean", None)
            self.register_buffer("running_var", None)
            self.register_buffer("num_batches_tracked", None)

    def forward(self, x: Tensor) -> Tensor:
        return self._normalize(x, F.batch_norm)

    def forward_relu(self, x: Tensor) -> Tensor:
        """``relu(self(x))`` as one kernel (see F.batch_norm_relu): what a conv-BN-ReLU stack
        calls. Same running-statistics update as ``forward``."""
        return self._normalize(x, F.batch_norm_relu)

    def _normalize(self, x: Tensor, kernel) -> Tensor:
        if x.ndim != 4 or x.shape[1] != self.num_features:
            raise RuntimeError(f"BatchNorm2d({self.num_features}): expected input (N, {self.num_features}, H, W), got {x.shape}")
        if not self.track_running_stats:
            return kernel(x, None, None, self.weight, self.bias, True, 0.0, self.eps, reduce=self.stats_reduce)
        if not self.training:
            return kernel(x, self.running_mean, self.running_var, self.weight, self.bias, False, 0.0, self.eps)
        self.num_batches_tracked.data += 1  # in place: stays a 0-d int64 array
        momentum = self.momentum
        if momentum is None:
            momentum = 1.0 / float(self.num_batches_tracked.data)
        return kernel(x, self.running_mean, self.running_var, self.weight, self.bias, True, momentum, self.eps,
                      reduce=self.stats_reduce)

    def extra_repr(self) -> str:
        return f"{self.num_features}, eps={self.eps}, momentum={self.momentum}"


class ReLU(Module):
    def __init__(self, inplace: bool = False):
        super().__init__()  # inplace is accepted for torch compatibility; the result is the same

    def forward(self, x: Tensor) -> Tensor:
        return F.relu(x)


class MaxPool2d(Module):
    def __init__(self, kernel_size, stride=None, padding=0):
        super().__init__()
        self.kernel_size, self.stride, self.padding = kernel_size, stride, padding

    def forward(self, x: Tensor) -> Tensor:
        return F.max_pool2d(x, self.kernel_size, self.stride, self.padding)

    def extra_repr(self) -> str:
        return f"kernel_size={self.kernel_size}, stride={self.stride}, padding={self.padding}"


class AdaptiveAvgPool2d(Module):
    def __init__(self, output_size):
        super().__init__()
        self.output_size = output_size

    def forward(self, x: Tensor) -> Tensor:
        return F.adaptive_avg_pool2d(x, self.output_size)

    def extra_repr(self) -> str:
        return f"output_size={self.output_size}"


class Flatten(Module):
    def __init__(self, start_dim: int = 1, end_dim: int = -1):
        super().__init__()
        self.start_dim, self.end_dim = start_dim, end_dim

    def forward(self, x: Tensor) -> Tensor:
        return x.flatten(self.start_dim, self.end_dim)


class Identity(Module):
    def forward(self, x: Tensor) -> Tensor:
        return x


class Sequential(Module):
    """Children named "0", "1", ... as in torch, called in order."""

    def __init__(self, *modules: Module):
        super().__init__()
        for i, m in enumerate(modules):
            self.add_module(str(i), m)

    def __getitem__(self, i: int) -> Module:
        return list(self._modules.values())[i]

    def __len__(self) -> int:
        return len(self._modules)

    def __iter__(self):
        return iter(self._modules.values())

    def forward(self, x):
        for m in self._modules.values():
            x = m(x)
        return x


class CrossEntropyLoss(Module):
    def __init__(self, reduction: str = "mean"):
        super().__init__()
        self.reduction = reduction

    def forward(self, logits: Tensor, target) -> Tensor:
        return F.cross_entropy(logits, target, self.reduction)


class MSELoss(Module):
    def __init__(self, reduction: str = "mean"):
        super().__init__()
        self.reduction = reduction

    def forward(self, x: Tensor, target: Tensor) -> Tensor:
        return F.mse_loss(x, target, self.reduction)

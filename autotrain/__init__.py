"""autotrain: train and finetune ResNet-18 classifiers with a reverse-mode autograd engine on NumPy.

The public surface mirrors torch's names: ``at.tensor``, ``at.no_grad``, ``at.nn``, ``at.optim``.
"""

from . import autograd
from .autograd.factory import (from_numpy, manual_seed, ones, ones_like, rand, randn, tensor, zeros,
                               zeros_like)
from .autograd.function import enable_grad, is_grad_enabled, no_grad, set_grad_enabled
from .autograd.tensor import Tensor
from . import nn, optim, models  # noqa: E402  (nn builds on the engine above)

__version__ = "0.1.0"

__all__ = ["Tensor", "tensor", "from_numpy", "zeros", "ones", "rand", "randn", "zeros_like",
           "ones_like", "manual_seed", "no_grad", "enable_grad", "is_grad_enabled",
           "set_grad_enabled", "nn", "optim", "models", "autograd", "__version__"]

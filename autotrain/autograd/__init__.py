"""Reverse-mode automatic differentiation on NumPy, with torch.autograd's semantics."""

from .function import Function, enable_grad, is_grad_enabled, no_grad, set_grad_enabled
from .gradcheck import GradcheckError, check_gradients, gradcheck
from .tensor import Tensor

__all__ = ["Function", "Tensor", "no_grad", "enable_grad", "is_grad_enabled", "set_grad_enabled",
           "gradcheck", "check_gradients", "GradcheckError"]

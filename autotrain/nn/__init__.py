"""Neural-network building blocks with torch.nn's names and state_dict conventions."""

from . import functional, init
from .layers import (AdaptiveAvgPool2d, BatchNorm2d, Conv2d, CrossEntropyLoss, Flatten, Identity,
                     Linear, MaxPool2d, MSELoss, ReLU, Sequential)
from .module import Module, Parameter

__all__ = ["Module", "Parameter", "Linear", "Conv2d", "BatchNorm2d", "ReLU", "MaxPool2d",
           "AdaptiveAvgPool2d", "Flatten", "Identity", "Sequential", "CrossEntropyLoss", "MSELoss",
           "functional", "init"]

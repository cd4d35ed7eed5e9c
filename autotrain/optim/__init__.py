"""Optimizers and learning-rate schedules."""

from .lr_scheduler import scheduled_lr
from .sgd import SGD

__all__ = ["SGD", "scheduled_lr"]

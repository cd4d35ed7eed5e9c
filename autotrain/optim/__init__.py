"""Optimizers and learning-rate schedules."""

from .sgd import SGD

__all__ = ["SGD"]
from .lr_scheduler import scheduled_lr  # noqa: E402

__all__ += ["scheduled_lr"]

"""Optimizers and learning-rate schedules."""

from .sgd import SGD

__all__ = ["SGD"]
